"""Split containers (memory, CSV by column, CSV by ratios) and batch plans (id sets)."""

from __future__ import annotations

import csv
import json
import random

import pytest

from batchstash.client import BatchError
from batchstash.service import CsvSplitStashContainer, DataPointIDSet, MemorySplitStashContainer
from batchstash.service.dataset.idset import IntIDs, batch_seed, compact_ids, plan_id_sets


def _write_csv(path, rows, header=("id", "text", "split")):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_memory_container():
    records = {1: {"x": 1}, 2: {"x": 2}, 3: {"x": 3}}
    box = MemorySplitStashContainer(records, {"train": [1, 2], "test": [3]})
    assert box.keys_by_split == {"train": (1, 2), "test": (3,)}
    assert box.split_names == ("test", "train")
    assert box[2] == {"x": 2}
    with pytest.raises(BatchError, match="no data point with id 9"):
        box[9]
    with pytest.raises(BatchError, match=r"split ids without a record: \[4\]"):
        MemorySplitStashContainer(records, {"train": [1, 4]})


def test_memory_fingerprint_tracks_data_and_splits():
    records = {1: {"x": 1}, 2: {"x": 2}}
    base = MemorySplitStashContainer(records, {"train": [1, 2]}).fingerprint()
    assert MemorySplitStashContainer(dict(records), {"train": [1, 2]}).fingerprint() == base
    # the order ids are listed in does not count: the stored plan fixes it once
    assert MemorySplitStashContainer(records, {"train": [2, 1]}).fingerprint() == base
    assert MemorySplitStashContainer(records, {"train": [1], "dev": [2]}).fingerprint() != base
    changed = {1: {"x": 1}, 2: {"x": 3}}
    assert MemorySplitStashContainer(changed, {"train": [1, 2]}).fingerprint() != base


def test_csv_split_column(tmp_path):
    path = _write_csv(
        tmp_path / "d.csv",
        [("a", "one", "train"), ("b", "two", "test"), ("c", "three", "train"), ("d", "4", "dev")],
    )
    box = CsvSplitStashContainer(path, id_column="id")
    assert box.keys_by_split == {"train": ("a", "c"), "test": ("b",), "dev": ("d",)}
    assert box["c"] == {"id": "c", "text": "three", "split": "train"}

    by_row = CsvSplitStashContainer(path)
    assert by_row.keys_by_split["train"] == (0, 2)
    assert by_row[3]["id"] == "d"


def test_csv_errors(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [("a", "x", "train"), ("a", "y", "test")])
    with pytest.raises(BatchError, match="duplicate id 'a' in column 'id'"):
        CsvSplitStashContainer(path, id_column="id")
    with pytest.raises(BatchError, match="no column 'part'"):
        CsvSplitStashContainer(path, split_column="part")
    with pytest.raises(BatchError, match="give a split_column or ratios"):
        CsvSplitStashContainer(path, split_column=None)


@pytest.mark.parametrize(
    "ratios", [{"train": 0.5, "test": 0.4}, {"train": 1.2, "test": -0.2}, {}], ids=str
)
def test_csv_bad_ratios(tmp_path, ratios):
    path = _write_csv(tmp_path / "d.csv", [(str(i), "t", "") for i in range(4)])
    with pytest.raises(BatchError, match="split ratios must be non-negative and sum to 1"):
        CsvSplitStashContainer(path, split_column=None, ratios=ratios)


def test_csv_ratios_deterministic_by_seed(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [(f"r{i:02d}", "t", "") for i in range(40)])
    ratios = {"train": 0.5, "dev": 0.25, "test": 0.25}

    def splits(seed):
        return CsvSplitStashContainer(path, ratios=ratios, seed=seed, id_column="id").keys_by_split

    first = splits(3)
    assert splits(3) == first
    assert splits(4) != first
    assert {k: len(v) for k, v in first.items()} == {"train": 20, "dev": 10, "test": 10}
    ids = [i for v in first.values() for i in v]
    assert sorted(ids) == [f"r{i:02d}" for i in range(40)]  # a partition of every row


def test_id_set_round_trip():
    id_set = DataPointIDSet(3, ("a", "b"), "train", {"seed": 11})
    data = json.loads(json.dumps(id_set.to_dict()))
    assert data == {
        "batch_id": 3,
        "data_point_ids": ["a", "b"],
        "split_name": "train",
        "torch_seed_context": {"seed": 11},
    }
    again = DataPointIDSet.from_dict(data)
    assert again == id_set and again.torch_seed_context == {"seed": 11}


