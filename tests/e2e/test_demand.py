"""A trainer's request for a batch not stored yet makes the running prime encode it next."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ..service.factories import stored_order
from .conftest import Server, start_server

pytestmark = pytest.mark.slow

SLOW = "tests.e2e.factories:slow_iris"
# one flower a batch: 150 batches, 105 of train; 20 ms each; one worker, chunks of 8
OPTIONS = {"BATCHSTASH_DATASET_OPTIONS": '{"delay": 0.02, "batch_size": 1}'}


def stored(server: Server) -> int:
    status = httpx.get(f"{server.url}/v1/admin/status", headers=server.admin()).json()
    return sum(e["done"] for e in status["splits"].values())


def prime_while_asking(primer: Server, asker: Server) -> tuple[int, int]:
    """Prime on ``primer``, ask ``asker`` for train's last batch mid-way; its rank and the total."""
    splits = httpx.get(f"{primer.url}/v1/splits").json()["splits"]
    last, total = splits["train"]["batches"] - 1, sum(s["batches"] for s in splits.values())
    assert last > total // 2  # train first, in batch order: it would come after the half
    assert httpx.post(f"{primer.url}/v1/admin/prime", headers=primer.admin()).status_code == 202
    deadline = time.monotonic() + 90
    while stored(primer) < 1:  # the pool runs and has its first chunks
        assert time.monotonic() < deadline
        time.sleep(0.05)
    wanted = httpx.get(f"{asker.url}/v1/splits/train/batches/{last}")
    assert wanted.status_code == 503 and wanted.json()["error"]["code"] == "not_primed"
    while httpx.get(f"{primer.url}/v1/splits").json()["primed"] is not True:
        assert time.monotonic() < deadline, "the prime did not finish"
        time.sleep(0.2)
    assert httpx.get(f"{asker.url}/v1/splits/train/batches/{last}").status_code == 200
    order = stored_order(str(primer.data_dir))
    assert len(order) == total
    return order.index(("train", last)), total


def test_the_server_priming_encodes_what_its_readers_ask_for_first(
    serve: Callable[..., Server],
) -> None:
    server = serve("--dataset", SLOW, "--workers", "1", env=OPTIONS)
    rank, total = prime_while_asking(server, server)
    assert 0 < rank < total // 2, (rank, total)
    assert "encoded 1 batches early because readers asked for them" in server.log.read_text()


def test_a_replica_passes_what_it_is_asked_for_to_the_priming_server(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    primer = serve("--dataset", SLOW, "--workers", "1", env=OPTIONS)
    replica = start_server(primer.data_dir, tmp_path / "replica.log", "--role", "serve")
    try:
        rank, total = prime_while_asking(primer, replica)
    finally:
        replica.stop()
    assert 0 < rank < total // 2, (rank, total)
    assert not (primer.data_dir / "demand.json").exists()  # removed when the prime is done
