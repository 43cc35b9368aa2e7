"""The Parquet container: files, lists, directories, S3, column types and the row cache."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchstash.client import BatchError
from batchstash.service import ParquetSplitStashContainer
from batchstash.service.dataset.parquet import arrow_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N = 20
IMAGES = (np.arange(N * 64, dtype=np.float32) / 7).reshape(N, 8, 8)
TOKENS = [list(range(i % 5)) for i in range(N)]  # ragged, one empty in five
SCORES = [None if i % 3 == 1 else i / 4 for i in range(N)]
SPLIT = ["test" if i % 5 == 4 else "train" for i in range(N)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The row cache and digests of this test (the default location too, never the user's)."""
    monkeypatch.setenv("BATCHSTASH_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path / "cache"


def digits_table(rows: range = range(N), label_shift: int = 0) -> Any:
    """``pixels`` (8 x 8 float32 as fixed-size lists of lists), ``label``, ``name``,
    ``tokens`` (ragged), ``score`` (nulls) and ``split`` of ``rows``."""
    picked = list(rows)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(IMAGES[picked].reshape(-1)), 8)
    return pa.table(
        {
            "pixels": pa.FixedSizeListArray.from_arrays(inner, 8),
            "label": pa.array([(i + label_shift) % 10 for i in picked], pa.int64()),
            "name": pa.array([f"digit-{i}" for i in picked]),
            "tokens": pa.array([TOKENS[i] for i in picked], pa.list_(pa.int32())),
            "score": pa.array([SCORES[i] for i in picked], pa.float64()),
            "split": pa.array([SPLIT[i] for i in picked]),
        }
    )


