"""The batch stash: fields, plans, prime -> load, lifecycle, resume, corruption and staleness."""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from batchstash.client import (
    Batch,
    BatchError,
    BatchFeatureMapping,
    ChecksumError,
    ConfigBatchFeatureMapping,
    ConflictError,
    CorruptStoreError,
    FieldFeatureMapping,
    InvalidRequestError,
    ManagerFeatureMapping,
    MetadataNetworkSettings,
    NotFoundError,
    NotPrimedError,
    StaleStoreError,
    TorchConfig,
    wire,
)
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    CsvSplitStashContainer,
    DataPoint,
    DefaultBatch,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    SeriesFeatureVectorizer,
    load_factory,
)
from batchstash.service.encode import seeded
from batchstash.service.examples import IRIS_CLASSES, IRIS_MAPPINGS, IrisDataPoint, data_file
from batchstash.service.store.local import LocalBackend

from .factories import iris_rows, stored_files, stored_object

ROWS = iris_rows()
IRIS_COLUMNS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def expected_iris(ids):
    """The iris tensors of ``ids`` computed from the CSV alone."""
    rows = [ROWS[i] for i in ids]
    return {
        "label": torch.tensor([IRIS_CLASSES.index(r["species"]) for r in rows]),
        "flower_dims": torch.tensor([[float(r[c]) for c in IRIS_COLUMNS] for r in rows]),
    }


@pytest.fixture
def primed(make_iris):
    stash = make_iris()
    assert stash.prime() == 9
    return stash


def test_stash_fields(make_iris):
    stash = make_iris(
        batch_size=7,
        workers=2,
        chunk_size=3,
        batch_limit=4,
        decoded_attributes=["label"],
        model_torch_config=TorchConfig("cpu"),
    )
    assert (stash.batch_size, stash.workers, stash.chunk_size, stash.batch_limit) == (7, 2, 3, 4)
    assert stash.decoded_attributes == {"label"}
    assert stash.model_torch_config == TorchConfig("cpu", "float32")
    assert stash.batch_feature_mappings is IRIS_MAPPINGS
    assert stash.data_point_type is IrisDataPoint and stash.batch_type is DefaultBatch
    assert stash.label_vectorizer_manager.name == "iris_vectorizer_manager"
    assert make_iris().decoded_attributes is None


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"workers": -1}, {"chunk_size": -1}, {"batch_limit": 0}],
    ids=str,
)
def test_stash_bad_numbers(make_iris, kwargs):
    with pytest.raises(BatchError, match="batch_size and batch_limit must be >= 1"):
        make_iris(**kwargs)


def test_stash_unknown_decoded_attribute(make_iris):
    with pytest.raises(InvalidRequestError, match=r"unknown attributes \['petals'\]"):
        make_iris(decoded_attributes=["petals", "label"])


def test_stash_missing_vectorizer(tmp_path):
    box = MemorySplitStashContainer({1: {}}, {"train": [1]})
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager", [SeriesFeatureVectorizer("iseries")]
    )
    with pytest.raises(BatchError, match="has no vectorizer 'ilabel'"):
        BatchStash(tmp_path, box, [manager], IRIS_MAPPINGS, IrisDataPoint)


@pytest.mark.parametrize("split", ["../x", "a/b", ".."])
def test_unsafe_split_name_is_refused(tmp_path, split):
    box = MemorySplitStashContainer({"1": {"species": "setosa"}}, {split: ["1"]})
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
            SeriesFeatureVectorizer("iseries", dims=4),
        ],
    )
    with pytest.raises(InvalidRequestError, match="must match"):
        BatchStash(tmp_path / "s", box, [manager], IRIS_MAPPINGS, IrisDataPoint)
    assert list(tmp_path.iterdir()) == []


def test_batch_metadata(make_iris):
    meta = make_iris().batch_metadata
    assert meta.data_point_class == "batchstash.service.examples.IrisDataPoint"
    assert meta.batch_class == "batchstash.service.dataset.batch.DefaultBatch"
    assert meta.label_classes == IRIS_CLASSES
    assert meta.fields_by_attribute["flower_dims"].shape == (4,)
    assert meta.fields_by_attribute["label"].dtype == "int64"
    net = MetadataNetworkSettings(meta)
    assert net.input_width(["flower_dims"]) == 4
    assert net.num_labels == 3