SPLITS = {"train": list(range(10)), "dev": list(range(10, 15)), "test": list(range(15, 22))}


def test_plan_cuts_batches():
    plan = plan_id_sets(SPLITS, batch_size=4, seed=0, batch_limit=100)
    by_split = {}
    for s in plan:
        by_split.setdefault(s.split_name, []).append(s)
    assert [s.split_name for s in plan] == sorted(s.split_name for s in plan)
    assert [len(s.data_point_ids) for s in by_split["train"]] == [4, 4, 2]
    assert [len(s.data_point_ids) for s in by_split["test"]] == [4, 3]
    for split, sets in by_split.items():
        assert [s.batch_id for s in sets] == list(range(len(sets)))
        ids = [i for s in sets for i in s.data_point_ids]
        assert sorted(ids) == SPLITS[split]
        for s in sets:
            assert s.torch_seed_context == {"seed": batch_seed(0, split, s.batch_id)}
    # only train is shuffled
    assert [i for s in by_split["dev"] for i in s.data_point_ids] == SPLITS["dev"]
    assert [i for s in by_split["train"] for i in s.data_point_ids] != SPLITS["train"]


def test_plan_determinism():
    def plan(seed):
        return [(s.to_dict()) for s in plan_id_sets(SPLITS, 4, seed, 100)]

    assert plan(1) == plan(1)
    other = plan(2)
    assert other != plan(1)
    train = [s for s in other if s["split_name"] == "train"]
    assert train != [s for s in plan(1) if s["split_name"] == "train"]
    assert [s for s in other if s["split_name"] == "dev"] != []
    seeds = [s["torch_seed_context"]["seed"] for s in plan(1)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)


def test_plan_of_integer_ids_is_the_list_shuffle_held_compactly():
    # the permutation is random.Random(...).shuffle of a list, as stores primed before keep
    expected = list(range(1000))
    random.Random("5:train").shuffle(expected)
    for keys in (range(1000), list(range(1000)), tuple(range(1000))):
        plan = plan_id_sets({"train": keys}, 256, 5, 100)
        assert all(isinstance(s.data_point_ids, IntIDs) for s in plan)
        assert [i for s in plan for i in s.data_point_ids] == expected
        assert [len(s.data_point_ids) for s in plan] == [256, 256, 256, 232]
    strings = plan_id_sets({"train": [f"r{i}" for i in range(10)]}, 4, 5, 100)
    assert all(isinstance(s.data_point_ids, tuple) for s in strings)


@pytest.mark.parametrize(
    ("ids", "compact"),
    [
        ([1, 2, 3], True),
        (range(5), True),
        ([1, "a"], False),
        ([True, 2], False),  # a bool is an int subclass: kept as it is
        ([2**63], False),  # beyond 64 bits
        ([1.0], False),
        ([], True),
    ],
)
def test_compact_ids(ids, compact):
    got = compact_ids(ids)
    assert isinstance(got, IntIDs) is compact
    assert list(got) == list(ids) and got == tuple(ids) and tuple(ids) == got
    assert hash(got) == hash(tuple(ids))
    id_set = DataPointIDSet(0, got, "train")
    assert DataPointIDSet.from_dict(json.loads(json.dumps(id_set.to_dict()))) == id_set


def test_int_ids_behave_like_a_tuple():
    ids = IntIDs([5, 6, 7, 8])
    assert ids[1] == 6 and ids[-1] == 8 and ids[1:3] == IntIDs([6, 7]) == (6, 7)
    assert 7 in ids and ids.index(7) == 2 and repr(ids) == "(5, 6, 7, 8)"
    assert ids != (5, 6, 7) and ids != IntIDs([5, 6, 7, 9]) and ids != "5678"
    assert {ids: 1}[IntIDs([5, 6, 7, 8])] == 1


@pytest.mark.parametrize(("limit", "count"), [(1, 3), (2, 6), (100, 7)])
def test_plan_batch_limit(limit, count):
    plan = plan_id_sets(SPLITS, 4, 0, limit)
    assert len(plan) == count
    assert max(s.batch_id for s in plan) == min(limit, 3) - 1
