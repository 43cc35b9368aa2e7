"""The Hugging Face container: Dataset and DatasetDict, views, ids, features, fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchstash.client import BatchError
from batchstash.service import HuggingFaceSplitStashContainer

datasets = pytest.importorskip("datasets")

N = 10
SPLIT = ["test" if i % 5 == 4 else "train" for i in range(N)]


def table() -> dict[str, list[Any]]:
    """``x`` ints, ``name`` strings and ``split``."""
    return {"x": [i * 3 for i in range(N)], "name": [f"n{i}" for i in range(N)], "split": SPLIT}


def dataset(**changes: Any) -> Any:
    return datasets.Dataset.from_dict({**table(), **changes})


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row with numpy scalars as Python values (the container reads in numpy format)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def shown(view: Any, rows: list[int]) -> list[dict[str, Any]]:
    """The rows of a dataset as it shows them (its own ``__getitem__``)."""
    return [view[r] for r in rows]


def test_a_dataset_split_by_a_column() -> None:
    box = HuggingFaceSplitStashContainer(dataset(), split_column="split")
    assert box.keys_by_split == {"train": [0, 1, 2, 3, 5, 6, 7, 8], "test": [4, 9]}
    rows = box.get_many([9, 0, 4])
    assert [plain(r) for r in rows] == shown(dataset(), [9, 0, 4])
    assert isinstance(rows[0]["x"], np.integer)  # the numpy format


def test_a_dataset_needs_a_split_rule() -> None:
    with pytest.raises(BatchError, match="the dataset: give split_column=, splits= or ratios="):
        HuggingFaceSplitStashContainer(dataset())
    with pytest.raises(BatchError, match=r"no split column 'fold' \(columns: x, name, split\)"):
        HuggingFaceSplitStashContainer(dataset(), split_column="fold")


def test_given_splits_and_ratios() -> None:
    given = HuggingFaceSplitStashContainer(dataset(), splits={"train": [7, 2], "dev": [5]})
    assert given.keys_by_split == {"train": [7, 2], "dev": [5]}
    cut = HuggingFaceSplitStashContainer(dataset(), ratios={"train": 0.6, "test": 0.4}, seed=3)
    again = HuggingFaceSplitStashContainer(dataset(), ratios={"train": 0.6, "test": 0.4}, seed=3)
    other = HuggingFaceSplitStashContainer(dataset(), ratios={"train": 0.6, "test": 0.4}, seed=4)
    assert cut.keys_by_split == again.keys_by_split != other.keys_by_split
    assert sorted(cut.keys_by_split["train"] + cut.keys_by_split["test"]) == list(range(N))
    with pytest.raises(BatchError, match="give splits= or ratios=, not both"):
        HuggingFaceSplitStashContainer(dataset(), splits={"a": [0]}, ratios={"a": 1.0})


def test_a_dataset_dict_gives_its_splits_and_ids_across_them() -> None:
    parts = dataset().train_test_split(test_size=0.3, seed=0)
    box = HuggingFaceSplitStashContainer(parts)
    assert box.keys_by_split == {"train": list(range(7)), "test": [7, 8, 9]}
    assert len(box) == N
    rows = box.get_many([8, 1, 7])
    assert [plain(r) for r in rows] == [parts["test"][1], parts["train"][1], parts["test"][0]]
    # one batch across both splits, read split by split, comes back in the order asked
    every = box.get_many(list(range(N - 1, -1, -1)))
    expected = [*shown(parts["train"], list(range(7))), *shown(parts["test"], [0, 1, 2])]
    assert [plain(r) for r in every] == expected[::-1]
    with pytest.raises(BatchError, match="no data point with id 10"):
        box[10]


def test_a_dataset_dict_can_be_split_by_a_column_instead() -> None:
    parts = datasets.DatasetDict({"a": dataset().select(range(5)), "b": dataset().select([5])})
    box = HuggingFaceSplitStashContainer(parts, split_column="split")
    assert box.keys_by_split == {"train": [0, 1, 2, 3, 5], "test": [4]}


def test_a_dataset_dict_whose_splits_differ_in_columns_is_refused() -> None:
    parts = datasets.DatasetDict({"train": dataset(), "test": dataset().remove_columns("name")})
    with pytest.raises(BatchError, match="split 'test' has other columns than the first split"):
        HuggingFaceSplitStashContainer(parts)
    with pytest.raises(BatchError, match="the DatasetDict has no splits"):
        HuggingFaceSplitStashContainer(datasets.DatasetDict())
    with pytest.raises(BatchError, match="expected a datasets.Dataset or DatasetDict, got dict"):
        HuggingFaceSplitStashContainer(table())


def test_ids_from_a_column_unique_across_splits() -> None:
    parts = dataset().train_test_split(test_size=0.3, seed=0)
    box = HuggingFaceSplitStashContainer(parts, id_column="name")
    assert box.keys_by_split == {
        "train": list(parts["train"]["name"]),
        "test": list(parts["test"]["name"]),
    }
    assert plain(box["n4"]) == {"x": 12, "name": "n4", "split": "test"}

    ints = HuggingFaceSplitStashContainer(dataset(), "split", id_column="x")
    assert ints.keys_by_split["test"] == [12, 27]
    assert {type(i) for i in ints.keys_by_split["train"]} == {int}

    twice = datasets.DatasetDict({"train": dataset(), "test": dataset().select([3])})
    with pytest.raises(BatchError, match="id column 'name': duplicate id 'n3'"):
        HuggingFaceSplitStashContainer(twice, id_column="name")
    with pytest.raises(BatchError, match="ids must be integers or strings, not float"):
        HuggingFaceSplitStashContainer(dataset(x=[i / 2 for i in range(N)]), "split", id_column="x")


def test_columns_pick_what_a_row_holds() -> None:
    box = HuggingFaceSplitStashContainer(dataset(), "split", id_column="name", columns=["x"])
    assert box.keys_by_split["test"] == ["n4", "n9"]
    assert plain(box["n9"]) == {"x": 27}
    with pytest.raises(BatchError, match=r"no column 'y' \(columns: x, name, split\)"):
        HuggingFaceSplitStashContainer(dataset(), "split", columns=["y"])


@pytest.mark.parametrize(
    "view",
    [
        lambda d: d.select([7, 3, 9, 0]),
        lambda d: d.shuffle(seed=1),
        lambda d: d.filter(lambda row: row["x"] % 2 == 0),
    ],
    ids=["select", "shuffle", "filter"],
)
def test_a_view_is_read_as_it_shows_its_rows(view: Any) -> None:
    rows = view(dataset())
    count = len(rows)
    box = HuggingFaceSplitStashContainer(rows, split_column="split")
    # each row's split is its own, as the view shows it (not the row under it in the table)
    for name, ids in box.keys_by_split.items():
        assert [rows[i]["split"] for i in ids] == [name] * len(ids)
    assert sorted(i for ids in box.keys_by_split.values() for i in ids) == list(range(count))
    order = list(range(count))[::-1]
    assert [plain(r) for r in box.get_many(order)] == shown(rows, order)

    by_name = HuggingFaceSplitStashContainer(rows, split_column="split", id_column="name")
    for i in range(count):
        assert plain(by_name[rows[i]["name"]]) == rows[i]
    assert (
        by_name.fingerprint()
        != HuggingFaceSplitStashContainer(
            dataset(), split_column="split", id_column="name"
        ).fingerprint()
    )


def test_an_array2d_column_comes_back_as_an_nd_array() -> None:
    images = np.arange(4 * 64, dtype=np.float32).reshape(4, 8, 8)
    features = datasets.Features(
        {"pixels": datasets.Array2D((8, 8), "float32"), "split": datasets.Value("string")}
    )
    data = datasets.Dataset.from_dict({"pixels": images, "split": ["train"] * 4}, features)
    rows = HuggingFaceSplitStashContainer(data, "split").get_many([3, 1])
    assert rows[0]["pixels"].shape == (8, 8) and rows[0]["pixels"].dtype == np.float32
    np.testing.assert_array_equal(rows[0]["pixels"], images[3])
    np.testing.assert_array_equal(rows[1]["pixels"], images[1])


def test_an_image_feature_is_decoded_to_an_array() -> None:
    image = pytest.importorskip("PIL.Image")
    pictures = [image.fromarray(np.full((4, 5, 3), i * 10, dtype=np.uint8)) for i in range(3)]
    features = datasets.Features({"img": datasets.Image(), "split": datasets.Value("string")})
    data = datasets.Dataset.from_dict({"img": pictures, "split": ["train"] * 3}, features)
    row = HuggingFaceSplitStashContainer(data, "split")[2]
    assert isinstance(row["img"], np.ndarray)
    assert row["img"].shape == (4, 5, 3) and row["img"].dtype == np.uint8
    assert (row["img"] == 20).all()


def halves(data: Any) -> Any:
    """A DatasetDict of ``data``'s first 7 rows (``train``) and last 3 (``test``), as views."""
    return datasets.DatasetDict({"train": data.select(range(7)), "test": data.select([7, 8, 9])})


def test_fingerprint_is_the_content_wherever_it_is_held(tmp_path: Path) -> None:
    parts = halves(dataset())
    base = HuggingFaceSplitStashContainer(parts).fingerprint()
    assert HuggingFaceSplitStashContainer(halves(dataset())).fingerprint() == base
    parts.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert loaded["train"].cache_files  # memory-mapped from the saved files, no view left
    assert HuggingFaceSplitStashContainer(loaded).fingerprint() == base
    assert [plain(r) for r in HuggingFaceSplitStashContainer(loaded).get_many([8, 2])] == [
        parts["test"][1],
        parts["train"][2],
    ]

    x = table()["x"]
    x[8] += 1
    assert HuggingFaceSplitStashContainer(halves(dataset(x=x))).fingerprint() != base
    regrouped = datasets.DatasetDict({"train": parts["train"], "dev": parts["test"]})
    assert HuggingFaceSplitStashContainer(regrouped).fingerprint() != base
    fewer = HuggingFaceSplitStashContainer(parts, columns=["x", "name"]).fingerprint()
    assert fewer != base


def test_version_is_the_fingerprint() -> None:
    box = HuggingFaceSplitStashContainer(dataset(), "split")
    assert box.version() == box.fingerprint()