def test_text_metadata_vocab_size(make_text):
    with data_file("topics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    vocab = {t for r in rows if r["split"] == "train" for t in r["text"].split()}
    net = MetadataNetworkSettings(make_text().batch_metadata)
    assert net.vocab_size("tokens") == len(vocab) + 2
    assert net.num_labels == len({r["topic"] for r in rows})
    with pytest.raises(BatchError, match="variable width"):
        net.input_width(["tokens"])


def test_iris_plan(make_iris):
    stash = make_iris()
    sets = stash.batch_data_point_sets
    sizes = {}
    for s in sets:
        sizes.setdefault(s.split_name, []).append(len(s.data_point_ids))
    assert sizes == {"dev": [15], "test": [20, 10], "train": [20] * 5 + [5]}
    all_ids = sorted((i for s in sets for i in s.data_point_ids), key=int)
    assert all_ids == sorted(ROWS, key=int)
    assert stash.keys("train") == [0, 1, 2, 3, 4, 5]
    with pytest.raises(NotFoundError, match="unknown split 'nope'"):
        stash.keys("nope")


def test_prime_then_load_equals_direct_vectorizing(primed):
    assert primed.is_primed
    for split, n in [("train", 6), ("dev", 1), ("test", 2)]:
        for batch_id in range(n):
            batch = primed.load(split, batch_id)
            ids = [
                s
                for s in primed.batch_data_point_sets
                if (s.split_name, s.batch_id) == (split, batch_id)
            ][0].data_point_ids
            assert batch.data_point_ids == ids
            assert (batch.split_name, batch.id, batch.state_name) == (split, batch_id, "decoded")
            expected = expected_iris(ids)
            assert set(batch.attributes) == set(expected)
            for name, tensor in expected.items():
                assert batch[name].dtype == tensor.dtype
                assert torch.equal(batch[name], tensor), (split, batch_id, name)
            assert batch.get_label_classes() == [ROWS[i]["species"] for i in ids]
    assert primed.prime() == 0  # nothing left to do


def test_text_prime_pads_to_longest(make_text):
    stash = make_text(batch_size=16, max_length=32)
    stash.prime()
    with data_file("topics.csv").open(newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    vocab = sorted({t for r in rows.values() if r["split"] == "train" for t in r["text"].split()})
    index = {t: i + 2 for i, t in enumerate(vocab)}
    topics = sorted({r["topic"] for r in rows.values()})
    for split in ("dev", "train"):
        batch = stash.load(split, 1)
        tokens = [rows[i]["text"].split()[:32] for i in batch.data_point_ids]
        longest = max(len(t) for t in tokens)
        assert batch["tokens"].shape == (len(tokens), longest)
        for row, toks in zip(batch["tokens"].tolist(), tokens, strict=True):
            assert row == [index.get(t, 1) for t in toks] + [0] * (longest - len(toks))
        assert batch["lengths"].tolist() == [len(t) for t in tokens]
        assert batch["label"].tolist() == [
            topics.index(rows[i]["topic"]) for i in batch.data_point_ids
        ]


def test_batch_lifecycle(primed):
    id_set = primed.batch_data_point_sets[0]
    points = primed.data_points(id_set)
    batch = primed.create_batch(points, id_set.split_name, id_set.batch_id)

    assert isinstance(batch, DefaultBatch)
    assert (batch.state, batch.state_name) == ("n", "nascent")
    assert batch.data_points == tuple(points) and batch.has_labels
    assert batch.batch_stash is primed

    batch.encode()
    assert batch.state_name == "encoded"
    assert batch.data_points is None
    assert len(batch) == len(points)
    with pytest.raises(BatchError, match="is encoded, not nascent"):
        batch.encode()

    loaded = primed.load(id_set.split_name, id_set.batch_id)
    assert loaded.state_name == "decoded"
    assert type(loaded) is DefaultBatch and loaded.batch_stash is primed
    for name in ("label", "flower_dims"):
        assert torch.equal(loaded[name], batch[name])
    assert loaded.mapping == primed.batch_feature_mappings and loaded.has_labels

    copied = loaded.to("cpu")
    assert (copied.state_name, loaded.state_name) == ("memory copied", "decoded")
    # already on the CPU: no copy, the memory-copied batch shares the decoded tensors
    assert copied["flower_dims"].data_ptr() == loaded["flower_dims"].data_ptr()
    assert torch.equal(copied["flower_dims"], batch["flower_dims"])

    assert "_data_points" in loaded.__dict__ and loaded.__dict__["_data_points"] is None  # lazy
    assert loaded.data_points == tuple(points) and copied.data_points == tuple(points)
    assert all(p.batch_stash is primed for p in loaded.data_points)

    loaded.deallocate()
    assert loaded.state_name == "deallocated" and loaded.attributes == {}
    assert loaded.data_points is None
    assert copied["label"].shape == (len(points),)


def test_create_batch_defaults(primed):
    batch = primed.create_batch(primed.data_points(primed.batch_data_point_sets[0]))
    assert (batch.id, batch.split_name) == (-1, "")
    with pytest.raises(BatchError, match="has no data points"):
        primed.create_batch([], "train", 0).encode()


def _points(stash, species):
    return [
        IrisDataPoint(str(i), stash, {**ROWS[str(i)], "species": s})
        for i, s in zip(range(3), species, strict=True)
    ]


def test_prediction_batch_skips_label(make_iris):
    stash = make_iris()
    batch = stash.create_batch(_points(stash, ["", "", ""]), "train", 0)
    assert not batch.has_labels
    batch.encode()
    assert list(batch.attributes) == ["flower_dims"]
    assert torch.equal(batch["flower_dims"], expected_iris(["0", "1", "2"])["flower_dims"])
    # one missing label makes the whole batch a prediction batch
    assert not stash.create_batch(_points(stash, ["setosa", "", "setosa"])).has_labels


def test_prediction_batch_skips_is_label_fields(make_iris):
    mapping = BatchFeatureMapping(
        "label",
        [
            ManagerFeatureMapping(
                "iris_vectorizer_manager",
                (
                    FieldFeatureMapping("label", "ilabel"),
                    FieldFeatureMapping("gold", "ilabel", is_label=True, attr_access="label"),
                    FieldFeatureMapping("flower_dims", "iseries"),
                ),
            )
        ],
    )
    stash = make_iris(mappings=mapping)
    labelled = stash.create_batch(_points(stash, ["setosa", "virginica", "setosa"]))
    labelled.encode()
    assert sorted(labelled.attributes) == ["flower_dims", "gold", "label"]
    assert labelled["gold"].tolist() == [0, 2, 0]
    unlabelled = stash.create_batch(_points(stash, ["", "", ""]))
    unlabelled.encode()
    assert list(unlabelled.attributes) == ["flower_dims"]


def test_default_batch_with_its_own_mappings(make_iris):
    stash = make_iris()
    own = BatchFeatureMapping(
        None,
        [
            ManagerFeatureMapping(
                "iris_vectorizer_manager",
                (FieldFeatureMapping("dims", "iseries", attr_access="flower_dims"),),
            )
        ],
    )
    batch = DefaultBatch(stash, 5, "dev", _points(stash, ["setosa"] * 3), own)
    assert batch.mapping is own and not batch.has_labels
    batch.encode()
    assert list(batch.attributes) == ["dims"]
    assert torch.equal(batch["dims"], expected_iris(["0", "1", "2"])["flower_dims"])


class FlowerBatch(DefaultBatch):
    @property
    def species(self):
        return [p.label for p in self.data_points]


def test_load_builds_the_stash_batch_type_with_its_data_points(make_iris):
    stash = make_iris(batch_type=FlowerBatch)
    stash.prime()
    batch = stash.load("dev", 0)
    assert type(batch) is FlowerBatch and batch.batch_stash is stash
    assert batch.species == batch.get_label_classes()
    assert [p.id for p in batch.data_points] == list(batch.data_point_ids)
    copied = batch.to("cpu")
    assert type(copied) is FlowerBatch and copied.species == batch.species
    assert type(stash.load("dev", 0, ["label"])) is FlowerBatch
    assert stash.get("dev", 99) is None


def test_label_vectorizer_of_a_batch(primed):
    batch = primed.load("test", 1)
    vec = batch.get_label_feature_vectorizer()
    assert (vec.feature_id, vec.classes) == ("ilabel", IRIS_CLASSES)
    assert len(batch.get_label_classes()) == 10


def test_batch_write(primed):
    out = io.StringIO()
    primed.load("test", 1).write(writer=out)
    assert out.getvalue().splitlines() == [
        "DefaultBatch: id=1, split=test, size=10, state=decoded",
        "  label: shape=(10,), dtype=torch.int64, device=cpu",
        "  flower_dims: shape=(10, 4), dtype=torch.float32, device=cpu",
    ]
    nascent = primed.create_batch(_points(primed, ["setosa"] * 3), "dev", 2)
    out = io.StringIO()
    nascent.write(writer=out, include_data_points=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "DefaultBatch: id=2, split=dev, size=3, state=nascent"
    assert lines[1] == "  data points:"
    assert lines[2].startswith("    IrisDataPoint(id='0', row={'id': '0', 'sepal_length': '5.1'")


def test_data_point():
    @dataclass
    class Point(DataPoint):
        text: str

    point = Point(4, object(), "hi")
    assert point == Point(4, None, "hi")  # the stash is neither compared nor shown
    out = io.StringIO()
    point.write(depth=2, writer=out)
    assert out.getvalue() == "    test_data_point.<locals>.Point(id=4, text='hi')\n"


def test_same_seed_same_bytes(make_iris):
    first, second, other = make_iris("a", seed=5), make_iris("b", seed=5), make_iris("c", seed=6)
    for stash in (first, second, other):
        stash.prime()
    files = stored_files(first.path)
    assert len(files) == 18  # 9 batches x 2 groups
    assert stored_files(second.path) == files
    first_plan = json.loads((Path(first.path) / "plan.json").read_text())
    second_plan = json.loads((Path(second.path) / "plan.json").read_text())
    assert first_plan["id_sets"] == second_plan["id_sets"]
    assert first_plan["fingerprint"] == second_plan["fingerprint"]
    changed = stored_files(other.path)
    assert changed.keys() == files.keys()
    train = [k for k in files if k.startswith("train/")]
    assert all(changed[k] != files[k] for k in train)


def test_batch_limit(make_iris):
    stash = make_iris(batch_limit=1)
    assert stash.prime() == 3
    assert sorted(stored_files(stash.path)) == [
        f"{s}/0/{g}.safetensors" for s in ("dev", "test", "train") for g in ("flower_dims", "label")
    ]
    assert stash.keys("train") == [0]
    with pytest.raises(NotFoundError, match="split 'train' has no batch 1"):
        stash.load("train", 1)


def test_decoded_attributes_read_only_their_groups(make_iris, monkeypatch):
    make_iris().prime()
    stash = make_iris(decoded_attributes=["flower_dims"])
    label_file = stored_object(stash.path, "train", 2, "label")
    label_file.write_bytes(b"garbage")
    read = []
    real_read = LocalBackend.read

    def spy(self, key):
        read.append(key.rsplit("/", 1)[-1])
        return real_read(self, key)

    monkeypatch.setattr(LocalBackend, "read", spy)
    batch = stash.load("train", 2)
    assert list(batch.attributes) == ["flower_dims"]
    assert [r for r in read if r.endswith(".safetensors")] == ["flower_dims.safetensors"]
    assert torch.equal(batch["flower_dims"], expected_iris(batch.data_point_ids)["flower_dims"])
    with pytest.raises(CorruptStoreError, match="label.safetensors"):
        stash.load("train", 2, ["label"])
    label_file.unlink()
    assert list(stash.load("train", 2).attributes) == ["flower_dims"]
    with pytest.raises(NotPrimedError, match="batch train/2 is not encoded yet"):
        stash.load("train", 2, ["label", "flower_dims"])
    with pytest.raises(InvalidRequestError, match="unknown attributes"):
        stash.load("train", 2, ["nope"])


def test_payload_is_composed_from_stored_bytes(primed):
    payload = b"".join(bytes(c) for c in primed.payload("dev", 0, ["label"]))
    decoded = wire.decode(payload)
    assert list(decoded.tensors) == ["label"]
    assert decoded.split == "dev" and decoded.batch_id == 0
    assert decoded.fingerprint == primed.config_hash
    assert torch.equal(decoded.tensors["label"], primed.load("dev", 0)["label"])
    full = wire.decode(b"".join(bytes(c) for c in primed.payload("dev", 0)))
    assert sorted(full.tensors) == ["flower_dims", "label"]


@pytest.mark.parametrize(
    ("edit", "files"),
    [
        ({"field_keep": frozenset({"flower_dims"})}, ["flower_dims.safetensors"]),
        ({"field_remove": frozenset({"flower_dims"})}, ["label.safetensors"]),
        ({}, ["flower_dims.safetensors", "label.safetensors"]),
    ],
    ids=["keep", "remove", "none"],
)
def test_field_edits_change_what_is_stored(make_iris, edit, files):
    mapping = ConfigBatchFeatureMapping("label", IRIS_MAPPINGS.manager_mappings, **edit)
    stash = make_iris(mappings=mapping)
    stash.prime()
    assert sorted(os.listdir(stored_object(stash.path, "train", 0, files[0][:-12]).parent)) == files
    batch = stash.load("train", 0)
    assert sorted(f"{a}.safetensors" for a in batch.attributes) == files


@pytest.mark.parametrize(
    ("edit", "groups", "files"),
    [
        (
            {"field_remove": frozenset({"flower_dims"})},
            [["label", "flower_dims"]],
            ["label.safetensors"],
        ),
        ({"field_keep": frozenset({"label"})}, [["flower_dims"]], ["label.safetensors"]),
    ],
    ids=["pruned", "emptied"],
)
def test_groups_drop_what_field_edits_dropped(make_iris, edit, groups, files):
    mapping = ConfigBatchFeatureMapping("label", IRIS_MAPPINGS.manager_mappings, **edit)
    stash = make_iris(mappings=mapping, groups=groups)
    assert stash.groups == (frozenset({"label"}),)
    stash.prime()
    assert os.listdir(stored_object(stash.path, "dev", 0, "label").parent) == files
    with pytest.raises(BatchError, match=r"\['nope'\] not mapped"):
        make_iris(mappings=mapping, groups=[["label", "nope"]])


def test_groups_store_attributes_together(make_iris):
    stash = make_iris(groups=[["label", "flower_dims"]])
    stash.prime()
    group = stored_object(stash.path, "dev", 0, "flower_dims+label")
    assert os.listdir(group.parent) == ["flower_dims+label.safetensors"]
    assert sorted(stash.load("dev", 0, ["label"]).attributes) == ["label"]
    with pytest.raises(BatchError, match="groups must be disjoint"):
        make_iris(groups=[["label"], ["label", "flower_dims"]])


def test_resumed_prime_re_encodes_only_damaged_batches(primed, make_iris):
    before = stored_files(primed.path)
    stored_object(primed.path, "train", 1, "label").unlink()
    stored_object(primed.path, "test", 0, "flower_dims").unlink()
    truncated = stored_object(primed.path, "train", 4, "flower_dims")
    truncated.write_bytes(truncated.read_bytes()[:-7])
    (Path(primed.path) / "manifest.json").unlink()
    untouched = stored_object(primed.path, "dev", 0, "label")
    mtime = untouched.stat().st_mtime_ns

    fresh = make_iris()  # a new process would rebuild the stash
    assert not fresh.is_primed
    # counts come from the records (what the last prime stored), never from walking the batches
    assert fresh.split_counts()["train"] == {"batches": 6, "data_points": 105, "stored": 6}
    assert fresh.prime() == 3

    assert fresh.is_primed
    assert stored_files(fresh.path) == before
    assert untouched.stat().st_mtime_ns == mtime
    assert fresh.prime() == 0


def test_flipped_byte_is_detected_and_repaired(primed):
    path = stored_object(primed.path, "train", 3, "flower_dims")
    good = path.read_bytes()
    bad = bytearray(good)
    bad[-2] ^= 0x10
    path.write_bytes(bad)

    with pytest.raises(CorruptStoreError, match="fails its checksum"):
        primed.load("train", 3)
    assert torch.equal(
        primed.load("train", 3, ["label"])["label"],
        expected_iris(primed.load("train", 3, ["label"]).data_point_ids)["label"],
    )
    assert primed.prime() == 1
    assert path.read_bytes() == good
    assert primed.load("train", 3)["flower_dims"].shape == (20, 4)


def _changed_vectorizer_stash(path):
    box = CsvSplitStashContainer(
        data_file("iris.csv"),
        split_column=None,
        ratios={"train": 0.7, "dev": 0.1, "test": 0.2},
        seed=0,
        id_column="id",
    )
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES[::-1]),
            SeriesFeatureVectorizer("iseries", dims=4),
        ],
    )
    return BatchStash(path, box, [manager], IRIS_MAPPINGS, IrisDataPoint, batch_size=20)


