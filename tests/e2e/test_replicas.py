"""Two servers on one store: one primes, one is a read-only replica without the dataset's code."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, start_server

SLOW = "tests.e2e.factories:slow_iris"

pytestmark = pytest.mark.slow


def status(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/v1/admin/status", headers=server.admin()).json()


def wait(server: Server, until: Callable[[dict[str, Any]], bool], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(server)
        if until(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status {body}")


def test_a_replica_without_the_dataset_serves_the_same_bytes_and_shares_the_job(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    primer = serve(
        "--dataset", SLOW, "--workers", "1", env={"BATCHSTASH_DATASET_OPTIONS": '{"delay": 0.01}'}
    )
    # the replica's dataset setting names a module that does not exist: role serve never
    # imports dataset code (a server that did would not start)
    replica = start_server(
        primer.data_dir,
        tmp_path / "replica.log",
        "--role",
        "serve",
        "--dataset",
        "no_such_module_anywhere:factory",
    )
    try:
        post = httpx.post(f"{primer.url}/v1/admin/prime", headers=primer.admin()).json()
        running = wait(
            replica,
            lambda s: s["state"] == "running" and sum(e["done"] for e in s["splits"].values()) >= 1,
        )
        assert running["job_id"] == post["job_id"] == status(primer)["job_id"]
        for server in (replica, primer):
            refused = httpx.post(f"{server.url}/v1/admin/clear", headers=server.admin())
            assert refused.status_code == 409, refused.text
        joined = httpx.post(f"{replica.url}/v1/admin/prime", headers=replica.admin())
        assert joined.status_code == 202 and joined.json()["joined"] is True

        done = wait(replica, lambda s: s["state"] != "running")
        assert done["state"] == "done" and done["job_id"] == post["job_id"]
        assert status(primer)["state"] == "done" and status(replica)["primed"] is True

        for path in ("/v1/metadata", "/v1/splits"):
            assert httpx.get(replica.url + path).json() == httpx.get(primer.url + path).json()
        splits = httpx.get(f"{replica.url}/v1/splits").json()["splits"]
        served = 0
        for split, counts in splits.items():
            for batch_id in range(counts["batches"]):
                url = f"/v1/splits/{split}/batches/{batch_id}"
                mine = httpx.get(replica.url + url)
                theirs = httpx.get(primer.url + url)
                assert mine.status_code == theirs.status_code == 200
                assert mine.content == theirs.content
                assert mine.headers["etag"] == theirs.headers["etag"]
                served += 1
        assert served == 9

        # the replica refuses to cancel the prime every replica waits for; the primer cancels
        # it, and the replica sees that through the store's job record
        httpx.post(f"{primer.url}/v1/admin/clear", headers=primer.admin()).raise_for_status()
        second = httpx.post(f"{primer.url}/v1/admin/prime", headers=primer.admin()).json()
        wait(primer, lambda s: sum(e["done"] for e in s["splits"].values()) >= 1)
        refused = httpx.delete(f"{replica.url}/v1/admin/prime", headers=replica.admin())
        assert refused.status_code == 409 and "role serve" in refused.json()["error"]["message"]
        assert status(replica)["cancel_requested"] is False  # nothing written to the job
        cancel = httpx.delete(f"{primer.url}/v1/admin/prime", headers=primer.admin())
        assert cancel.json()["cancelled"] is True
        ended = wait(replica, lambda s: s["state"] != "running")
        assert ended["state"] == "cancelled" and ended["job_id"] == second["job_id"]

        # a replica can neither prime on its own nor clear the store the primer serves too
        refused = httpx.post(f"{replica.url}/v1/admin/prime", headers=replica.admin())
        assert refused.status_code == 409 and "read-only" in refused.json()["error"]["message"]
        stored = status(primer)["splits"]
        assert sum(e["done"] for e in stored.values()) >= 1
        refused = httpx.post(f"{replica.url}/v1/admin/clear", headers=replica.admin())
        assert refused.status_code == 409 and "role serve" in refused.json()["error"]["message"]
        assert status(primer)["splits"] == stored  # not a batch removed
        cleared = httpx.post(f"{primer.url}/v1/admin/clear", headers=primer.admin())
        assert cleared.status_code == 200
        assert httpx.get(f"{replica.url}/v1/splits/train/batches/0").status_code == 503
        assert "no_such_module" not in replica.log.read_text()
    finally:
        replica.stop()
