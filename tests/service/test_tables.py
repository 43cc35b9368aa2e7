"""Containers over tables in memory: a DataFrame, arrays (numpy, torch, ``.npy``) and records."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from batchstash.client import BatchError
from batchstash.service import (
    ArraySplitStashContainer,
    DataFrameSplitStashContainer,
    MemorySplitStashContainer,
)

N = 12
SPLIT = np.array(["test" if i % 4 == 3 else "dev" if i % 4 == 2 else "train" for i in range(N)])
BY_COLUMN = {
    "train": [i for i in range(N) if i % 4 < 2],
    "dev": [i for i in range(N) if i % 4 == 2],
    "test": [i for i in range(N) if i % 4 == 3],
}
KINDS = ["frame", "numpy", "torch", "npy", "records"]
COLUMNED = ["frame", "numpy", "torch", "npy"]  # the kinds that take columns=
_dirs = itertools.count()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Digests of ``.npy`` files go to this test's cache, never the user's."""
    monkeypatch.setenv("BATCHSTASH_CACHE_DIR", str(tmp_path / "cache"))
    yield


def columns(**changes: Any) -> dict[str, np.ndarray]:
    """The test table: ``x`` floats, ``label`` ints, ``name`` strings and ``split``."""
    table = {
        "x": np.arange(N, dtype=np.float64) * 1.5,
        "label": np.arange(N, dtype=np.int64) % 3,
        "name": np.array([f"n{i}" for i in range(N)]),
        "split": SPLIT.copy(),
    }
    table.update({k: np.asarray(v) for k, v in changes.items()})
    return table


def build(kind: str, table: dict[str, np.ndarray], where: Path, **options: Any) -> Any:
    """A container of ``kind`` over ``table`` (the split column ``split`` unless told)."""
    options.setdefault("split_column", "split")
    if kind == "frame":
        return DataFrameSplitStashContainer(pd.DataFrame(table), **options)
    if kind == "numpy":
        return ArraySplitStashContainer(table, **options)
    if kind == "torch":
        tensors = {k: torch.from_numpy(v) if v.dtype.kind in "iuf" else v for k, v in table.items()}
        return ArraySplitStashContainer(tensors, **options)
    if kind == "npy":
        folder = where / f"npy{next(_dirs)}"
        folder.mkdir()
        for name, values in table.items():
            np.save(folder / f"{name}.npy", values)
        return ArraySplitStashContainer.open(folder, **options)
    assert kind == "records"
    records = [dict(zip(table, row, strict=True)) for row in zip(*table.values(), strict=True)]
    return MemorySplitStashContainer(records, **options)


def plain(value: Any) -> Any:
    """A row's value as a Python value, whatever the container holds it as."""
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return value


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in row.items()}


def source_row(table: dict[str, np.ndarray], row: int, names: Any = None) -> dict[str, Any]:
    return {k: table[k][row].item() for k in names or table}


def as_lists(splits: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: list(ids) for name, ids in splits.items()}


# splits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_splits_from_a_column(kind: str, tmp_path: Path) -> None:
    box = build(kind, columns(), tmp_path)
    assert as_lists(box.keys_by_split) == BY_COLUMN
    assert box.split_names == ("dev", "test", "train")


@pytest.mark.parametrize("kind", KINDS)
def test_splits_from_given_ids_leave_the_other_rows_out(kind: str, tmp_path: Path) -> None:
    box = build(kind, columns(), tmp_path, splits={"train": [5, 1, 7], "test": [0]})
    assert as_lists(box.keys_by_split) == {"train": [5, 1, 7], "test": [0]}
    assert plain(box[7]["x"]) == 10.5


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_ratios_cut_every_id_once(kind: str, tmp_path: Path) -> None:
    ratios = {"train": 0.5, "dev": 0.25, "test": 0.25}

    def cut(seed: int) -> dict[str, list[Any]]:
        return as_lists(build(kind, columns(), tmp_path, ratios=ratios, seed=seed).keys_by_split)

    first = cut(1)
    assert {k: len(v) for k, v in first.items()} == {"train": 6, "dev": 3, "test": 3}
    assert sorted(i for ids in first.values() for i in ids) == list(range(N))
    assert cut(1) == first
    assert cut(2) != first
    assert first != {"train": list(range(6)), "dev": [6, 7, 8], "test": [9, 10, 11]}  # shuffled