@pytest.mark.parametrize("change", ["mapping", "vectorizer", "batch_size"])
def test_changed_config_makes_store_stale(primed, make_iris, change):
    if change == "mapping":
        stash = make_iris(
            mappings=ConfigBatchFeatureMapping(
                "label", IRIS_MAPPINGS.manager_mappings, field_remove=frozenset({"flower_dims"})
            )
        )
    elif change == "vectorizer":
        stash = _changed_vectorizer_stash(primed.path)
    else:
        stash = make_iris(batch_size=21)
    assert stash.path == primed.path
    assert stash.config_hash != primed.config_hash
    assert stash.is_stale and not stash.is_primed

    with pytest.raises(StaleStoreError, match="was encoded with configuration"):
        stash.load("train", 0)
    with pytest.raises(StaleStoreError, match="clear it"):
        stash.prime()
    assert stash.split_counts()["train"]["stored"] == 0

    stash.clear_all()
    assert stash.prime() == len(stash.batch_data_point_sets)
    assert stash.is_primed and not stash.is_stale
    assert primed.is_stale


def test_changed_data_makes_store_stale(primed, tmp_path):
    records = {k: dict(v) for k, v in ROWS.items()}
    records["0"]["sepal_length"] = "9.9"
    plan = primed.split_stash_container.keys_by_split
    stash = BatchStash(
        primed.path,
        MemorySplitStashContainer(records, plan),
        primed.vectorizer_manager_set,
        IRIS_MAPPINGS,
        IrisDataPoint,
        batch_size=20,
    )
    with pytest.raises(StaleStoreError):
        stash.load("dev", 0)