def write(path: Path, table: Any = None, row_group_size: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(digits_table() if table is None else table, path, row_group_size=row_group_size)
    return path


def assert_row(row: dict[str, Any], i: int, columns: Any = None) -> None:
    """``row`` is source row ``i``, each column in the type the container promises."""
    assert list(row) == list(columns or ["pixels", "label", "name", "tokens", "score", "split"])
    if "pixels" in row:
        assert isinstance(row["pixels"], np.ndarray)
        assert row["pixels"].shape == (8, 8) and row["pixels"].dtype == np.float32
        np.testing.assert_array_equal(row["pixels"], IMAGES[i])
    if "label" in row:
        assert type(row["label"]) is int and row["label"] == i % 10
    if "name" in row:
        assert row["name"] == f"digit-{i}"
    if "tokens" in row:
        assert isinstance(row["tokens"], np.ndarray) and row["tokens"].dtype == np.int32
        assert row["tokens"].tolist() == TOKENS[i]
    if "score" in row:
        assert row["score"] == SCORES[i]
    if "split" in row:
        assert row["split"] == SPLIT[i]


def cached(cache: Path) -> list[Path]:
    return sorted((cache / "parquet").glob("*.arrow"))


# sources -----------------------------------------------------------------------------------


def test_one_file(tmp_path: Path, cache: Path) -> None:
    box = ParquetSplitStashContainer(write(tmp_path / "d.parquet"), cache_dir=cache)
    assert box.keys_by_split == {
        "train": [i for i in range(N) if i % 5 != 4],
        "test": [4, 9, 14, 19],
    }
    assert len(box) == N
    asked = [19, 0, 7, 8, 7]  # across row groups, one twice
    for i, row in zip(asked, box.get_many(asked), strict=True):
        assert_row(row, i)


def test_a_list_of_files_numbers_rows_across_them(tmp_path: Path, cache: Path) -> None:
    first = write(tmp_path / "z.parquet", digits_table(range(0, 12)))
    second = write(tmp_path / "a.parquet", digits_table(range(12, N)))
    box = ParquetSplitStashContainer([first, str(second)], cache_dir=cache)
    assert box.paths == (str(first), str(second))  # in the order given
    assert box.keys_by_split["test"] == [4, 9, 14, 19]
    for i, row in zip([13, 2, 19, 11, 12], box.get_many([13, 2, 19, 11, 12]), strict=True):
        assert_row(row, i)


def test_a_directory_is_read_recursively_in_sorted_order(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "data"
    write(root / "b.parquet", digits_table(range(5, 10)))
    write(root / "a" / "x.parquet", digits_table(range(0, 5)))
    write(root / "c" / "d" / "y.parquet", digits_table(range(10, N)))
    (root / "README.md").write_text("not data")
    box = ParquetSplitStashContainer(root, cache_dir=cache)
    assert [Path(p).relative_to(root).as_posix() for p in box.paths] == [
        "a/x.parquet",
        "b.parquet",
        "c/d/y.parquet",
    ]
    for i, row in zip(range(N), box.get_many(list(range(N))), strict=True):
        assert_row(row, i)


def test_no_files_are_refused(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match="empty: no .parquet files"):
        ParquetSplitStashContainer(tmp_path / "empty", cache_dir=cache)
    with pytest.raises(BatchError, match="no Parquet files given"):
        ParquetSplitStashContainer([], cache_dir=cache)
    with pytest.raises(BatchError, match="missing.parquet"):
        ParquetSplitStashContainer(tmp_path / "missing.parquet", cache_dir=cache)


def test_files_whose_columns_differ_are_refused(tmp_path: Path, cache: Path) -> None:
    first = write(tmp_path / "a.parquet")
    other = write(tmp_path / "b.parquet", digits_table().drop_columns(["score"]))
    with pytest.raises(BatchError, match=r"b\.parquet: its columns differ from .*a\.parquet's"):
        ParquetSplitStashContainer([first, other], cache_dir=cache)
    retyped = digits_table().set_column(1, "label", pa.array(range(N), pa.int32()))
    with pytest.raises(BatchError, match="its columns differ"):
        ParquetSplitStashContainer([first, write(tmp_path / "c.parquet", retyped)], cache_dir=cache)


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path, cache: Path) -> None:
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("id,split\n1,train\n")
    with pytest.raises(BatchError, match=r"bogus\.parquet: not a readable Parquet file"):
        ParquetSplitStashContainer(bogus, cache_dir=cache)


# splits, ids and columns -------------------------------------------------------------------


def test_split_rules_and_ids(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    given = ParquetSplitStashContainer(path, splits={"dev": [3, 1]}, cache_dir=cache)
    assert given.keys_by_split == {"dev": [3, 1]}
    ratios = {"train": 0.75, "test": 0.25}
    cut = ParquetSplitStashContainer(path, ratios=ratios, seed=5, cache_dir=cache)
    assert (
        cut.keys_by_split
        == ParquetSplitStashContainer(path, ratios=ratios, seed=5, cache_dir=cache).keys_by_split
    )
    assert (
        cut.keys_by_split
        != ParquetSplitStashContainer(path, ratios=ratios, seed=6, cache_dir=cache).keys_by_split
    )
    with pytest.raises(BatchError, match="give split_column=, splits= or ratios="):
        ParquetSplitStashContainer(path, None, cache_dir=cache)
    with pytest.raises(BatchError, match="no split column 'fold'"):
        ParquetSplitStashContainer(path, "fold", cache_dir=cache)

    named = ParquetSplitStashContainer(path, id_column="name", cache_dir=cache)
    assert named.keys_by_split["test"] == ["digit-4", "digit-9", "digit-14", "digit-19"]
    assert_row(named["digit-9"], 9)
    with pytest.raises(BatchError, match="duplicate id 0"):
        ParquetSplitStashContainer(path, id_column="label", cache_dir=cache)
    with pytest.raises(BatchError, match="ids must be integers or strings, not float"):
        ParquetSplitStashContainer(path, id_column="score", cache_dir=cache)
    holes = digits_table().set_column(1, "label", pa.array([None, *range(1, N)], pa.int64()))
    with pytest.raises(BatchError, match="ids must be integers or strings, not NoneType"):
        ParquetSplitStashContainer(write(tmp_path / "holes.parquet", holes), id_column="label")


def test_columns_pick_what_a_row_and_the_cache_hold(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    box = ParquetSplitStashContainer(path, columns=["label", "pixels"], cache_dir=cache)
    assert box.keys_by_split["test"] == [4, 9, 14, 19]  # split read, though not in a row
    assert_row(box[9], 9, ["label", "pixels"])
    (rows,) = cached(cache)
    assert pa.ipc.open_file(str(rows)).schema.names == ["label", "pixels"]
    with pytest.raises(BatchError, match=r"no column 'image' \(columns: pixels, label, name"):
        ParquetSplitStashContainer(path, columns=["image"], cache_dir=cache)


# column types ------------------------------------------------------------------------------


def test_nulls_are_none_and_the_other_values_keep_their_type(tmp_path: Path, cache: Path) -> None:
    table = digits_table()
    table = table.set_column(3, "tokens", pa.array([None, *TOKENS[1:]], pa.list_(pa.int32())))
    nulls = [None if i == 2 else IMAGES[i] for i in range(N)]
    inner = pa.list_(pa.list_(pa.float32(), 8), 8)
    pixels = pa.array([None if p is None else p.tolist() for p in nulls], inner)
    table = table.set_column(0, "pixels", pixels)
    box = ParquetSplitStashContainer(write(tmp_path / "d.parquet", table), cache_dir=cache)
    first, second, third = box.get_many([0, 1, 2])
    assert first["tokens"] is None and third["pixels"] is None
    # in a batch with a null, the other rows are what a batch without one gives
    assert isinstance(second["tokens"], np.ndarray) and second["tokens"].tolist() == [0]
    assert first["pixels"].shape == (8, 8) and first["pixels"].dtype == np.float32
    np.testing.assert_array_equal(first["pixels"], IMAGES[0])
    assert [r["score"] for r in box.get_many([0, 1, 3])] == [0.0, None, 0.75]
    assert type(box[3]["score"]) is float


@pytest.mark.parametrize(
    ("values", "arrow_type"),
    [
        (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), pa.uint8()),
        (np.arange(2 * 3 * 4).reshape(2, 3, 4) % 3 == 0, pa.bool_()),
        (np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) / 3, pa.float64()),
    ],
    ids=["uint8", "bool", "float64"],
)
def test_fixed_size_lists_of_lists_are_nd_arrays(values: Any, arrow_type: Any) -> None:
    flat = pa.array(values.reshape(-1), arrow_type)
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 4), 3)
    rows = arrow_rows(pa.table({"v": nested}))
    assert [r["v"].shape for r in rows] == [(3, 4), (3, 4)]
    assert rows[1]["v"].dtype == values.dtype
    np.testing.assert_array_equal(rows[1]["v"], values[1])


