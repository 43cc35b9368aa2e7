"""The store reader: records by version, freshness, split counts and verified batch bytes."""

from __future__ import annotations

import errno
import os
import re

import pytest
import torch

from batchstash.client import (
    BatchMetadata,
    CorruptStoreError,
    InvalidRequestError,
    NotFoundError,
    NotPrimedError,
    StaleStoreError,
    StoreBusyError,
    wire,
)
from batchstash.service.store import layout
from batchstash.service.store.backend import StoreBackend
from batchstash.service.store.lease import JobLease, JobState
from batchstash.service.store.local import LocalBackend, StoredFile
from batchstash.service.store.reader import StoreReader
from batchstash.service.store.records import Manifest, StoreInfo, write_record
from batchstash.service.store.writer import BatchWriter

GROUPS = [frozenset({"label"}), frozenset({"x", "ids"})]
SPLITS = {"train": {"batches": 2, "data_points": 4}, "test": {"batches": 1, "data_points": 1}}
IDS = {("train", 0): ["a", "b"], ("train", 1): ["c", "d"], ("test", 0): [7]}


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "label": torch.tensor([seed, 1]),
        "x": torch.rand(2, 3, generator=g),
        "ids": torch.tensor([[seed, 5], [6, 0]]),
    }


TENSORS = {key: _tensors(i) for i, key in enumerate(IDS)}


class RecordingBackend(LocalBackend):
    """A local backend that records the keys every read, mapped read and stat names."""

    def __init__(self, url):
        super().__init__(url)
        self.calls: list[tuple[str, str]] = []

    def read(self, key):
        self.calls.append(("read", key))
        return super().read(key)

    def read_mapped(self, key):
        self.calls.append(("read_mapped", key))
        return super().read_mapped(key)

    def read_mapped_versioned(self, key):
        self.calls.append(("read_mapped", key))
        return super().read_mapped_versioned(key)

    def version(self, key):
        self.calls.append(("version", key))
        return super().version(key)

    def keys(self, op=None):
        return [k for o, k in self.calls if op is None or o == op]


def _info(fingerprint="fp", generation="g1", **kwargs):
    return StoreInfo(
        fingerprint,
        generation,
        [layout.group_name(g) for g in GROUPS],
        SPLITS,
        kwargs.pop("metadata", {"not": "parsed"}),
        **kwargs,
    )


@pytest.fixture
def backend(tmp_path):
    return RecordingBackend(tmp_path / "store")


@pytest.fixture
def writer(backend):
    return BatchWriter(backend, GROUPS, "fp", "g1")


@pytest.fixture
def primed(backend, writer):
    """A store of every planned batch, its records written as a prime would."""
    write_record(backend, _info())
    for (split, batch_id), ids in IDS.items():
        writer.write(split, batch_id, ids, TENSORS[split, batch_id])
    write_record(backend, Manifest("fp", "g1", {"train": 2, "test": 1}, 0))
    backend.calls.clear()
    return backend


@pytest.fixture
def reader(primed):
    return StoreReader(primed)


def _key(split, batch_id, group):
    return layout.group_key("g1", split, batch_id, layout.group_name(group))


# records -----------------------------------------------------------------------------------


def test_an_empty_store_is_not_primed(backend):
    reader = StoreReader(backend)
    with pytest.raises(NotPrimedError, match="the store has no batches yet: prime it"):
        reader.info()
    with pytest.raises(NotPrimedError):
        reader.read_sources("train", 0)
    assert reader.problem() == "the store has no batches yet: prime it"
    assert reader.fingerprint is None and reader.manifest() is None
    assert not reader.is_primed and not reader.is_stale


def test_records_are_cached_by_version(reader, primed):
    assert reader.info() == _info()
    for _ in range(3):
        assert reader.info() == _info()
    assert primed.keys("read") == ["store.json"]  # read once, stat'ed each time
    assert primed.keys("version").count("store.json") == 4
    write_record(primed, _info(decoded_attributes=["x"]))
    assert reader.info().decoded_attributes == ["x"]
    assert primed.keys("read") == ["store.json", "store.json"]


