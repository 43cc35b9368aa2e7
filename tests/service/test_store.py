"""The store: safe names, atomic files, the composite group store and plan/manifest records."""

from __future__ import annotations

import json
import os

import pytest
import torch

from batchstash.client import CorruptStoreError, InvalidRequestError, wire
from batchstash.service.store.composite import CompositeBatchStore, expect_metadata, group_name
from batchstash.service.store.files import (
    VerifiedFiles,
    atomic_write,
    atomic_write_json,
    file_identity,
    read_file,
    safe_name,
)
from batchstash.service.store.manifest import (
    StoreRecord,
    read_config_hash,
    read_record,
    write_record,
)


@pytest.mark.parametrize("name", ["train", "dev-1", "a.b", "x+y", "_", "T9"])
def test_safe_names(name):
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "..", "a/b", "", ".hidden", "a b", "x" * 129, "a..b", "-x", "a\\b", "é"]
)
def test_unsafe_names(name):
    with pytest.raises(InvalidRequestError, match=r"split .* must match"):
        safe_name(name, "split")


def test_atomic_write_and_read(tmp_path):
    path = tmp_path / "deep" / "f.bin"
    atomic_write(path, [b"abc", memoryview(b"def")])
    assert path.read_bytes() == b"abcdef"
    atomic_write(path, [b"x"])
    buf = read_file(path)
    assert isinstance(buf, bytearray) and buf == b"x"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temp file left

    atomic_write_json(tmp_path / "d.json", {"b": 1, "a": [1]})
    assert json.loads((tmp_path / "d.json").read_text()) == {"a": [1], "b": 1}


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, [b"old"])

    def chunks():
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_group_name():
    assert group_name({"b", "a"}) == "a+b"
    assert group_name(["x"]) == "x"


GROUPS = [frozenset({"label"}), frozenset({"x", "ids"})]
TENSORS = {
    "label": torch.tensor([1, 0]),
    "x": torch.rand(2, 3),
    "ids": torch.tensor([[4, 5], [6, 0]]),
}


@pytest.fixture
def store(tmp_path):
    return CompositeBatchStore(tmp_path / "s", GROUPS)


def _expect(batch_id=3):
    return expect_metadata("train", batch_id, "fp", ["a", "b"])


def test_expect_metadata():
    assert _expect() == {
        "batchstash.split": "train",
        "batchstash.batch_id": "3",
        "batchstash.fingerprint": "fp",
        "batchstash.data_point_ids": '["a","b"]',
    }


def test_write_and_read(store, tmp_path):
    store.write("train", 3, TENSORS, _expect())
    files = sorted(p.relative_to(tmp_path / "s").as_posix() for p in store.path.rglob("*"))
    assert files == [
        "batches",
        "batches/train",
        "batches/train/3",
        "batches/train/3/ids+x.safetensors",
        "batches/train/3/label.safetensors",
    ]
    assert store.exists("train", 3) and store.is_stored("train", 3, _expect())
    assert not store.exists("train", 4)
    assert store.size_bytes() == sum(p.stat().st_size for p in store.path.rglob("*.safetensors"))

    sources = store.read_verified("train", 3, ["x"], _expect())
    assert [sorted(h.entries) for _, h in sources] == [["ids", "x"]]
    tensors = wire.decode(sources[0][0]).tensors
    assert torch.equal(tensors["x"], TENSORS["x"])
    assert torch.equal(tensors["ids"], TENSORS["ids"])
    assert len(store.read_verified("train", 3, None, _expect())) == 2


def test_groups_for(store):
    assert store.groups_for(None) == tuple(GROUPS)
    assert store.groups_for(["ids"]) == (GROUPS[1],)
    assert store.groups_for(["x", "label"]) == tuple(GROUPS)


def test_prediction_batch_writes_empty_group_file(store):
    store.write("train", 3, {"x": TENSORS["x"], "ids": TENSORS["ids"]}, _expect())
    sources = store.read_verified("train", 3, ["label"], _expect())
    assert sources[0][1].entries == {}
    assert store.is_stored("train", 3, _expect())


def test_missing_file_is_file_not_found(store):
    store.write("train", 3, TENSORS, _expect())
    store.group_path("train", 3, GROUPS[0]).unlink()
    with pytest.raises(FileNotFoundError):
        store.read_verified("train", 3, None, _expect())
    assert store.read_verified("train", 3, ["x"], _expect())
    assert not store.is_stored("train", 3, _expect())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-3], "header describes"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "fails its checksum"),
        (lambda b: b"", "too short"),
    ],
    ids=["truncated", "flipped", "empty"],
)
def test_damaged_file_is_corrupt(store, damage, message):
    store.write("train", 3, TENSORS, _expect())
    path = store.group_path("train", 3, GROUPS[1])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptStoreError, match=message) as info:
        store.read_verified("train", 3, ["x"], _expect())
    assert str(path) in info.value.message
    assert not store.is_stored("train", 3, _expect())