def test_load_and_get_errors(make_iris):
    stash = make_iris()
    with pytest.raises(NotPrimedError, match="the store has no batches yet"):
        stash.load("dev", 0)
    assert stash.get("dev", 0) is None
    assert stash.get("dev", 0, "x") == "x"
    stash.prime()
    assert isinstance(stash.get("dev", 0), Batch)
    assert stash.get("dev", 9, "missing") == "missing"
    assert stash.get("nope", 0, "missing") == "missing"
    with pytest.raises(
        NotFoundError, match="unknown split 'nope'; splits: \\['dev', 'test', 'train'\\]"
    ):
        stash.load("nope", 0)


def test_clear_all(primed):
    root = Path(primed.path)
    records = {"plan.json", "store.json", "manifest.json"}
    assert {p.name for p in root.iterdir()} == {"batches", "ledger", "job.json", ".lock", *records}
    primed.clear_all()
    assert {p.name for p in root.iterdir()} == {"job.json", ".lock"}  # the clear's job record
    assert json.loads((root / "job.json").read_text())["kind"] == "clear"
    assert not primed.is_primed
    assert primed.split_stash_container["0"]["species"] == "setosa"  # source data is kept
    assert primed.split_counts()["dev"] == {"batches": 1, "data_points": 15, "stored": 0}
    assert primed.prime() == 9