@pytest.mark.parametrize("kind", KINDS)
def test_an_id_in_two_splits_is_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="id 3 is listed in more than one split"):
        build(kind, columns(), tmp_path, splits={"train": [1, 3], "test": [3]})


@pytest.mark.parametrize("kind", KINDS)
def test_an_id_no_row_has_is_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"\b99\b"):
        build(kind, columns(), tmp_path, splits={"train": [1, 99]})


def test_records_refuse_an_id_listed_twice_in_one_split() -> None:
    with pytest.raises(BatchError, match="id 'b' is listed twice in split 'train'"):
        MemorySplitStashContainer({"a": 1, "b": 2}, {"train": ["a", "b", "b"]})


@pytest.mark.parametrize("kind", KINDS)
def test_no_split_rule_is_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="give split_column=, splits= or ratios="):
        build(kind, columns(), tmp_path, split_column=None)


@pytest.mark.parametrize("kind", KINDS)
def test_splits_and_ratios_together_are_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="give splits= or ratios=, not both"):
        build(kind, columns(), tmp_path, splits={"train": [0]}, ratios={"train": 1.0})


@pytest.mark.parametrize("kind", COLUMNED)
def test_a_missing_split_column_names_the_columns(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"no split column 'fold' \(columns: .*label.*name"):
        build(kind, columns(), tmp_path, split_column="fold")


@pytest.mark.parametrize("kind", ["frame", "numpy", "records"])
def test_split_names_must_be_strings(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="split names are strings"):
        build(kind, columns(), tmp_path, split_column="label")


# ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_integer_ids_from_a_column_are_python_ints(kind: str, tmp_path: Path) -> None:
    table = columns(key=np.arange(N, dtype=np.int64) * 10 + 7)
    box = build(kind, table, tmp_path, id_column="key")
    assert as_lists(box.keys_by_split) == {
        name: [i * 10 + 7 for i in ids] for name, ids in BY_COLUMN.items()
    }
    assert {type(i) for ids in box.keys_by_split.values() for i in ids} == {int}
    assert plain_row(box[37]) == source_row(table, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_string_ids_from_a_column(kind: str, tmp_path: Path) -> None:
    box = build(kind, columns(), tmp_path, id_column="name", splits={"train": ["n4", "n0"]})
    assert as_lists(box.keys_by_split) == {"train": ["n4", "n0"]}
    assert {type(i) for i in box.keys_by_split["train"]} == {str}
    assert plain(box["n4"]["x"]) == 6.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_duplicate_id_is_refused_by_name(kind: str, tmp_path: Path) -> None:
    keys = np.arange(N, dtype=np.int64)
    keys[9] = 4
    with pytest.raises(BatchError, match="duplicate id 4"):
        build(kind, columns(key=keys), tmp_path, id_column="key")


@pytest.mark.parametrize("kind", KINDS)
def test_float_ids_are_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"ids must be integers or strings, not (numpy\.)?float"):
        build(kind, columns(), tmp_path, id_column="x")


@pytest.mark.parametrize("kind", COLUMNED)
def test_a_missing_id_column_names_the_columns(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"no id column 'key' \(columns: ") as info:
        build(kind, columns(), tmp_path, id_column="key")
    listed = info.value.message.split("(columns: ")[1].rstrip(")").split(", ")
    assert sorted(listed) == ["label", "name", "split", "x"]


@pytest.mark.parametrize("kind", ["frame", "numpy", "npy"])
def test_reading_an_unknown_id_names_it(kind: str, tmp_path: Path) -> None:
    box = build(kind, columns(), tmp_path)
    with pytest.raises(BatchError, match="no data point with id 12"):
        box.get_many([0, 12])
    with pytest.raises(BatchError, match="no data point with id 'n1'"):
        box["n1"]


