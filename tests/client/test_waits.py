"""Where a trainer waits: each iteration's read timings, its summary line and Prometheus counts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from batchstash.client import ReadStats, export_prometheus

from .fakeserver import FakeServer, make_tensors
from .test_pipeline import Stack


def _tensor_bytes(batch_id: int) -> int:
    return sum(int(t.nbytes) for t in make_tensors("train", batch_id).values())


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_slow_server_makes_the_pass_network_bound_and_says_so(
    stack: Callable[..., Stack], pipelined: bool, caplog: pytest.LogCaptureFixture
) -> None:
    slow = FakeServer({"train": range(6)})
    slow.delay = 0.1  # each answer takes 0.1 s; the consumer takes no time at all
    s = stack(6, data=slow)
    s.api_fake.fake.delay = 0.1  # the threaded path asks the API
    caplog.set_level(logging.INFO, logger="batchstash.client.iterate")
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=2, pipelined=pipelined)
        assert [b.id for b in it] == list(range(6))
    stats = it.stats()
    assert stats["batches"] == 6 and stats["bytes"] == sum(map(_tensor_bytes, range(6)))
    assert stats["wait_s"] >= 0.3  # 6 answers of 0.1 s, at most 2 at a time
    assert stats["wait_share"] > 0.5 and stats["bound"] == "network"
    assert stats["network_s"] >= 0.5 and stats["received"] > 0
    (line,) = [r.getMessage() for r in caplog.records if "data wait" in r.getMessage()]
    assert line.startswith("train epoch 0: 6 batches, ")
    assert "network bound (busy " in line and "received at " in line


def test_a_slow_trainer_is_trainer_bound(stack: Callable[..., Stack]) -> None:
    s = stack(20)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        for _ in it:  # the first batch waits for the connection; the reader then runs ahead
            time.sleep(0.15)  # a training step far longer than a read
    stats = it.stats()
    assert stats["batches"] == 20 and stats["elapsed_s"] >= 2.8
    assert stats["wait_share"] < 0.05 and stats["bound"] == "trainer"


def test_the_summary_names_the_wait_share_verdict_and_rate() -> None:
    stats = ReadStats("dev", 3)
    stats.started(now=10.0)
    stats.read(network_s=0.5, received=500_000_000, decode_s=0.1)
    stats.copied(0.1)
    stats.waited(1.0, 100, 400_000_000, now=12.0)  # waited 1 s of a 2 s pass
    assert stats.wait_share == pytest.approx(0.5)
    assert stats.bound == "network"
    assert stats.summary() == (
        "dev epoch 3: 100 batches, 400 MB in 2.00 s; data wait 50.0 % of the pass (1.00 s); "
        "network bound (busy 35 %: network 25 %, decode 5 %, device copy 5 %); "
        "received at 1.00 GB/s"
    )
    stats.decode_s = 0.9
    assert stats.bound == "decode"
    quiet = ReadStats("dev", 0)
    quiet.started(now=0.0)
    quiet.waited(0.01, 10, 1000, now=1.0)
    assert quiet.bound == "trainer" and "trainer bound: the reader was ahead" in quiet.summary()


def test_prometheus_counts_every_iterator_by_split(stack: Callable[..., Stack]) -> None:
    registry = CollectorRegistry()
    export_prometheus(registry)
    export_prometheus(registry)  # again: the same counters, not an error
    try:
        s = stack(5)
        with s.client() as client:
            for _ in range(2):
                list(client.iter_batches("train", prefetch=2))

        def value(name: str) -> float:
            got = registry.get_sample_value(f"batchstash_client_{name}_total", {"split": "train"})
            assert got is not None, name
            return got

        assert value("batches") == 10
        assert value("bytes") == 2 * sum(map(_tensor_bytes, range(5)))
        assert value("wait_seconds") > 0 and value("network_seconds") > 0
    finally:
        export_prometheus(CollectorRegistry())  # later tests count elsewhere