def test_metadata_mismatch_is_corrupt(store):
    store.write("train", 3, TENSORS, _expect())
    with pytest.raises(
        CorruptStoreError, match="metadata batchstash.batch_id is '3', expected '4'"
    ):
        store.read_verified("train", 3, None, _expect(batch_id=4))


def test_tensor_outside_its_group_is_corrupt(store):
    store.write("train", 3, TENSORS, _expect())
    other = wire.encode({"label": TENSORS["label"], "x": TENSORS["x"]}, _expect())
    store.group_path("train", 3, GROUPS[0]).write_bytes(other)
    with pytest.raises(CorruptStoreError, match="holds tensors outside its group"):
        store.read_verified("train", 3, ["label"], _expect())


@pytest.mark.parametrize("split", ["../x", "a/b", ".."])
def test_store_refuses_unsafe_split(store, split):
    with pytest.raises(InvalidRequestError):
        store.write(split, 0, TENSORS, _expect())
    assert not (store.path.parent / "x").exists()


def test_clear(store):
    store.write("train", 3, TENSORS, _expect())
    store.clear()
    assert not store.batches_path.exists()
    assert store.size_bytes() == 0


RECORD = StoreRecord("abc", ["label", "ids+x"], {"train": {"batches": 2, "data_points": 5}}, [])


def test_record_round_trip(tmp_path):
    path = tmp_path / "manifest.json"
    assert read_record(path) is None
    write_record(path, RECORD)
    assert json.loads(path.read_text())["format"] == 1
    assert read_record(path) == RECORD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": 2}', "unsupported format 2"),
        ('{"format": 1}', "missing or malformed field"),
        ("[]", "missing or malformed field"),
    ],
)
def test_bad_record_is_corrupt(tmp_path, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(CorruptStoreError, match=message):
        read_record(path)
    with pytest.raises(CorruptStoreError, match=message):
        read_config_hash(path)


def test_config_hash_of_a_large_record_from_its_head(tmp_path):
    path = tmp_path / "manifest.json"
    assert read_config_hash(path) is None
    sets = [{"batch_id": i, "data_point_ids": list(range(256)), "split_name": "train"}
            for i in range(50)]
    write_record(path, StoreRecord("0123abcd" * 4, ["x"], {"train": {"batches": 50}}, sets))
    assert path.stat().st_size > 50_000
    assert read_config_hash(path) == read_record(path).config_hash == "0123abcd" * 4


def test_config_hash_of_a_record_written_otherwise_is_parsed_in_full(tmp_path):
    path = tmp_path / "plan.json"
    doc = {"splits": {}, "id_sets": [], "groups": [], "format": 1, "config_hash": "beef"}
    path.write_text(json.dumps(doc))  # not our key order: the head does not match
    assert read_config_hash(path) == "beef"


@pytest.fixture
def verify_calls(monkeypatch):
    calls = []
    real = wire.verify

    def counting(buf, header=None):
        calls.append(header)
        return real(buf, header)

    monkeypatch.setattr(wire, "verify", counting)
    return calls


def test_serving_reads_skip_checksums_of_files_verified_and_unchanged(store, verify_calls):
    store.write("train", 3, TENSORS, _expect())
    for _ in range(3):
        store.read_verified("train", 3, ["label"], _expect(), mapped=True, trust_verified=True)
    assert len(verify_calls) == 1
    store.read_verified("train", 3, ["label"], _expect())  # loading and resuming always verify
    assert len(verify_calls) == 2
    store.write("train", 3, TENSORS, _expect())  # rewritten: a new file, verified again
    store.read_verified("train", 3, ["label"], _expect(), mapped=True, trust_verified=True)
    assert len(verify_calls) == 3
    store.clear()
    assert len(store.verified) == 0


def test_a_file_changed_in_place_is_verified_again(store):
    store.write("train", 3, TENSORS, _expect())
    store.read_verified("train", 3, ["label"], _expect(), mapped=True, trust_verified=True)
    path = store.group_path("train", 3, frozenset({"label"}))
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(CorruptStoreError, match="checksum"):
        store.read_verified("train", 3, ["label"], _expect(), mapped=True, trust_verified=True)


def test_verified_files_are_bounded_and_forget_changed_files(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * i)
        paths.append(str(path))
    known = VerifiedFiles(capacity=2)
    for path in paths:
        known.add(path, file_identity(path))
    assert len(known) == 2
    assert not known.is_verified(paths[0], file_identity(paths[0]))  # least recent, evicted
    assert known.is_verified(paths[2], file_identity(paths[2]))
    stale = file_identity(paths[1])
    known.add(paths[1], (0, 0, 0, 0, 0))  # read while it changed: not recorded
    assert known.is_verified(paths[1], stale)
    assert not known.is_verified(paths[1], (*stale[:2], 99, *stale[3:]))
    assert not known.is_verified(paths[1], stale)  # a mismatch forgets it
    never = VerifiedFiles(capacity=0)
    never.add(paths[2], file_identity(paths[2]))
    assert len(never) == 0