def test_a_dataframe_index_gives_the_ids() -> None:
    table = columns()
    labels = [f"r{i}" for i in range(N)]
    frame = pd.DataFrame(table, index=labels)
    box = DataFrameSplitStashContainer(frame)
    assert as_lists(box.keys_by_split) == {
        name: [labels[i] for i in ids] for name, ids in BY_COLUMN.items()
    }
    assert plain_row(box["r5"]) == source_row(table, 5)

    shifted = DataFrameSplitStashContainer(pd.DataFrame(table, index=pd.RangeIndex(100, 100 + N)))
    assert shifted.keys_by_split["dev"] == [102, 106, 110]
    assert plain_row(shifted[110]) == source_row(table, 10)
    with pytest.raises(BatchError, match="no data point with id 10"):
        shifted[10]

    with pytest.raises(BatchError, match="index: duplicate id 'r1'"):
        DataFrameSplitStashContainer(pd.DataFrame(table, index=["r1", *labels[1:]]))
    with pytest.raises(BatchError, match="index: ids must be integers or strings, not float"):
        DataFrameSplitStashContainer(pd.DataFrame(table, index=np.arange(N) / 2))


def test_an_id_column_wins_over_the_dataframe_index() -> None:
    frame = pd.DataFrame(columns(), index=[f"r{i}" for i in range(N)])
    box = DataFrameSplitStashContainer(frame, id_column="name")
    assert box.keys_by_split["dev"] == ["n2", "n6", "n10"]


# columns and rows --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", COLUMNED)
def test_columns_pick_what_a_row_holds(kind: str, tmp_path: Path) -> None:
    table = columns()
    box = build(kind, table, tmp_path, columns=["name", "x"])
    assert box.columns == ("name", "x")
    assert plain_row(box[6]) == {"name": "n6", "x": 9.0}
    assert as_lists(box.keys_by_split) == BY_COLUMN  # the split column is read all the same
    by_name = build(kind, table, tmp_path, columns=["x"], id_column="name")
    assert by_name.keys_by_split["dev"] == ["n2", "n6", "n10"]
    assert plain_row(by_name["n6"]) == {"x": 9.0}
    with pytest.raises(BatchError, match=r"no column 'pixels' \(columns: ") as info:
        build(kind, table, tmp_path, columns=["x", "pixels"])
    listed = info.value.message.split("(columns: ")[1].rstrip(")").split(", ")
    assert sorted(listed) == ["label", "name", "split", "x"]


@pytest.mark.parametrize("kind", KINDS)
def test_get_many_gives_the_rows_in_the_order_asked(kind: str, tmp_path: Path) -> None:
    table = columns()
    box = build(kind, table, tmp_path)
    asked = [9, 0, 4, 4, 11, 2]
    rows = box.get_many(asked)
    assert [plain_row(r) for r in rows] == [source_row(table, i) for i in asked]
    assert box.get_many([]) == []


def test_array_rows_are_rows_of_each_array() -> None:
    images = np.arange(N * 6, dtype=np.float32).reshape(N, 2, 3)
    box = ArraySplitStashContainer({"img": images, "split": SPLIT})
    rows = box.get_many([7, 3])
    assert rows[0]["img"].shape == (2, 3) and rows[0]["img"].dtype == np.float32
    np.testing.assert_array_equal(rows[0]["img"], images[7])
    np.testing.assert_array_equal(rows[1]["img"], images[3])

    tensors = ArraySplitStashContainer({"img": torch.from_numpy(images)}, ratios={"train": 1.0})
    got = tensors.get_many([7, 3])[0]["img"]
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(images[7]))


def test_arrays_of_different_lengths_are_refused() -> None:
    with pytest.raises(BatchError, match=r"same length on dim 0: \{'x': 12, 'y': 11\}"):
        ArraySplitStashContainer({"x": np.zeros(N), "y": np.zeros(N - 1)}, ratios={"a": 1.0})
    with pytest.raises(BatchError, match="at least one array"):
        ArraySplitStashContainer({}, ratios={"a": 1.0})