def test_records_are_trusted_for_refresh_s(primed):
    reader = StoreReader(primed, refresh_s=60.0)
    assert reader.info() == _info()
    write_record(primed, _info(decoded_attributes=["x"]))
    primed.calls.clear()
    assert reader.info() == _info()  # not looked at again within refresh_s
    assert primed.calls == []


def test_damaged_records_name_their_key(reader, primed, tmp_path):
    primed.write(layout.MANIFEST, [b"{not json"])
    assert reader.problem() == "store record manifest.json is not valid JSON"
    assert not reader.is_primed and reader.manifest() is None
    primed.write(layout.STORE_INFO, [b'{"format": 2}'])
    pattern = "^store record store.json has missing or unknown fields: prime the store to repair"
    with pytest.raises(NotPrimedError, match=pattern) as info:
        reader.info()
    assert str(tmp_path) not in info.value.message
    assert reader.problem() == info.value.message and reader.fingerprint is None


def test_a_fresh_primed_store(reader):
    assert reader.check_fresh() == _info() and reader.problem() is None
    assert reader.is_primed and not reader.is_stale and reader.fingerprint == "fp"
    assert reader.manifest() == Manifest("fp", "g1", {"train": 2, "test": 1}, 0)
    assert reader.keys("train") == [0, 1] and reader.keys("test") == [0]
    with pytest.raises(NotFoundError, match=r"unknown split 'dev'; splits: \['test', 'train'\]"):
        reader.keys("dev")


def test_a_store_of_another_configuration_is_stale(primed):
    reader = StoreReader(primed, expect_fingerprint="another")
    assert reader.is_stale and not reader.is_primed and reader.fingerprint == "fp"
    with pytest.raises(StaleStoreError, match="clear it and prime again") as info:
        reader.check_fresh()
    assert reader.problem() == info.value.message
    for call in [reader.split_counts, reader.metadata, lambda: reader.read_sources("train", 0)]:
        with pytest.raises(StaleStoreError, match="encoded with configuration fp"):
            call()
    assert StoreReader(primed, expect_fingerprint="fp").is_primed


def test_a_manifest_of_another_generation_claims_nothing(reader, primed):
    write_record(primed, Manifest("fp", "g0", {"train": 2, "test": 1}))
    assert reader.manifest() is None and not reader.is_primed
    assert reader.problem() is None  # not damaged: just not primed yet


def test_metadata_from_the_store_alone(backend, tmp_path):
    from batchstash.service.examples import iris

    expected = iris(path=str(tmp_path / "iris")).batch_metadata
    write_record(backend, _info(metadata=expected.to_dict()))
    reader = StoreReader(backend)
    metadata = reader.metadata()
    assert isinstance(metadata, BatchMetadata) and metadata.to_dict() == expected.to_dict()
    assert reader.metadata() is metadata  # derived once per record
    assert not (tmp_path / "iris").exists()


# split counts ------------------------------------------------------------------------------


def test_split_counts_of_a_primed_store(reader, primed):
    assert reader.split_counts() == {
        "train": {"batches": 2, "data_points": 4, "stored": 2},
        "test": {"batches": 1, "data_points": 1, "stored": 1},
    }
    assert not [k for k in primed.keys() if k.startswith(layout.BATCHES)]


def test_split_counts_while_priming_come_from_the_job_and_touch_no_batch(backend, writer):
    write_record(backend, _info())
    writer.write("train", 0, IDS["train", 0], TENSORS["train", 0])
    reader = StoreReader(backend)
    assert reader.split_counts()["train"]["stored"] == 0
    lease = JobLease.acquire(backend, "prime", generation="g1")
    lease.heartbeat(progress={"train": [1, 2], "test": [0, 1]})
    backend.calls.clear()
    assert reader.split_counts() == {
        "train": {"batches": 2, "data_points": 4, "stored": 1},
        "test": {"batches": 1, "data_points": 1, "stored": 0},
    }
    assert backend.calls  # the records and the job were looked at...
    assert not [k for k in backend.keys() if k.startswith(layout.BATCHES)]  # ...no batch
    lease.finish(JobState.DONE)


