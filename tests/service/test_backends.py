"""The engine and the server on every store backend: a directory and an S3 bucket (moto).

The same prime gives the same objects on both; resume, repair, clear, staleness and serving
behave alike; a fault-injecting backend proves what a failed upload or a crash leaves behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from batchstash.client import StaleStoreError, StoreError, wire
from batchstash.service import BatchStash
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.backend import StoreBackend

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def objects(stash: BatchStash) -> dict[str, bytes]:
    """Every batch object of a store as ``split/id/group.safetensors`` (no generation)."""
    backend = stash.backend
    return {
        "/".join(key.split("/")[2:]): bytes(backend.read(key))
        for key in sorted(backend.list(layout.BATCHES))
    }


def key_of(stash: BatchStash, split: str, batch_id: int, group: str) -> str:
    return layout.group_key(stash.reader.info().generation, split, batch_id, group)


def test_a_prime_stores_the_same_objects_on_every_backend(store_url, tmp_path) -> None:
    reference = iris(path=str(tmp_path / "reference"))
    reference.prime()
    stash = iris(path=store_url)
    assert stash.prime() == 9 and stash.is_primed
    assert objects(stash) == objects(reference)
    batch = stash.load("train", 3)
    assert torch.equal(batch["flower_dims"], reference.load("train", 3)["flower_dims"])
    served = wire.decode(bytearray(b"".join(stash.payload("test", 1, ["label"]))))
    assert served.data_point_ids == list(reference.load("test", 1).data_point_ids)


@pytest.mark.slow
def test_pool_workers_write_straight_into_the_store(store_url, tmp_path) -> None:
    reference = iris(path=str(tmp_path / "reference"))
    reference.prime()
    stash = BatchStash.from_factory("batchstash.service.examples:iris", path=store_url, workers=2)
    assert stash.prime() == 9
    assert objects(stash) == objects(reference)


def test_resume_re_encodes_only_what_is_missing_or_damaged(store_url) -> None:
    stash = iris(path=store_url)
    stash.prime()
    before = objects(stash)
    backend = stash.backend
    backend.delete(key_of(stash, "train", 1, "label"))
    damaged = key_of(stash, "dev", 0, "flower_dims")
    backend.write(damaged, [bytes(backend.read(damaged))[:-5]])
    backend.delete(layout.MANIFEST)
    fresh = iris(path=store_url)  # another process
    assert not fresh.is_primed
    assert fresh.prime() == 2
    assert fresh.is_primed and objects(fresh) == before


def test_a_damaged_record_is_repaired_keeping_the_batches(store_url) -> None:
    stash = iris(path=store_url)
    stash.prime()
    before = objects(stash)
    stash.backend.write(layout.STORE_INFO, [b"{not json"])
    fresh = iris(path=store_url)
    assert not fresh.is_primed
    assert fresh.prime() == 0  # every batch verified and kept
    assert fresh.is_primed and objects(fresh) == before


def test_clear_leaves_only_the_job_record(store_url) -> None:
    stash = iris(path=store_url)
    stash.prime()
    stash.clear_all()
    assert sorted(stash.backend.list()) == [layout.JOB]
    assert stash.split_counts()["train"]["stored"] == 0
    assert stash.prime() == 9


def test_another_configuration_is_stale(store_url) -> None:
    iris(path=store_url).prime()
    other = iris(path=store_url, batch_size=10)
    assert other.is_stale
    with pytest.raises(StaleStoreError):
        other.load("train", 0)
    with pytest.raises(StaleStoreError):
        other.prime()


def test_a_replica_serves_the_store_alone(store_url) -> None:
    stash = iris(path=store_url)
    stash.prime()
    settings = build_settings(data_dir=store_url, role="serve", token=TOKEN)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/splits").json()["primed"] is True
        meta = client.get("/v1/metadata").json()["metadata"]
        assert meta == stash.batch_metadata.to_dict()
        for split, counts in stash.split_counts().items():
            for batch_id in range(counts["batches"]):
                response = client.get(f"/v1/splits/{split}/batches/{batch_id}")
                assert response.status_code == 200
                payload = wire.decode(bytearray(response.content))
                expected = stash.load(split, batch_id)
                assert payload.data_point_ids == list(expected.data_point_ids)
                assert torch.equal(payload.tensors["label"], expected["label"])
        status = client.get("/v1/admin/status", headers=AUTH).json()
        assert status["state"] == "done" and status["role"] == "serve"
        assert client.post("/v1/admin/prime", headers=AUTH).status_code == 409  # read-only


class FaultyBackend(StoreBackend):
    """Wraps a backend and fails the writes a test chooses (an upload that never completed)."""

    def __init__(self, inner: StoreBackend, fail_write: Any) -> None:
        self.inner, self.url, self.fail_write = inner, inner.url, fail_write
        self.writes: list[str] = []

    def write(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        self.writes.append(key)
        if self.fail_write(key, len(self.writes)):
            raise OSError(f"injected: the upload of {key} failed")
        self.inner.write(key, chunks)

    def read(self, key: str) -> bytearray:
        return self.inner.read(key)

    def read_mapped(self, key: str) -> Any:
        return self.inner.read_mapped(key)

    def version(self, key: str) -> str | None:
        return self.inner.version(key)

    def create(self, key: str, data: bytes) -> bool:
        return self.inner.create(key, data)

    def replace(self, key: str, data: bytes, version: str) -> bool:
        return self.inner.replace(key, data, version)

    def list(self, prefix: str = "") -> Any:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def sweep_temporaries(self) -> int:
        return self.inner.sweep_temporaries()

    def check(self) -> None:
        self.inner.check()


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (lambda key, n: key.startswith(layout.BATCHES) and n == 12, "a batch upload fails"),
        (lambda key, n: key == layout.MANIFEST, "a crash between the batches and the manifest"),
    ],
    ids=["batch-upload", "before-manifest"],
)
def test_a_failed_write_leaves_a_store_that_claims_nothing_and_resumes(
    store_url, fault, why
) -> None:
    stash = iris(path=store_url)
    faulty = FaultyBackend(stash.backend, fault)
    stash.backend = faulty
    with pytest.raises(OSError, match="injected"):
        stash.prime()
    clean = iris(path=store_url)
    assert not clean.is_primed, why
    assert clean.backend.version(layout.MANIFEST) is None
    stored = sum(c["stored"] for c in clean.reader.split_counts().values())
    assert stored < 9 if "upload" in why else stored == 9
    job = clean.backend.read(layout.JOB)
    assert b'"state": "failed"' in job and b"injected" in job
    assert clean.prime() == 9 - stored and clean.is_primed
    assert len(list(clean.backend.list(layout.BATCHES))) == 18


def test_a_store_url_that_cannot_be_used_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not a directory"):
        create_app(build_settings(data_dir=blocker, role="serve"))