def test_fixed_shape_tensors_are_nd_arrays(tmp_path: Path, cache: Path) -> None:
    values = np.arange(5 * 2 * 3, dtype=np.int16).reshape(5, 2, 3)
    tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    table = pa.table({"t": tensors, "split": ["train"] * 5})
    box = ParquetSplitStashContainer(write(tmp_path / "t.parquet", table), cache_dir=cache)
    (row,) = box.get_many([3])
    assert row["t"].shape == (2, 3) and row["t"].dtype == np.int16
    np.testing.assert_array_equal(row["t"], values[3])


# the row cache -----------------------------------------------------------------------------


def test_the_row_cache_is_built_once_and_reused(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    box = ParquetSplitStashContainer(path, cache_dir=cache)
    assert cached(cache) == []  # opening reads the metadata and the split column only
    assert_row(box[3], 3)
    (rows,) = cached(cache)
    built = rows.stat().st_mtime_ns
    other = ParquetSplitStashContainer(path, cache_dir=cache)
    assert_row(other[17], 17)
    assert cached(cache) == [rows] and rows.stat().st_mtime_ns == built
    assert pa.ipc.open_file(str(rows)).read_all().num_rows == N


def test_a_new_version_of_the_file_replaces_its_cache(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    ParquetSplitStashContainer(path, cache_dir=cache)[0]
    (old,) = cached(cache)
    write(path, digits_table(label_shift=1))
    box = ParquetSplitStashContainer(path, cache_dir=cache)
    assert box[5]["label"] == 6
    (new,) = cached(cache)
    assert new != old and not old.exists()


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["truncated", "emptied"])
def test_a_damaged_cache_is_a_clear_error(tmp_path: Path, cache: Path, keep: float) -> None:
    path = write(tmp_path / "d.parquet")
    ParquetSplitStashContainer(path, cache_dir=cache)[0]
    (rows,) = cached(cache)
    os.truncate(rows, int(rows.stat().st_size * keep))
    with pytest.raises(BatchError, match=r"\.arrow: a damaged row cache .*; delete it"):
        ParquetSplitStashContainer(path, cache_dir=cache)[0]
    rows.unlink()
    assert_row(ParquetSplitStashContainer(path, cache_dir=cache)[0], 0)  # rebuilt


# fingerprint and version -------------------------------------------------------------------


def test_fingerprint_is_the_files_content(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    box = ParquetSplitStashContainer(path, cache_dir=cache)
    copy = tmp_path / "copy" / "d.parquet"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    same = ParquetSplitStashContainer(copy, cache_dir=cache)
    assert same.fingerprint() == box.fingerprint()
    assert same.version() != box.version()  # another file
    digests = (cache / "digests.json").read_text()
    assert str(path) in digests and str(copy) in digests  # each read once per version

    changed = write(tmp_path / "changed.parquet", digits_table(label_shift=1))
    assert ParquetSplitStashContainer(changed, cache_dir=cache).fingerprint() != box.fingerprint()
    fewer = ParquetSplitStashContainer(path, columns=["label"], cache_dir=cache)
    assert fewer.fingerprint() != box.fingerprint()
    resplit = ParquetSplitStashContainer(path, ratios={"train": 1.0}, cache_dir=cache)
    assert resplit.fingerprint() != box.fingerprint()


def test_a_touched_file_fails_the_next_read(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    box = ParquetSplitStashContainer(path, cache_dir=cache)
    assert_row(box[0], 0)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(BatchError, match=r"d\.parquet changed since the dataset was opened"):
        box.get_many([1, 2])
    with pytest.raises(BatchError, match="changed since"):
        box.fingerprint()  # its digest is of the version opened, which is gone


def test_a_file_touched_before_the_first_read_builds_no_cache(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    box = ParquetSplitStashContainer(path, cache_dir=cache)
    os.utime(path)
    with pytest.raises(BatchError, match="changed since the dataset was opened"):
        box[0]
    assert cached(cache) == []


def test_version_changes_when_the_file_is_rewritten(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "d.parquet")
    before = ParquetSplitStashContainer(path, cache_dir=cache).version()
    assert ParquetSplitStashContainer(path, cache_dir=cache).version() == before
    write(path)  # the same content, a new file version
    assert ParquetSplitStashContainer(path, cache_dir=cache).version() != before


# S3 ----------------------------------------------------------------------------------------


def upload(url: str, table: Any) -> None:
    """Write ``table`` as a Parquet object at ``url`` (signed, through pyarrow's S3)."""
    fs, path = pa.fs.FileSystem.from_uri(url)
    with fs.open_output_stream(path) as sink:
        pq.write_table(table, sink, row_group_size=7)


def test_an_s3_url(s3_endpoint: str, s3_bucket: str, tmp_path: Path, cache: Path) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    options = f"endpoint_override={s3_endpoint.removeprefix('http://')}&scheme=http"
    for key, rows in {"digits/b.parquet": range(8, N), "digits/a.parquet": range(0, 8)}.items():
        upload(f"s3://{bucket}/{key}?{options}", digits_table(rows))

    one = ParquetSplitStashContainer(f"s3://{bucket}/digits/a.parquet?{options}", cache_dir=cache)
    assert one.paths == (f"{bucket}/digits/a.parquet",)
    assert one.keys_by_split["test"] == [4]
    for i, row in zip([7, 0], one.get_many([7, 0]), strict=True):
        assert_row(row, i)

    prefix = ParquetSplitStashContainer(f"s3://{bucket}/digits?{options}", cache_dir=cache)
    assert prefix.paths == (f"{bucket}/digits/a.parquet", f"{bucket}/digits/b.parquet")
    for i, row in zip([19, 3, 8], prefix.get_many([19, 3, 8]), strict=True):
        assert_row(row, i)
    local = ParquetSplitStashContainer(
        [
            write(tmp_path / "a.parquet", digits_table(range(0, 8))),
            write(tmp_path / "b.parquet", digits_table(range(8, N))),
        ],
        cache_dir=cache,
    )
    assert prefix.fingerprint() == local.fingerprint()  # the same bytes, wherever they are

    # an object replaced after the container was opened: nothing of it is read
    again = ParquetSplitStashContainer(f"s3://{bucket}/digits/b.parquet?{options}", cache_dir=cache)
    upload(f"s3://{bucket}/digits/b.parquet?{options}", digits_table(range(9)))
    with pytest.raises(BatchError, match="digits/b.parquet changed since the dataset was opened"):
        again[0]
    with pytest.raises(BatchError, match=r"nothing\.parquet: no such file"):
        ParquetSplitStashContainer(f"s3://{bucket}/nothing.parquet?{options}", cache_dir=cache)