def test_split_counts_ignore_another_generations_job(backend):
    write_record(backend, _info())
    lease = JobLease.acquire(backend, "prime", generation="g0")
    lease.heartbeat(progress={"train": [2, 2]})
    assert StoreReader(backend).split_counts()["train"]["stored"] == 0


# batches -----------------------------------------------------------------------------------


def test_read_sources_round_trip(reader):
    wanted, sources = reader.read_sources("train", 1, ["x"])
    assert wanted == {"x"}
    assert [sorted(h.entries) for _, h in sources] == [["ids", "x"]]
    payload = wire.decode(sources[0][0])
    assert payload.data_point_ids == ["c", "d"] and payload.batch_id == 1
    assert torch.equal(payload.tensors["x"], TENSORS["train", 1]["x"])
    assert torch.equal(payload.tensors["ids"], TENSORS["train", 1]["ids"])

    wanted, sources = reader.read_sources("train", 1)
    assert wanted is None
    assert sorted(n for _, h in sources for n in h.entries) == ["ids", "label", "x"]
    assert reader.exists("train", 1) and reader.exists("test", 0, ["label"])


def test_default_attributes(primed):
    wanted, _ = StoreReader(primed, default_attributes=["label"]).read_sources("test", 0)
    assert wanted == {"label"}
    write_record(primed, _info(decoded_attributes=["x"]))
    reader = StoreReader(primed)
    wanted, sources = reader.read_sources("test", 0)
    assert wanted == {"x"} and len(sources) == 1


@pytest.mark.parametrize(
    ("split", "batch_id", "attributes", "error", "message"),
    [
        ("dev", 0, None, NotFoundError, "unknown split 'dev'"),
        ("../x", 0, None, NotFoundError, r"unknown split '\.\./x'"),
        ("train", 2, None, NotFoundError, "split 'train' has no batch 2"),
        ("train", -1, None, NotFoundError, "split 'train' has no batch -1"),
        ("train", 0, ["x", "nope"], InvalidRequestError, r"unknown attributes \['nope'\]"),
    ],
)
def test_read_sources_refuses_unknown_batches(reader, split, batch_id, attributes, error, message):
    with pytest.raises(error, match=message):
        reader.read_sources(split, batch_id, attributes)


def test_a_missing_object_is_not_primed(reader, primed):
    primed.delete(_key("train", 0, GROUPS[0]))
    with pytest.raises(NotPrimedError, match="batch train/0 is not encoded yet"):
        reader.read_sources("train", 0)
    assert not reader.exists("train", 0)
    assert reader.exists("train", 0, ["x"])
    assert reader.read_sources("train", 0, ["x"])[1]  # the other group still serves


def test_a_prediction_batch_serves_an_empty_group(backend, writer):
    write_record(backend, _info())
    tensors = {k: v for k, v in TENSORS["test", 0].items() if k != "label"}
    writer.write("test", 0, IDS["test", 0], tensors)
    reader = StoreReader(backend)
    _, sources = reader.read_sources("test", 0, ["label"])
    assert len(sources) == 1 and sources[0][1].entries == {}
    assert reader.exists("test", 0)
    (chunks,) = reader.payloads("test", [0], ["label", "x"])
    payload = wire.decode(b"".join(chunks))
    assert sorted(payload.tensors) == ["x"] and payload.data_point_ids == [7]