def test_a_dataframe_given_as_records_points_to_its_container() -> None:
    with pytest.raises(BatchError, match=r"use DataFrameSplitStashContainer\(df, ...\)"):
        MemorySplitStashContainer(pd.DataFrame(columns()), split_column="split")


def test_records_by_sequence_keep_their_records() -> None:
    records = [{"text": f"t{i}", "split": str(SPLIT[i])} for i in range(N)]
    box = MemorySplitStashContainer(records, split_column="split")
    assert as_lists(box.keys_by_split) == BY_COLUMN
    assert box.get_many([3, 1]) == [records[3], records[1]]
    with pytest.raises(BatchError, match="record 0 has no 'fold'"):
        MemorySplitStashContainer(records, split_column="fold")
    with pytest.raises(BatchError, match="id_column= is for a sequence of records"):
        MemorySplitStashContainer(dict(enumerate(records)), split_column="split", id_column="t")


# fingerprints ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprint_is_the_content(kind: str, tmp_path: Path) -> None:
    base = build(kind, columns(), tmp_path).fingerprint()
    assert build(kind, columns(), tmp_path).fingerprint() == base
    changed = columns()
    changed["x"][5] = 99.0
    assert build(kind, changed, tmp_path).fingerprint() != base
    renamed = columns()
    renamed["name"][0] = "m0"
    assert build(kind, renamed, tmp_path).fingerprint() != base
    resplit = columns()
    resplit["split"][0] = "dev"
    assert build(kind, resplit, tmp_path).fingerprint() != base


@pytest.mark.parametrize("kind", ["frame", "numpy", "torch"])
def test_fingerprint_sees_a_change_in_place(kind: str) -> None:
    table = columns()
    if kind == "frame":
        source: Any = pd.DataFrame(table)
        box: Any = DataFrameSplitStashContainer(source)
    else:
        source = {
            k: torch.from_numpy(v) if kind == "torch" and k == "x" else v for k, v in table.items()
        }
        box = ArraySplitStashContainer(source)
    before, version = box.fingerprint(), box.version()
    assert version == before  # in memory, the version is the content
    if kind == "frame":
        source.loc[5, "x"] = 99.0
    else:
        source["x"][5] = 99.0
    assert box.fingerprint() != before
    assert box.version() != version
    assert plain(box[5]["x"]) == 99.0


def test_npy_files_are_memory_mapped_and_fingerprinted_by_content(tmp_path: Path) -> None:
    table = columns()
    box = build("npy", table, tmp_path)
    rows = box.get_many([3])
    assert isinstance(box._arrays["x"], np.memmap)
    assert plain_row(rows[0]) == source_row(table, 3)
    folder = tmp_path / "npy-copy"
    shutil.copytree(Path(box._files[0].path).parent, folder)
    copy = ArraySplitStashContainer.open(folder)
    assert copy.fingerprint() == box.fingerprint()  # the same bytes elsewhere
    assert copy.version() != box.version()  # other files
    digests = (tmp_path / "cache" / "digests.json").read_text()
    assert str(folder / "x.npy") in digests  # read once per file version, kept for workers


def test_an_npy_file_changed_after_open_fails_the_next_read(tmp_path: Path) -> None:
    box = build("npy", columns(), tmp_path)
    folder = Path(box._files[0].path).parent
    before = box.version()
    x = np.load(folder / "x.npy")
    x[1] = -1.0
    np.save(folder / "x.npy", x)
    with pytest.raises(BatchError, match=r"x\.npy changed since the dataset was opened"):
        box.get_many([0])
    reopened = ArraySplitStashContainer.open(folder)
    assert reopened.version() != before
    assert plain(reopened[1]["x"]) == -1.0


def test_a_touched_npy_file_fails_the_next_read(tmp_path: Path) -> None:
    box = build("npy", columns(), tmp_path)
    path = box._files[0].path
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(BatchError, match="changed since the dataset was opened"):
        box[0]


def test_an_empty_npy_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="no .npy files"):
        ArraySplitStashContainer.open(tmp_path)