def test_prime_and_clear_conflict_while_priming(make_iris):
    stash = make_iris(batch_limit=1)
    seen = []

    def progress(split, done, total):
        if not seen:
            with pytest.raises(ConflictError, match="a prime is already running"):
                stash.prime()
            with pytest.raises(ConflictError, match=r"a prime \(job \w+\) is running"):
                stash.clear_all()
            seen.append(stash.is_priming)

    assert stash.prime(progress) == 3
    assert seen == [True] and not stash.is_priming


def test_workers_need_a_factory(make_iris):
    with pytest.raises(
        BatchError, match=r"workers=2 needs a stash built with BatchStash.from_factory"
    ):
        make_iris(workers=2).prime()


def test_from_factory(tmp_path):
    stash = BatchStash.from_factory(
        "batchstash.service.examples:iris", path=str(tmp_path / "f"), batch_size=50
    )
    assert stash.factory == "batchstash.service.examples:iris"
    assert stash.factory_kwargs == {"path": str(tmp_path / "f"), "batch_size": 50}
    assert stash.batch_size == 50


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like 'package.module:function'"),
        ("batchstash.nope:iris", "cannot import dataset factory"),
        ("batchstash.service.examples:nope", "cannot import dataset factory"),
        ("batchstash.service.examples:IRIS_CLASSES", "is not callable"),
    ],
)
def test_load_factory_errors(spec, message):
    with pytest.raises(BatchError, match=message):
        load_factory(spec)