def _flip_last(buf):
    return buf[:-1] + bytes([buf[-1] ^ 0xFF])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-3], "header describes"),
        (_flip_last, "fails its checksum"),
        (lambda b: b"", "too short"),
    ],
    ids=["truncated", "flipped", "empty"],
)
@pytest.mark.parametrize("mapped", [False, True])
def test_a_damaged_object_is_corrupt_naming_its_key(
    reader, primed, tmp_path, damage, message, mapped
):
    key = _key("train", 0, GROUPS[1])
    primed.write(key, [damage(bytes(primed.read(key)))])
    pattern = f"^stored object {re.escape(key)}: .*{message}"
    with pytest.raises(CorruptStoreError, match=pattern) as info:
        reader.read_sources("train", 0, ["x"], mapped=mapped)
    assert str(tmp_path) not in info.value.message and ".tmp" not in info.value.message
    assert reader.read_sources("train", 0, ["label"])[1]  # the other group is fine


def _copy(split, batch_id):
    def damage(backend):  # another batch's valid object over train/0's
        source = _key(split, batch_id, GROUPS[0])
        backend.write(_key("train", 0, GROUPS[0]), [backend.read(source)])

    return damage


def _other_store(backend):
    BatchWriter(backend, GROUPS, "other", "g1").write(
        "train", 0, IDS["train", 0], TENSORS["train", 0]
    )


@pytest.mark.parametrize(
    ("mislabel", "message"),
    [
        (_copy("train", 1), "batchstash.batch_id is '1', expected '0'"),
        (_copy("test", 0), "batchstash.split is 'test', expected 'train'"),
        (_other_store, "batchstash.fingerprint is 'other', expected 'fp'"),
    ],
    ids=["other-batch", "other-split", "other-store"],
)
def test_a_mislabelled_object_is_corrupt(reader, primed, mislabel, message):
    mislabel(primed)
    key = _key("train", 0, GROUPS[0])
    with pytest.raises(CorruptStoreError, match=re.escape(f"stored object {key}: {message}")):
        reader.read_sources("train", 0, ["label"])


def test_a_tensor_outside_its_group_is_corrupt(reader, primed, writer):
    tensors = TENSORS["train", 0]
    other = wire.encode(
        {"label": tensors["label"], "x": tensors["x"]}, writer.expect("train", 0, IDS["train", 0])
    )
    primed.write(_key("train", 0, GROUPS[0]), [other])
    with pytest.raises(CorruptStoreError, match="label.safetensors: holds tensors outside its"):
        reader.read_sources("train", 0, ["label"])


def test_objects_of_one_batch_must_agree_on_their_data_points(reader, primed):
    BatchWriter(primed, GROUPS[:1], "fp", "g1").write("train", 0, ["z", "y"], TENSORS["train", 0])
    _, sources = reader.read_sources("train", 0, ["label"])  # alone, it is a valid object
    assert wire.decode(sources[0][0]).data_point_ids == ["z", "y"]
    with pytest.raises(CorruptStoreError, match="data point ids differ from the batch's other"):
        reader.read_sources("train", 0)
    with pytest.raises(CorruptStoreError, match="data point ids differ"):
        reader.payloads("train", [0], ["label", "x"])


# serving -----------------------------------------------------------------------------------


@pytest.fixture
def verify_calls(monkeypatch):
    calls = []
    real = wire.verify

    def counting(buf, header=None):
        calls.append(header)
        return real(buf, header)

    monkeypatch.setattr(wire, "verify", counting)
    return calls


def test_serving_reads_skip_checksums_of_objects_verified_and_unchanged(
    reader, primed, writer, verify_calls
):
    for _ in range(3):
        reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(verify_calls) == 1
    assert len(reader.verified) == 1
    reader.read_sources("train", 0, ["label"])  # loading and resuming always verify
    assert len(verify_calls) == 2
    writer.write("train", 0, IDS["train", 0], TENSORS["train", 0])  # rewritten: a new object
    reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(verify_calls) == 3
    reader.payloads("train", [0, 0], ["label", "x"])  # a new object (ids+x) once, then trusted
    assert len(verify_calls) == 4
    assert primed.keys("read_mapped").count(_key("train", 0, GROUPS[1])) == 2


