"""A resumed prime trusts a listing checked against the ledger, and reads only what changed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.ledger import LEDGER, Ledger, ledger_prefix
from batchstash.service.store.local import LocalBackend
from batchstash.service.store.s3 import S3Backend

from .factories import stored_files, stored_object


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The batch objects read through any store backend (keys), in order."""
    seen: list[str] = []
    for cls in (LocalBackend, S3Backend):
        original = cls.read

        def read(self: Any, key: str, _original: Any = original) -> Any:
            if key.startswith(layout.BATCHES):
                seen.append(key)
            return _original(self, key)

        monkeypatch.setattr(cls, "read", read)
    return seen


def batch_objects(root: str) -> int:
    return len(stored_files(root))


def test_a_primed_store_resumes_without_reading_a_batch_object(
    tmp_path: Path, reads: list[str]
) -> None:
    stash = iris(path=str(tmp_path / "data"))
    assert stash.prime() > 0
    reads.clear()
    assert stash.prime() == 0
    assert reads == []
    assert stash.prime(verify=True) == 0  # the full check reads every object
    assert len(reads) == batch_objects(stash.path) > 0


def test_the_ledger_records_every_object_once_compacted(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    backend = stash.backend
    generation = stash.reader.info().generation
    parts = list(backend.list(ledger_prefix(generation)))
    assert len(parts) == 1
    ledger = Ledger.read(backend, generation)
    listed = {k: (s, v) for k, s, v in backend.list_versions(layout.generation_prefix(generation))}
    assert ledger.entries == listed and len(listed) == batch_objects(stash.path)


def test_an_object_changed_since_it_was_written_is_read_and_a_bad_one_encoded(
    tmp_path: Path, reads: list[str]
) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    good = stored_object(stash.path, "train", 1, "label")
    good.write_bytes(good.read_bytes())  # same bytes, a new version
    bad = stored_object(stash.path, "train", 2, "flower_dims")
    raw = bytearray(bad.read_bytes())
    raw[-2] ^= 0x08
    bad.write_bytes(bytes(raw))
    before = stored_files(stash.path)
    reads.clear()
    assert stash.prime() == 1  # train/2 encoded again, train/1 kept
    assert {tuple(key.split("/")[2:4]) for key in reads} == {("train", "1"), ("train", "2")}
    after = stored_files(stash.path)
    assert after.keys() == before.keys()
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"train/2/flower_dims.safetensors"}
    reads.clear()
    assert stash.prime() == 0 and reads == []  # the re-read objects were recorded again


def test_objects_written_after_the_last_part_are_read_once(
    tmp_path: Path, reads: list[str]
) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    stash.backend.delete_prefix(LEDGER)  # as if killed before any part was written
    reads.clear()
    assert stash.prime() == 0
    assert len(reads) == batch_objects(stash.path)
    reads.clear()
    assert stash.prime() == 0 and reads == []


def test_a_missing_object_is_encoded_without_reading_the_others(
    tmp_path: Path, reads: list[str]
) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    stored_object(stash.path, "test", 0, "label").unlink()
    (Path(stash.path) / layout.MANIFEST).unlink()
    reads.clear()
    assert stash.prime() == 1
    assert reads == []


def test_a_damaged_ledger_part_means_a_read_not_a_failure(tmp_path: Path, reads: list[str]) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    (part,) = stash.backend.list(LEDGER)
    stash.backend.write(part, [b"{not json"])
    reads.clear()
    assert stash.prime() == 0
    assert len(reads) == batch_objects(stash.path)


def test_a_part_is_written_only_after_the_objects_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stash = iris(path=str(tmp_path / "data"))
    events: list[str] = []
    backend = stash.backend
    sync, write = type(backend).sync, type(backend).write

    def record_sync(self: Any) -> None:
        events.append("sync")
        sync(self)

    def record_write(self: Any, key: str, chunks: Any) -> None:
        if key.startswith(LEDGER):
            events.append("ledger")
        write(self, key, chunks)

    monkeypatch.setattr(type(backend), "sync", record_sync)
    monkeypatch.setattr(type(backend), "write", record_write)
    stash.prime()
    assert "ledger" in events
    assert all(events[i - 1] == "sync" for i, e in enumerate(events) if e == "ledger")


def test_parts_flush_as_a_long_prime_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batchstash.service.store.ledger.FLUSH_S", 0.0)
    stash = iris(path=str(tmp_path / "data"), batch_size=10)
    written: list[str] = []
    write = type(stash.backend).write

    def record(self: Any, key: str, chunks: Any) -> None:
        if key.startswith(LEDGER):
            written.append(key)
        write(self, key, chunks)

    monkeypatch.setattr(type(stash.backend), "write", record)
    stash.prime()
    assert len(written) > 2  # a part as batches were stored, then the compacted one
    assert len(list(stash.backend.list(LEDGER))) == 1


def test_clear_removes_the_ledger(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "data"))
    stash.prime()
    assert list(stash.backend.list(LEDGER))
    stash.clear_all()
    assert list(stash.backend.list(LEDGER)) == []


def test_an_s3_store_resumes_from_its_listing(s3_bucket: str, reads: list[str]) -> None:
    stash = iris(path=s3_bucket + "/resume")
    stash.prime()
    reads.clear()
    assert stash.prime() == 0 and reads == []
    generation = stash.reader.info().generation
    key = layout.group_key(generation, "dev", 0, "label")
    raw = bytearray(stash.backend.read(key))
    raw[-1] ^= 0x01
    stash.backend.write(key, [bytes(raw)])  # another ETag: read, fails, encoded again
    reads.clear()
    assert stash.prime() == 1
    assert reads and {tuple(k.split("/")[2:4]) for k in reads} == {("dev", "0")}
    reads.clear()
    assert stash.prime() == 0 and reads == []


def test_ledger_entries_survive_json(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "s"))
    backend.check()
    backend.write("batches/g/train/0/a.safetensors", [b"12345"])
    ledger = Ledger(backend, "g")
    ledger.add(["batches/g/train/0/a.safetensors", "batches/g/train/1/a.safetensors"])
    assert ledger.flush() == 1  # the object not listed is not claimed
    again = Ledger.read(backend, "g")
    st = os.stat(tmp_path / "s" / "batches/g/train/0/a.safetensors")
    key = "batches/g/train/0/a.safetensors"
    assert again.entries[key][0] == st.st_size == 5
    assert again.trusts(key, (5, again.entries[key][1]))
    assert not again.trusts(key, (5, "another version")) and not again.trusts(key, None)
    assert "batches/g/train/1/a.safetensors" not in again.entries
    doc = json.loads((tmp_path / "s" / "ledger/g/00000000.json").read_text())
    assert list(doc["objects"]) == ["batches/g/train/0/a.safetensors"]
