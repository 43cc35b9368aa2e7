"""A trainer rides out a minute's outage of its only server, mid-epoch, with the default policy.

A real ``batchstash serve`` is stopped while an epoch is being read (by ``iter_batches`` on the
pipelined path, and by ``BatchDataset`` through a ``DataLoader``), kept down for 60 s, and
started again on the same port and data dir: both epochs complete with every batch exactly
once, and each client said the outage once and its end once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from batchstash.client import Batch, BatchClient, BatchDataset, RetryPolicy

from .conftest import TOKEN, Server, free_port, start_server

pytestmark = pytest.mark.slow

OUTAGE_S = 60.0
OPTIONS = {"BATCHSTASH_DATASET_OPTIONS": '{"batch_size": 5}'}  # iris: 21 train batches
HTTP_LOGGER = "batchstash.client.http"


def drain(batches: Iterator[Batch], into: list[int], errors: list[BaseException]) -> None:
    try:
        into.extend(batch.id for batch in batches)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_an_epoch_survives_a_minute_without_its_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchstash.client")
    assert RetryPolicy().budget > OUTAGE_S  # the default is what is tested
    port = free_port()
    data = tmp_path / "data"
    servers: list[Server] = [
        start_server(data, tmp_path / "first.log", "--workers", "0", env=OPTIONS, port=port)
    ]
    restarted = threading.Event()
    restarter: threading.Thread | None = None
    try:
        with BatchClient(servers[0].url, token=TOKEN) as admin:
            admin.prime()
            assert admin.wait_for_prime(timeout=60, poll=0.1)["state"] == "done"
            ids = admin.batch_ids("train")
        assert len(ids) == 21

        # the default retry policy; the window held at prefetch (iris's batches are so small
        # that a window sized from the link would read the whole epoch before the outage)
        make = functools.partial(BatchClient, servers[0].url, TOKEN, in_flight_bytes=0)
        trainer = make()
        it = trainer.iter_batches("train", epoch=0, prefetch=2)
        loader = iter(
            DataLoader(BatchDataset(servers[0].url, "train", client_factory=make), batch_size=None)
        )
        got_it = [next(it).id for _ in range(3)]
        got_dl = [next(loader).id for _ in range(3)]
        assert it.reader is not None  # the pipelined path, whose fallback is the engine

        servers[0].stop()  # by the PID of its Popen
        down_at = time.monotonic()

        def restart() -> None:
            time.sleep(OUTAGE_S)
            servers.append(
                start_server(
                    data, tmp_path / "second.log", "--workers", "0", env=OPTIONS, port=port
                )
            )
            restarted.set()

        restarter = threading.Thread(target=restart, name="restart-server")
        restarter.start()
        errors: list[BaseException] = []
        readers = [
            threading.Thread(target=drain, args=(it, got_it, errors)),
            threading.Thread(target=drain, args=(loader, got_dl, errors)),
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=OUTAGE_S + 90)
        restarter.join(timeout=90)
        finished = time.monotonic() - down_at
        assert restarted.is_set() and not any(r.is_alive() for r in readers), finished
        assert errors == []
        assert finished >= OUTAGE_S  # the epochs did wait for the server

        assert got_it == it.rank_ids()  # the plan's order, each batch exactly once
        assert sorted(got_it) == sorted(ids) and sorted(got_dl) == sorted(ids)
        records = [r for r in caplog.records if r.name == HTTP_LOGGER]
        outages = [r.getMessage() for r in records if "unreachable" in r.getMessage()]
        ends = [r.getMessage() for r in records if "reachable again" in r.getMessage()]
        assert len(outages) == 2, outages  # one line per client, not one per retry
        for line in outages:
            assert line.startswith(f"server {servers[0].url} unreachable (ConnectError")
            assert line.endswith("retrying for up to 90 s")
        assert len(ends) == 2 and all(line.startswith(servers[0].url) for line in ends), ends
        assert all(r.levelno == logging.WARNING for r in records if r.getMessage() in outages)
        trainer.close()
    finally:
        if restarter is not None:
            restarter.join(timeout=OUTAGE_S + 60)
        for server in servers:
            server.stop()
