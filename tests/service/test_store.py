"""The store: keys and safe names, the local backend, records, the writer, verified objects."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from batchstash.client import (
    BatchError,
    CorruptStoreError,
    InvalidRequestError,
    StoreError,
    wire,
)
from batchstash.service.store import layout, local
from batchstash.service.store.backend import NoSuchKey, open_backend
from batchstash.service.store.local import LocalBackend
from batchstash.service.store.records import (
    FORMAT,
    Manifest,
    Plan,
    StoreInfo,
    decode_record,
    encode_record,
    read_record,
    write_record,
)
from batchstash.service.store.verified import VerifiedObjects
from batchstash.service.store.writer import BatchWriter, check_object, identity_metadata

# layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "dev-1", "a.b", "x+y", "_", "T9", "x" * 128])
def test_safe_names(name):
    assert layout.safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["../x", "..", "a/b", "", ".hidden", "a b", "x" * 129, "a..b", "-x", "a\\b", "é", "+x", None],
)
def test_unsafe_names(name):
    with pytest.raises(InvalidRequestError, match=r"split .* must match"):
        layout.safe_name(name, "split")


def test_a_trailing_newline_is_unsafe():
    with pytest.raises(InvalidRequestError, match="must match"):
        layout.safe_name("train\n", "split")


@pytest.mark.parametrize(
    ("group", "name"),
    [({"b", "a"}, "a+b"), (["x"], "x"), (frozenset({"ids", "x", "label"}), "ids+label+x")],
)
def test_group_name(group, name):
    assert layout.group_name(group) == name


@pytest.mark.parametrize(
    ("groups", "attributes", "expected"),
    [
        (None, ["x", "label"], [{"x"}, {"label"}]),
        ([], ["x"], [{"x"}]),
        ([["x", "ids"]], ["label", "x", "ids"], [{"x", "ids"}, {"label"}]),
        ([["label"], ["x", "ids"]], ["ids", "x", "label"], [{"label"}, {"x", "ids"}]),
    ],
)
def test_resolve_groups(groups, attributes, expected):
    result = layout.resolve_groups(groups, attributes)
    assert result == [frozenset(g) for g in expected]
    assert all(isinstance(g, frozenset) for g in result)


@pytest.mark.parametrize(
    ("groups", "reason"),
    [
        ([["x"], ["x", "ids"]], r"\['x'\] in two groups"),
        ([[]], "an empty group"),
        ([["x", "nope"]], r"\['nope'\] not mapped \(mapped: \['ids', 'label', 'x'\]\)"),
        ([["x", "gone"], ["gone", "ids"]], r"\['gone'\] in two groups"),
    ],
    ids=["overlap", "empty", "unmapped", "overlap-on-a-dropped-one"],
)
def test_resolve_groups_refuses_bad_groups(groups, reason):
    with pytest.raises(
        BatchError, match=f"disjoint, non-empty sets of mapped attributes: .*{reason}"
    ):
        layout.resolve_groups(groups, ["x", "ids", "label"], dropped=["gone"])


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([["x", "gone"]], [{"x"}, {"ids"}, {"label"}]),
        ([["gone", "lost"], ["ids", "label"]], [{"ids", "label"}, {"x"}]),
        ([["x", "ids", "gone"], ["lost"]], [{"x", "ids"}, {"label"}]),
    ],
    ids=["pruned", "emptied-and-dropped", "both"],
)
def test_resolve_groups_prunes_what_field_edits_dropped(groups, expected):
    result = layout.resolve_groups(groups, ["x", "ids", "label"], dropped={"gone", "lost"})
    assert result == [frozenset(g) for g in expected]


def test_keys():
    assert layout.generation_prefix("g1") == "batches/g1/"
    assert layout.batch_prefix("g1", "train", 3) == "batches/g1/train/3/"
    key = layout.group_key("g1", "train", 3, "ids+x")
    assert key == "batches/g1/train/3/ids+x.safetensors"
    assert key.startswith(layout.batch_prefix("g1", "train", 3))
    assert layout.parse_group_key(key) == ("g1", "train", 3, "ids+x")


@pytest.mark.parametrize(
    "key",
    [
        "store.json",
        "batches/g1/train/3",
        "batches/g1/train/x/label.safetensors",
        "batches/g1/train/3/label.json",
        "other/g1/train/3/label.safetensors",
        "batches/g1/train/3/4/label.safetensors",
    ],
)
def test_parse_group_key_of_other_keys(key):
    assert layout.parse_group_key(key) is None


# the local backend -------------------------------------------------------------------------


@pytest.fixture
def backend(tmp_path):
    return LocalBackend(tmp_path / "store")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_write_and_read(backend):
    backend.write("deep/er/f.bin", [b"abc", memoryview(b"def")])
    buf = backend.read("deep/er/f.bin")
    assert isinstance(buf, bytearray) and buf == b"abcdef"
    backend.write("deep/er/f.bin", [b"x"])
    assert backend.read("deep/er/f.bin") == b"x"
    assert _files(backend.root) == ["deep/er/f.bin"]  # no temp file left
    assert bytes(backend.read_mapped("deep/er/f.bin")) == b"x"
    data, version = backend.read_versioned("deep/er/f.bin")
    assert data == b"x" and version == backend.version("deep/er/f.bin")


def test_a_large_object_is_served_from_a_read_only_mapping(backend):
    data = os.urandom(600 * 1024)
    backend.write("big", [data])
    view = backend.read_mapped("big")
    assert view.readonly and view.nbytes == len(data) and bytes(view) == data
    backend.write("small", [b"tiny"])  # small objects are read, not mapped
    assert bytes(backend.read_mapped("small")) == b"tiny"


@pytest.mark.parametrize("call", ["read", "read_mapped", "read_versioned"])
@pytest.mark.parametrize("key", ["missing", "missing/deeper", "f/under-a-file"])
def test_missing_object_is_no_such_key(backend, call, key):
    backend.write("f", [b"x"])
    with pytest.raises(NoSuchKey) as info:
        getattr(backend, call)(key)
    assert info.value.key == key
    assert backend.version(key) is None


def test_write_failure_keeps_the_old_object(backend):
    backend.write("f.bin", [b"old"])
    before = backend.version("f.bin")

    def chunks():
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        backend.write("f.bin", chunks())
    assert backend.read("f.bin") == b"old"
    assert backend.version("f.bin") == before
    assert sorted(os.listdir(backend.root)) == ["f.bin"]  # the temp file is gone too


def test_version_changes_when_the_object_is_replaced(backend):
    backend.write("f", [b"one"])
    first = backend.version("f")
    assert backend.version("f") == first
    backend.write("f", [b"one"])  # equal bytes, a new file
    assert backend.version("f") not in (None, first)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a/.."])
def test_keys_cannot_leave_the_store(backend, key):
    with pytest.raises(ValueError, match="not a store key"):
        backend.write(key, [b"x"])
    with pytest.raises(ValueError, match="not a store key"):
        backend.read(key)
    assert not (backend.root.parent / "x").exists()


def test_create_refuses_an_existing_key(backend):
    assert backend.create("job.json", b"first")
    assert not backend.create("job.json", b"second")
    assert backend.read("job.json") == b"first"
    assert _files(backend.root) == ["job.json"]  # neither claim left a temp file


def test_replace_is_a_compare_and_swap(backend):
    backend.write("job.json", [b"v1"])
    v1 = backend.version("job.json")
    assert backend.replace("job.json", b"v2", v1)
    assert backend.read("job.json") == b"v2"
    assert not backend.replace("job.json", b"v3", v1)  # v1 is gone: the swap fails
    assert backend.read("job.json") == b"v2"

    v2 = backend.version("job.json")
    backend.write("job.json", [b"other"])  # another process wrote meanwhile
    assert not backend.replace("job.json", b"mine", v2)
    assert backend.read("job.json") == b"other"
    assert not backend.replace("absent.json", b"x", v2)
    assert backend.version("absent.json") is None


def test_list_skips_hidden_files_and_yields_nested_keys(backend):
    for key in ["a", "b/c", "b/d/e", "b/d/f", "z/y"]:
        backend.write(key, [b"x"])
    backend.replace("a", b"y", backend.version("a"))  # leaves the .lock file
    (backend.root / "b" / ".c.123-abcd.tmp").write_bytes(b"half")
    (backend.root / ".hidden").mkdir()
    (backend.root / ".hidden" / "k").write_bytes(b"x")
    assert sorted(backend.list()) == ["a", "b/c", "b/d/e", "b/d/f", "z/y"]
    assert sorted(backend.list("b/")) == ["b/c", "b/d/e", "b/d/f"]
    assert list(backend.list("missing/")) == []
    assert list(backend.list("a/")) == []  # a file, not a prefix
    assert list(LocalBackend(backend.root / "nowhere").list()) == []


def test_delete_and_delete_prefix(backend):
    for key in ["keep", "batches/g1/train/0/x.safetensors", "batches/g2/train/0/x.safetensors"]:
        backend.write(key, [b"x"])
    backend.delete("keep")
    backend.delete("keep")  # absent is fine
    backend.delete_prefix("batches/g1/")
    backend.delete_prefix("batches/nothing/")
    assert sorted(backend.list()) == ["batches/g2/train/0/x.safetensors"]
    backend.delete_prefix(layout.BATCHES)
    assert list(backend.list()) == []


def test_sweep_temporaries_removes_interrupted_writes(backend):
    backend.write("batches/g/train/0/x.safetensors", [b"x"])
    backend.write("job.json", [b"j"])
    assert backend.replace("job.json", b"k", backend.version("job.json"))  # makes .lock
    leftovers = [backend.root / ".top.99-aa.tmp", backend.root / "batches/g/train/0/.x.1-bb.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    (backend.root / "keep.tmp").write_bytes(b"not ours")
    assert backend.sweep_temporaries() == 2
    assert not any(p.exists() for p in leftovers)
    assert (backend.root / "keep.tmp").exists() and (backend.root / ".lock").exists()
    assert backend.read("batches/g/train/0/x.safetensors") == b"x"
    assert backend.sweep_temporaries() == 0


def test_check_makes_the_directory(backend):
    assert not backend.root.exists()
    backend.check()
    assert backend.root.is_dir()


@pytest.mark.parametrize("where", ["store", "store/below"], ids=["is-a-file", "under-a-file"])
def test_check_refuses_a_data_dir_that_is_a_file(tmp_path, where):
    (tmp_path / "store").write_bytes(b"not a directory")
    with pytest.raises(StoreError, match="exists and is not a directory"):
        LocalBackend(tmp_path / where).check()


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("/srv/store", "/srv/store"),
        ("relative/store", "relative/store"),
        ("file:///srv/store", "/srv/store"),
        ("file:///srv/my%20store", "/srv/my store"),
        ("FILE:///srv/store", "/srv/store"),
        ("C:\\store", "C:\\store"),  # a drive letter is not a scheme
    ],
)
def test_open_backend_of_local_urls(url, root):
    backend = open_backend(url)
    assert isinstance(backend, LocalBackend)
    assert backend.url == url and backend.root == Path(root)


def test_open_backend_of_a_path(tmp_path):
    backend = open_backend(tmp_path)
    assert isinstance(backend, LocalBackend) and backend.root == tmp_path


@pytest.mark.parametrize("url", ["gs://b/x", "http://host/store", "ftp://h/x"])
def test_open_backend_refuses_an_unknown_scheme(url):
    scheme = url.split(":")[0]
    with pytest.raises(InvalidRequestError, match=f"no backend for {scheme}://"):
        open_backend(url)


# records -----------------------------------------------------------------------------------

INFO = StoreInfo(
    "fp",
    "g1",
    ["label", "ids+x"],
    {"train": {"batches": 2, "data_points": 4}},
    {"any": ["metadata"]},
    ["x"],
)
PLAN = Plan("fp", "g1", [{"split_name": "train", "batch_id": 0, "data_point_ids": [1, 2]}])
MANIFEST = Manifest("fp", "g1", {"train": 2}, 1234)


@pytest.mark.parametrize(
    ("record", "key"),
    [(INFO, "store.json"), (PLAN, "plan.json"), (MANIFEST, "manifest.json")],
)
def test_record_round_trip(backend, record, key):
    cls = type(record)
    assert read_record(backend, cls) is None
    write_record(backend, record)
    assert list(backend.list()) == [key]
    doc = json.loads(backend.read(key))
    assert doc["format"] == FORMAT == 2 and doc["fingerprint"] == "fp"
    assert read_record(backend, cls) == record
    assert decode_record(cls, key, encode_record(record)) == record


def test_record_defaults():
    raw = json.dumps({"format": 2, "fingerprint": "f", "generation": "g", "splits": {}})
    assert decode_record(Manifest, "manifest.json", raw.encode()).bytes == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"format": 1}', "has another format than 2"),
        (b'{"fingerprint": "fp"}', "has another format than 2"),
        (b'{"format": 2}', "has missing or unknown fields"),
        (
            b'{"format": 2, "fingerprint": "f", "generation": "g", "splits": {}, "x": 1}',
            "has missing or unknown fields",
        ),
        (
            b'{"format": 2, "fingerprint": 1, "generation": "g", "splits": {}}',
            "has a malformed fingerprint or generation",
        ),
    ],
)
def test_bad_record_is_corrupt_naming_its_key(backend, tmp_path, raw, message):
    backend.write("manifest.json", [raw])
    with pytest.raises(CorruptStoreError, match=f"^store record manifest.json {message}") as info:
        read_record(backend, Manifest)
    assert str(tmp_path) not in info.value.message


# the writer --------------------------------------------------------------------------------

GROUPS = [frozenset({"label"}), frozenset({"x", "ids"})]
TENSORS = {
    "label": torch.tensor([1, 0]),
    "x": torch.rand(2, 3),
    "ids": torch.tensor([[4, 5], [6, 0]]),
}
IDS = ["a", "b"]


@pytest.fixture
def writer(backend):
    return BatchWriter(backend, GROUPS, "fp", "g1")


def test_identity_metadata():
    assert identity_metadata("train", 3, "fp", ["a", 2]) == {
        "batchstash.split": "train",
        "batchstash.batch_id": "3",
        "batchstash.fingerprint": "fp",
        "batchstash.data_point_ids": '["a",2]',
    }


def test_writer_writes_every_group_object(writer, backend):
    written = writer.write("train", 3, IDS, TENSORS)
    assert sorted(backend.list()) == [
        "batches/g1/train/3/ids+x.safetensors",
        "batches/g1/train/3/label.safetensors",
    ]
    sizes = [len(backend.read(k)) for k in backend.list()]
    assert written == sum(sizes) == writer.stored_bytes("train", 3, IDS)
    assert writer.key("train", 3, GROUPS[1]) == "batches/g1/train/3/ids+x.safetensors"

    buf = backend.read(writer.key("train", 3, GROUPS[1]))
    header = check_object("k", buf, GROUPS[1], writer.expect("train", 3, IDS), tensors=True)
    assert sorted(header.entries) == ["ids", "x"]
    payload = wire.decode(buf)
    assert payload.split == "train" and payload.batch_id == 3 and payload.fingerprint == "fp"
    assert payload.data_point_ids == IDS
    assert torch.equal(payload.tensors["x"], TENSORS["x"])
    assert torch.equal(payload.tensors["ids"], TENSORS["ids"])
    # equal input gives equal bytes
    writer.write("train", 3, IDS, TENSORS)
    assert backend.read(writer.key("train", 3, GROUPS[1])) == buf


def test_prediction_batch_writes_an_empty_group_object(writer, backend):
    writer.write("train", 3, IDS, {"x": TENSORS["x"], "ids": TENSORS["ids"]})
    buf = backend.read(writer.key("train", 3, GROUPS[0]))
    header = check_object("k", buf, GROUPS[0], writer.expect("train", 3, IDS), tensors=True)
    assert header.entries == {}
    assert wire.decode(buf).data_point_ids == IDS
    assert writer.stored_bytes("train", 3, IDS) is not None


def test_stored_bytes_of_missing_damaged_or_other_batches(writer, backend):
    assert writer.stored_bytes("train", 3, IDS) is None
    writer.write("train", 3, IDS, TENSORS)
    assert writer.stored_bytes("train", 3, ["a", "c"]) is None  # other data points
    assert BatchWriter(backend, GROUPS, "other", "g1").stored_bytes("train", 3, IDS) is None
    key = writer.key("train", 3, GROUPS[0])
    damaged = backend.read(key)
    damaged[-1] ^= 0xFF
    backend.write(key, [damaged])
    assert writer.stored_bytes("train", 3, IDS) is None
    writer.write("train", 3, IDS, TENSORS)
    backend.delete(key)
    assert writer.stored_bytes("train", 3, IDS) is None


def _flip_last(buf):
    return buf[:-1] + bytes([buf[-1] ^ 0xFF])


def _relabel(buf):  # same length, so only the identity checksum can tell
    return bytes(buf).replace(b'"batchstash.split":"train"', b'"batchstash.split":"trail"')


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-3], "header describes"),
        (_flip_last, "tensor 'x' fails its checksum"),
        (lambda b: b"", "too short"),
        (lambda b: b[:8] + b"x" + b[9:], "header is not valid JSON"),
        (_relabel, "identity .* fails its checksum"),
    ],
    ids=["truncated", "flipped", "empty", "header", "relabelled"],
)
def test_check_object_of_damaged_bytes(writer, backend, tmp_path, damage, message):
    writer.write("train", 3, IDS, TENSORS)
    key = writer.key("train", 3, GROUPS[1])
    buf = damage(bytes(backend.read(key)))
    pattern = f"^stored object {re.escape(key)}: .*{message}"
    with pytest.raises(CorruptStoreError, match=pattern) as info:
        check_object(key, buf, GROUPS[1], writer.expect("train", 3, IDS), tensors=True)
    assert str(tmp_path) not in info.value.message


def test_check_object_skips_tensor_checksums_only_when_asked(writer, backend):
    writer.write("train", 3, IDS, TENSORS)
    key = writer.key("train", 3, GROUPS[1])
    buf = _flip_last(bytes(backend.read(key)))
    header = check_object(key, buf, GROUPS[1], writer.expect("train", 3, IDS), tensors=False)
    assert sorted(header.entries) == ["ids", "x"]
    with pytest.raises(CorruptStoreError, match="identity"):
        check_object(key, _relabel(buf), GROUPS[1], {}, tensors=False)


# verified objects --------------------------------------------------------------------------


def test_verified_objects_are_bounded_and_forget_changed_objects():
    known = VerifiedObjects(capacity=2)
    for key in ["k0", "k1", "k2"]:
        known.add(key, f"v-{key}")
    assert len(known) == 2
    assert not known.is_verified("k0", "v-k0")  # least recent, evicted
    assert known.is_verified("k1", "v-k1")  # now the most recent
    known.add("k3", "v-k3")
    assert not known.is_verified("k2", "v-k2")  # k2 was least recently used
    assert known.is_verified("k1", "v-k1") and known.is_verified("k3", "v-k3")

    assert not known.is_verified("k1", "v-changed")
    assert not known.is_verified("k1", "v-k1")  # a mismatch forgets it
    assert len(known) == 1
    known.add("k4", None)  # absent while read: not recorded
    assert not known.is_verified("k4", None) and len(known) == 1
    known.clear()
    assert len(known) == 0 and not known.is_verified("k3", "v-k3")

    headers = VerifiedObjects(capacity=8, header_capacity=2)
    marks = {key: object() for key in ["h0", "h1", "h2"]}
    for key, mark in marks.items():
        headers.add(key, f"v-{key}", mark)  # type: ignore[arg-type]
    assert headers.header("h0", "v-h0") is None  # least recent: its header dropped...
    assert headers.is_verified("h0", "v-h0")  # ...but it is still known as verified
    assert headers.header("h2", "v-h2") is marks["h2"]
    assert headers.header("h2", "v-changed") is None and headers.header("h1", None) is None

    never = VerifiedObjects(capacity=0)
    never.add("k", "v")
    assert len(never) == 0 and not never.is_verified("k", "v")


@pytest.mark.parametrize("url", ["file://data/store", "file://host/abs"])
def test_a_file_url_with_a_host_is_refused(url):
    with pytest.raises(InvalidRequestError, match="absolute path"):
        open_backend(url)


def test_the_writer_refuses_an_unsafe_split(tmp_path):
    writer = BatchWriter(LocalBackend(tmp_path), [frozenset({"x"})], "f" * 32, "g1")
    with pytest.raises(InvalidRequestError, match="split 'a/b' must match"):
        writer.write("a/b", 0, [1], {"x": torch.zeros(1)})
    assert list(LocalBackend(tmp_path).list()) == []


@pytest.mark.parametrize(
    "ids",
    [
        [3, 1, 2],
        ["b", "a", "\u00e9"],
        [["doc", 1], ["doc", 2]],
        [2**70, -(2**65)],  # beyond orjson's 64 bits: json writes them exactly
    ],
)
def test_plan_record_keeps_every_id_exactly(ids):
    plan = Plan("fp", "g", [{"batch_id": 0, "data_point_ids": ids, "split_name": "train"}])
    raw = encode_record(plan)
    assert json.loads(raw) == {"format": FORMAT, **plan.__dict__}
    assert decode_record(Plan, "plan.json", raw) == plan
    assert list(json.loads(raw)) == sorted(json.loads(raw))  # key-sorted


def test_write_unsynced_is_whole_and_visible_at_once_and_sync_flushes(backend, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    backend.write_unsynced("b/c/x.safetensors", [b"abc", memoryview(b"def")])
    assert backend.read("b/c/x.safetensors") == b"abcdef"
    assert _files(backend.root) == ["b/c/x.safetensors"]  # no temp file left
    assert synced == []  # durable at sync(), not per object
    backend.sync()  # really: one syncfs of the store's filesystem
    flushed = []
    monkeypatch.setattr(local, "_syncfs", flushed.append)
    backend.sync()
    assert flushed == [backend.root]  # one filesystem: one syncfs, whatever the directories
    backend.write("rec.json", [b"{}"])
    assert len(synced) == 2  # a record is synced as it is written: the file and its directory


def test_write_unsynced_that_cannot_rename_leaves_no_temp_file(backend, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        backend.write_unsynced("b/x.safetensors", [b"abc"])
    assert _files(backend.root) == []