def test_factory_must_return_a_stash():
    with pytest.raises(BatchError, match="returned IrisDataPoint, not a BatchStash"):
        BatchStash.from_factory(
            "batchstash.service.examples:IrisDataPoint", id=1, batch_stash=None, row={}
        )


def test_stash_write(primed):
    out = io.StringIO()
    primed.write(writer=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"BatchStash: {primed.path} (config {primed.config_hash[:12]}")
    assert lines[1:] == [
        "  dev: 1/1 batches stored, 15 data points",
        "  test: 2/2 batches stored, 30 data points",
        "  train: 6/6 batches stored, 105 data points",
    ]


def test_served_payload_corrupted_in_place_is_caught_by_the_client_checksums(primed):
    first = b"".join(bytes(c) for c in primed.payload("dev", 0))
    assert wire.decode(bytearray(first)).tensors
    path = stored_object(primed.path, "dev", 0, "flower_dims")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError):  # written in place: its ctime moved, verified again
        primed.payload("dev", 0)
    # a byte rotting on disk changes no time: the server's memory of verified files cannot see
    # it (simulated by recording the file as it is now), but the checksums travel with the payload
    key = str(path.relative_to(primed.path))
    primed.reader.verified.add(key, primed.backend.version(key))
    served = b"".join(bytes(c) for c in primed.payload("dev", 0))
    with pytest.raises(ChecksumError):
        wire.decode(bytearray(served))
    with pytest.raises(CorruptStoreError):  # loading in process verifies every time
        primed.load("dev", 0)


def _draws() -> tuple[list[float], float, float]:
    return torch.rand(3).tolist(), random.random(), float(np.random.random())


def test_seeded_draws_depend_on_the_seed_alone_and_restore_the_generators():
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    with seeded(2**62 + 11):
        first = _draws()
    after = _draws()
    _draws()  # another history before the same seed
    with seeded(2**62 + 11):
        again = _draws()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert _draws() == after  # the global generators went on as if never seeded
    torch.manual_seed(2**62 + 11)  # the bytes of torch.manual_seed's stores, unchanged
    random.seed(2**62 + 11)
    np.random.seed((2**62 + 11) % 2**32)
    assert first == again == _draws()