def _payload_bytes(chunks):
    return b"".join(bytes(c.view() if isinstance(c, StoredFile) else c) for c in chunks)


def test_serving_files_sends_verified_objects_unread(reader, primed, verify_calls):
    (first,) = reader.payloads("train", [1], ["label"], files=True)
    assert not any(isinstance(c, StoredFile) for c in first)  # verified now: from its bytes
    assert len(verify_calls) == 1
    primed.calls.clear()
    (again,) = reader.payloads("train", [1], ["label"], files=True)
    assert len(again) == 1 and isinstance(again[0], StoredFile)  # held open, not read
    assert primed.keys("read_mapped") == [] and len(verify_calls) == 1
    assert _payload_bytes(again) == _payload_bytes(first)
    assert _payload_bytes(again) == b"".join(reader.payloads("train", [1], ["label"])[0])
    again[0].close()


def test_serving_files_composes_from_bytes(reader):
    reader.payloads("train", [0], ["label", "x"], files=True)  # both objects verified
    (chunks,) = reader.payloads("train", [0], ["label", "x"], files=True)
    assert not any(isinstance(c, StoredFile) for c in chunks)
    payload = wire.decode(bytearray(b"".join(chunks)))
    assert sorted(payload.tensors) == ["label", "x"]
    assert torch.equal(payload.tensors["x"], TENSORS["train", 0]["x"])


def test_serving_files_parses_a_header_no_longer_kept(primed, verify_calls):
    reader = StoreReader(primed)
    reader.verified.header_capacity = 0  # more objects than parsed headers kept
    reader.payloads("test", [0], ["label"], files=True)
    (chunks,) = reader.payloads("test", [0], ["label"], files=True)  # trusted, header re-read
    assert len(verify_calls) == 1
    payload = wire.decode(bytearray(b"".join(chunks)))
    assert torch.equal(payload.tensors["label"], TENSORS["test", 0]["label"])


class NoFilesBackend(RecordingBackend):
    """As the S3 backend: no local files to hold open."""

    def open_versioned(self, key):
        return None

    def read_mapped_versioned(self, key):
        return StoreBackend.read_mapped_versioned(self, key)


def test_serving_files_from_a_backend_without_files_reads_bytes(tmp_path, verify_calls):
    backend = NoFilesBackend(tmp_path / "store")
    BatchWriter(backend, GROUPS, "fp", "g1").write("test", 0, IDS["test", 0], TENSORS["test", 0])
    write_record(backend, _info())
    write_record(backend, Manifest("fp", "g1", {"train": 2, "test": 1}, 0))
    reader = StoreReader(backend)
    for _ in range(2):
        (chunks,) = reader.payloads("test", [0], ["label"], files=True)
        assert not any(isinstance(c, StoredFile) for c in chunks)
    assert len(verify_calls) == 1


def test_no_verified_capacity_verifies_every_read(primed, verify_calls):
    reader = StoreReader(primed, verified_capacity=0)
    for _ in range(3):
        reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(verify_calls) == 3


def test_an_object_changed_in_place_is_verified_again(reader, primed):
    reader.read_sources("train", 0, ["label"], mapped=True)
    path = primed.root / _key("train", 0, GROUPS[0])
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same inode, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(CorruptStoreError, match="tensor 'label' fails its checksum"):
        reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(reader.verified) == 0  # forgotten


def test_a_trusted_object_is_served_from_its_kept_header(reader, primed, monkeypatch):
    parsed = []
    real = wire.parse_header
    monkeypatch.setattr(wire, "parse_header", lambda buf: parsed.append(1) or real(buf))
    for _ in range(3):
        _, sources = reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(parsed) == 1  # the first (verifying) read only
    assert sources[0][1].metadata[wire.KEY_BATCH_ID] == "0"
    with pytest.raises(CorruptStoreError, match="batchstash.batch_id is '0', expected '1'"):
        monkeypatch.setattr(reader.verified, "is_verified", lambda key, version: True)
        reader.verified.header = lambda key, version: sources[0][1]  # a header of batch 0
        reader.read_sources("train", 1, ["label"], mapped=True)  # what it claims is checked


