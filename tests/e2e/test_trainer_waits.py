"""A trainer started before or while a real server primes: it waits for a prime, fails without."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from batchstash.client import BatchClient, NotPrimedError

from .conftest import TOKEN, Server

SLOW = "tests.e2e.factories:slow_iris"


@pytest.mark.slow
def test_a_trainer_waits_for_a_running_prime_and_not_for_none(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    # about 0.6 s a batch, 9 batches, one worker: a prime of some 5 s, in 1 s Retry-After steps
    server = serve(
        "--dataset",
        SLOW,
        "--workers",
        "1",
        env={"BATCHSTASH_DATASET_OPTIONS": '{"delay": 0.03}', "BATCHSTASH_RETRY_AFTER_S": "1"},
    )
    with BatchClient(server.url, token=TOKEN, retries=5) as client:
        started = time.monotonic()
        with pytest.raises(NotPrimedError) as info:
            client.batch("train", 0)
        assert time.monotonic() - started < 4  # not 5 retries of Retry-After: nothing primes
        assert f"nothing is priming this store: run `batchstash prime --url {server.url}`" in str(
            info.value
        )
    caplog.set_level(logging.INFO, logger="batchstash.client.priming")
    with BatchClient(server.url, token=TOKEN, retries=0) as trainer:  # no retry to spare
        assert trainer.prime()["state"] == "running"
        ids = [b.id for b in trainer.iter_batches("train", rank=0, world_size=1, prefetch=2)]
        assert sorted(ids) == trainer.batch_ids("train")
        assert trainer.status()["state"] in {"running", "done"}
    lines = [r.getMessage() for r in caplog.records if r.name == "batchstash.client.priming"]
    assert lines and all(m.startswith("waiting for the store to be primed: ") for m in lines)
