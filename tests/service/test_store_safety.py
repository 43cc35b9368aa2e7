"""Data safety through the API: admin races, tampered ids, damaged records, leftovers, status cost.

Each test here reproduces a defect found by operating batchstash (issue 9) and fails on the
hub-shaped core it replaced.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from fastapi.testclient import TestClient

from batchstash.client import wire
from batchstash.service import BatchStash
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.examples import iris
from batchstash.service.store.lease import JobLease
from batchstash.service.store.local import LocalBackend

from .factories import stored_files, stored_object

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def app_for(stash: BatchStash, **settings: object) -> TestClient:
    """A TestClient over ``stash`` (its store is the stash's path)."""
    config = build_settings(data_dir=Path(stash.path), workers=0, token=TOKEN, **settings)
    return TestClient(create_app(config, stash.prime_inputs()))


@pytest.fixture
def small(tmp_path: Path) -> Iterator[TestClient]:
    """Iris with one flower a batch (150 batches): priming takes a moment."""
    with app_for(iris(path=str(tmp_path / "data"), batch_size=1)) as client:
        yield client


def wait_done(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/v1/admin/status", headers=AUTH).json()
        if status["state"] != "running":
            return status
        time.sleep(0.02)
    raise AssertionError("the prime did not end")


def all_served(client: TestClient) -> dict[str, int]:
    """Per split, how many batches answer 200."""
    served = {}
    for split, counts in client.get("/v1/splits").json()["splits"].items():
        ids = ",".join(str(i) for i in range(counts["batches"]))
        response = client.get(f"/v1/splits/{split}/payloads", params={"ids": ids})
        served[split] = counts["batches"] if response.status_code == 200 else 0
    return served


def test_clear_racing_prime_never_leaves_a_primed_store_with_missing_batches(small) -> None:
    assert small.post("/v1/admin/prime", headers=AUTH).status_code == 202
    wait_done(small)
    answers: dict[str, int] = {}
    for _ in range(3):
        answers.clear()

        def clear() -> None:
            answers["clear"] = small.post("/v1/admin/clear", headers=AUTH).status_code

        racer = threading.Thread(target=clear)
        racer.start()
        time.sleep(0.005)
        answers["prime"] = small.post("/v1/admin/prime", headers=AUTH).status_code
        racer.join()
        wait_done(small)
        assert answers["clear"] in (200, 409) and answers["prime"] in (202, 409)
        splits = small.get("/v1/splits").json()
        if splits["primed"]:
            totals = {s: c["batches"] for s, c in splits["splits"].items()}
            assert all_served(small) == totals  # "primed" means every batch is there
        else:
            assert all(c["stored"] == 0 for c in splits["splits"].values())


def test_clear_and_prime_refuse_while_the_other_holds_the_lease(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    with app_for(stash) as client:
        lease = JobLease.acquire(stash.backend, "clear")  # a clear in another process
        response = client.post("/v1/admin/prime", headers=AUTH)
        assert response.status_code == 409
        assert "a clear (job" in response.json()["error"]["message"]
        lease.finish("done")
        lease = JobLease.acquire(stash.backend, "prime")  # a prime in another process
        response = client.post("/v1/admin/clear", headers=AUTH)
        assert response.status_code == 409 and "a prime (job" in response.json()["error"]["message"]
        joined = client.post("/v1/admin/prime", headers=AUTH).json()
        assert joined["joined"] is True and joined["job_id"] == lease.job_id
        lease.finish("done")


def test_a_changed_data_point_id_in_a_stored_file_is_never_served(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    ids = stash.load("train", 0).data_point_ids
    path = stored_object(stash.path, "train", 0, "flower_dims")
    raw = path.read_bytes()
    # the ids as they sit in the header: a JSON string inside the JSON header
    old = json.dumps(json.dumps(list(ids), separators=(",", ":")))[1:-1].encode()
    digit = old[3:4]  # the first digit of the first id, after '[\\"'
    new = old[:3] + str((int(digit) + 1) % 10).encode() + old[4:]
    assert old in raw and len(new) == len(old) and new != old
    path.write_bytes(raw.replace(old, new))
    with app_for(stash) as client:
        response = client.get("/v1/splits/train/batches/0")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "store_corrupt"
        assert "identity" in response.json()["error"]["message"]
        # the other group is intact: served, with the ids the stored objects carry
        label = client.get("/v1/splits/train/batches/0", params={"attributes": "label"})
        assert label.status_code == 200
        assert wire.decode(bytearray(label.content)).data_point_ids == list(ids)


def test_the_same_batch_reports_the_same_ids_whatever_attributes_are_asked(tmp_path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    with app_for(stash) as client:
        seen = {
            attrs: wire.decode(
                bytearray(client.get("/v1/splits/dev/batches/0", params=params).content)
            ).data_point_ids
            for attrs, params in [
                ("all", {}),
                ("label", {"attributes": "label"}),
                ("both", {"attributes": "label,flower_dims"}),
            ]
        }
    assert seen["all"] == seen["label"] == seen["both"] == list(stash.load("dev", 0).data_point_ids)


def test_status_never_fails_while_a_clear_deletes_files(small) -> None:
    assert small.post("/v1/admin/prime", headers=AUTH).status_code == 202
    wait_done(small)
    statuses: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            statuses.extend(
                small.get(path, headers=AUTH).status_code
                for path in ("/v1/admin/status", "/v1/splits", "/readyz")
            )

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        assert small.post("/v1/admin/clear", headers=AUTH).status_code == 200
    finally:
        stop.set()
        poller.join()
    # status always answers; reads say "not primed" (503) while the store is empty, never 500
    assert statuses and statuses[0::3] == [200] * len(statuses[0::3])
    assert set(statuses) <= {200, 503}, set(statuses)


def test_a_prime_sent_right_after_a_cancel_starts_a_new_job(small) -> None:
    first = small.post("/v1/admin/prime", headers=AUTH).json()
    assert small.delete("/v1/admin/prime", headers=AUTH).json()["cancelled"] is True
    second = small.post("/v1/admin/prime", headers=AUTH).json()
    assert second["joined"] is False and second["job_id"] != first["job_id"]
    status = wait_done(small)
    assert status["state"] == "done" and status["job_id"] == second["job_id"]
    assert small.get("/v1/splits").json()["primed"] is True


def test_an_etag_of_a_batch_that_does_not_exist_is_not_a_304(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    with app_for(stash) as client:
        info = stash.reader.info()

        def etag(batch_id: int) -> dict[str, str]:
            key = f"{info.generation}/train/{batch_id}/*"
            digest = xxhash.xxh3_64_hexdigest(key.encode())
            return {"If-None-Match": f'"{info.fingerprint[:16]}-{digest}"'}

        assert client.get("/v1/splits/train/batches/0", headers=etag(0)).status_code == 503
        stash.prime()
        served = client.get("/v1/splits/train/batches/0")
        assert served.headers["etag"] == etag(0)["If-None-Match"]
        assert client.get("/v1/splits/train/batches/0", headers=etag(0)).status_code == 304
        missing = client.get("/v1/splits/train/batches/999999", headers=etag(999999))
        assert missing.status_code == 404


@pytest.mark.parametrize("record", ["manifest.json", "plan.json", "store.json"])
def test_a_damaged_record_blocks_nothing_and_a_prime_repairs_it(tmp_path, record) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    before = stored_files(stash.path)
    root = Path(stash.path)
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("batches/*/*/*/*")}
    (root / record).write_text('{"format": 2, "fingerprint": ')
    with app_for(stash) as client:
        status = client.get("/v1/admin/status", headers=AUTH)
        # only writers read the plan: a store whose plan is damaged still serves, primed
        assert status.status_code == 200
        assert status.json()["primed"] is (record == "plan.json")
        ready = client.get("/readyz")
        if record == "plan.json":  # only writers read the plan: serving goes on
            assert ready.status_code == 200
            assert client.get("/v1/splits/train/batches/0").status_code == 200
        elif record == "manifest.json":
            assert ready.status_code == 503 and record in ready.json()["reason"]
            # the description is intact: batches are still served
            assert client.get("/v1/splits/train/batches/0").status_code == 200
        else:
            assert ready.status_code == 503 and record in ready.json()["reason"]
            read = client.get("/v1/splits/train/batches/0")
            assert read.status_code == 503 and record in read.json()["error"]["message"]
            assert str(tmp_path) not in read.json()["error"]["message"]
        assert client.post("/v1/admin/prime", headers=AUTH).status_code == 202
        assert wait_done(client)["state"] == "done"
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/splits").json()["primed"] is True
    assert stored_files(stash.path) == before
    assert {p: p.stat().st_mtime_ns for p in root.glob("batches/*/*/*/*")} == mtimes  # kept
    assert json.loads((root / record).read_text())["fingerprint"] == stash.config_hash


def test_a_resumed_prime_removes_crash_leftovers(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    batch_dir = stored_object(stash.path, "train", 2, "label").parent
    leftovers = [
        batch_dir / ".label.safetensors.4242-deadbeef.tmp",
        Path(stash.path) / ".plan.json.1.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"half a write")
    assert stash.prime() == 0
    assert not any(p.exists() for p in leftovers)


def test_a_corrupt_store_message_names_no_server_path(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    path = stored_object(stash.path, "train", 1, "flower_dims")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40
    path.write_bytes(bytes(raw))
    with app_for(stash) as client:
        error = client.get("/v1/splits/train/batches/1").json()["error"]
    assert error["code"] == "store_corrupt"
    assert str(tmp_path) not in error["message"] and "/data/" not in error["message"]
    assert error["message"].startswith("stored object batches/")


def test_status_and_split_counts_read_no_batch_object(tmp_path, monkeypatch) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    touched: list[str] = []
    for name in ("read", "read_mapped", "version", "read_versioned"):
        real = getattr(LocalBackend, name)

        def spy(self, key, *args, _real=real):
            touched.append(key)
            return _real(self, key, *args)

        monkeypatch.setattr(LocalBackend, name, spy)
    monkeypatch.setattr(LocalBackend, "list", lambda *a: pytest.fail("status lists the store"))
    monkeypatch.setattr(os, "scandir", lambda *a: pytest.fail("status walks the store"))
    with app_for(stash) as client:
        touched.clear()
        for path in ("/v1/admin/status", "/v1/splits", "/readyz", "/v1/metadata"):
            assert client.get(path, headers=AUTH).status_code == 200
    assert touched and not [k for k in touched if k.startswith("batches/")]


def test_a_not_primed_answer_says_how_far_the_prime_is(small) -> None:
    idle = small.get("/v1/splits/train/batches/0")
    assert idle.status_code == 503
    assert json.loads(idle.headers["x-batchstash-prime"]) == {
        "state": "idle",
        "done": 0,
        "total": 150,
        "role": "all",
    }
    assert small.post("/v1/admin/prime", headers=AUTH).status_code == 202
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = small.get("/v1/splits/test/batches/29")  # the very last batch primed
        if response.status_code == 200:
            break
        progress = json.loads(response.headers["x-batchstash-prime"])
        assert progress["total"] == 150 and 0 <= progress["done"] <= 150
        seen.add(progress["state"])
    assert "running" in seen
    wait_done(small)


def test_the_train_split_is_primed_first(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"), batch_size=10)
    order: list[str] = []
    initial = 3  # one progress call a split before anything is encoded
    stash.prime(lambda split, done, total: order.append(split))
    stored = order[initial:]
    assert stored[: stored.count("train")] == ["train"] * 11  # all of train before dev, test


def test_objects_are_synced_once_before_the_manifest_and_torn_ones_are_caught(
    tmp_path: Path, monkeypatch
) -> None:
    # what a power loss may leave of objects renamed but not yet synced: empty, zeroed, cut
    stash = iris(path=str(tmp_path / "data"))
    root, seen = Path(stash.path), []
    monkeypatch.setattr(
        LocalBackend, "sync", lambda self: seen.append((root / "manifest.json").exists())
    )
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (fsyncs.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    assert stash.prime() == 9
    assert seen == [False]  # one sync, before the manifest
    assert fsyncs and not [f for f in fsyncs if "/batches/" in f]  # records only, no object
    files = stored_files(stash.path)
    torn = [stored_object(stash.path, "train", b, "label") for b in (0, 1, 2)]
    torn[0].write_bytes(b"")
    torn[1].write_bytes(bytes(torn[1].stat().st_size))
    torn[2].write_bytes(torn[2].read_bytes()[:-7])
    (root / "manifest.json").unlink()  # the power loss came before the manifest
    with app_for(stash) as client:
        for batch_id in (0, 1, 2):
            got = client.get(f"/v1/splits/train/batches/{batch_id}?attributes=label")
            assert got.json()["error"]["code"] == "store_corrupt"  # never served
    assert stash.prime() == 3  # the resume verified every object and re-encoded the torn
    assert stored_files(stash.path) == files and stash.is_primed