def test_no_header_capacity_parses_every_read(primed, monkeypatch):
    reader = StoreReader(primed)
    reader.verified.header_capacity = 0
    parsed = []
    real = wire.parse_header
    monkeypatch.setattr(wire, "parse_header", lambda buf: parsed.append(1) or real(buf))
    for _ in range(3):
        reader.read_sources("train", 0, ["label"], mapped=True)
    assert len(parsed) == 3


def test_the_identity_is_checked_on_every_serving_read(reader, primed, monkeypatch):
    monkeypatch.setattr(reader.verified, "is_verified", lambda key, version: True)
    key = _key("train", 0, GROUPS[0])
    primed.write(key, [_flip_last(bytes(primed.read(key)))])
    assert reader.read_sources("train", 0, ["label"], mapped=True)[1]  # trusted: not hashed
    with pytest.raises(CorruptStoreError, match="tensor 'label' fails its checksum"):
        reader.read_sources("train", 0, ["label"])  # not serving: hashed
    relabelled = bytes(primed.read(key)).replace(b'split":"train"', b'split":"trail"')
    primed.write(key, [relabelled])
    with pytest.raises(CorruptStoreError, match=r"identity \(split, .*\) fails its checksum"):
        reader.read_sources("train", 0, ["label"], mapped=True)


# payloads ----------------------------------------------------------------------------------


def test_a_payload_of_one_whole_group_is_the_stored_object(reader, primed):
    (chunks,) = reader.payloads("train", [1], ["label"])
    assert len(chunks) == 1
    assert bytes(chunks[0]) == primed.read(_key("train", 1, GROUPS[0]))
    (chunks,) = reader.payloads("train", [1], ["x", "ids"])
    assert bytes(chunks[0]) == primed.read(_key("train", 1, GROUPS[1]))


def test_a_composed_payload_takes_its_identity_from_the_stored_objects(reader):
    out = reader.payloads("train", [0, 1], ["label", "x"])
    assert len(out) == 2
    for batch_id, chunks in enumerate(out):
        payload = wire.decode(b"".join(chunks))  # verifies identity and every tensor
        assert sorted(payload.tensors) == ["label", "x"]  # ids (in x's group) left out
        assert payload.data_point_ids == IDS["train", batch_id]
        assert (payload.split, payload.batch_id, payload.fingerprint) == ("train", batch_id, "fp")
        for name in ["label", "x"]:
            assert torch.equal(payload.tensors[name], TENSORS["train", batch_id][name])


def test_a_payload_of_part_of_a_group(reader):
    (chunks,) = reader.payloads("test", [0], ["x"])
    payload = wire.decode(b"".join(chunks))
    assert sorted(payload.tensors) == ["x"] and payload.data_point_ids == [7]


def test_a_payload_of_every_attribute(reader):
    (chunks,) = reader.payloads("test", [0])
    payload = wire.decode(b"".join(chunks))
    assert sorted(payload.tensors) == ["ids", "label", "x"]
    for name, tensor in TENSORS["test", 0].items():
        assert torch.equal(payload.tensors[name], tensor)


def test_no_descriptor_left_is_a_busy_store_not_a_bug(reader, primed, monkeypatch):
    def no_fds(key):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(primed, "open_versioned", no_fds)
    monkeypatch.setattr(primed, "read_mapped_versioned", no_fds)
    with pytest.raises(StoreBusyError, match="no file descriptor left") as caught:
        reader.payloads("train", [0], ["label"], files=True)
    assert caught.value.status == 503 and caught.value.code == "store_busy"

    def other(key):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(primed, "open_versioned", other)
    with pytest.raises(OSError, match="Input/output"):  # anything else is not hidden
        reader.payloads("train", [0], ["label"], files=True)
