"""Data points: RowDataPoint reads a row's columns as attributes, subclasses still win."""

from __future__ import annotations

import copy
import io
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    DataPoint,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    RowDataPoint,
    SeriesFeatureVectorizer,
)

ROW = {"pixels": [1.0, 2.0], "label": "cat", "id": "column id"}


@dataclass
class SizedPoint(RowDataPoint):
    @property
    def pixels(self):  # a property wins over the column of the same name
        return [2 * v for v in self.row["pixels"]]

    @property
    def area(self):
        return self.width * self.height  # a missing column: its own AttributeError

    @property
    def size(self):
        return len(self.pixels)


def test_columns_are_attributes():
    point = RowDataPoint(7, None, ROW)
    assert isinstance(point, DataPoint)
    assert point.pixels == [1.0, 2.0] and point.label == "cat"
    assert point.id == 7 and point.row["id"] == "column id"  # the data point's own names win


def test_a_missing_column_is_an_attribute_error_naming_the_columns():
    point = RowDataPoint("a", None, ROW)
    with pytest.raises(AttributeError, match=r"'a' has no column 'colour'.*'pixels', 'label'"):
        _ = point.colour
    assert getattr(point, "colour", None) is None
    assert not hasattr(point, "_repr_html_")


def test_a_pandas_like_row_lists_its_column_names():
    class Series:  # iterates values, like pandas.Series
        def __init__(self, data):
            self.data = data

        def __getitem__(self, key):
            return self.data[key]

        def keys(self):
            return list(self.data)

        def __iter__(self):
            return iter(self.data.values())

    point = RowDataPoint(1, None, Series({"x": 1, "y": 2}))
    assert point.x == 1
    with pytest.raises(AttributeError, match=r"columns: 'x', 'y'$"):
        _ = point.z


def test_a_subclass_property_wins_and_keeps_its_own_error():
    point = SizedPoint(1, None, ROW)
    assert point.pixels == [2.0, 4.0] and point.size == 2 and point.label == "cat"
    with pytest.raises(AttributeError, match="no column 'width'"):
        _ = point.area


def test_copy_pickle_and_equality():
    point = SizedPoint(3, object(), {"pixels": np.arange(3.0), "label": "dog"})
    for clone in (copy.copy(point), copy.deepcopy(point), pickle.loads(pickle.dumps(point))):
        assert type(clone) is SizedPoint and clone.id == 3 and clone.label == "dog"
        assert clone.pixels == [0.0, 2.0, 4.0]
    blank = RowDataPoint.__new__(RowDataPoint)  # no __dict__ yet: no recursion
    with pytest.raises(AttributeError):
        _ = blank.pixels
    assert RowDataPoint(1, None, {"a": 1}) == RowDataPoint(1, "other stash", {"a": 1})
    out = io.StringIO()
    RowDataPoint(1, None, {"a": 1}).write(writer=out)
    assert out.getvalue() == "RowDataPoint(id=1, row={'a': 1})\n"


def test_the_stash_reads_rows_with_no_data_point_class(tmp_path):
    records = {i: {"xy": [float(i), -float(i)], "kind": ("even", "odd")[i % 2]} for i in range(6)}
    mapping = BatchFeatureMapping(
        "kind",
        [
            ManagerFeatureMapping(
                "m",
                [
                    FieldFeatureMapping("kind", "cls", is_label=True),
                    FieldFeatureMapping("xy", "series"),
                ],
            )
        ],
    )
    managers = [
        FeatureVectorizerManager(
            "m",
            [
                CategoryEncodableFeatureVectorizer("cls", ("even", "odd")),
                SeriesFeatureVectorizer("series", dims=2),
            ],
        )
    ]
    container = MemorySplitStashContainer(records, {"train": list(records)})
    stash = BatchStash(tmp_path / "s", container, managers, mapping, batch_size=6)
    assert stash.data_point_type is RowDataPoint
    assert stash.prime() == 1
    batch = stash.load("train", 0)
    ids = list(batch.data_point_ids)
    assert batch["xy"].tolist() == [[float(i), -float(i)] for i in ids]
    assert batch["kind"].tolist() == [i % 2 for i in ids]
    assert [p.row for p in batch.data_points] == [records[i] for i in ids]


def test_a_loaded_batch_rebuilds_data_points_of_tuple_ids(tmp_path):
    records = {("a", i): {"xy": [float(i), 0.0]} for i in range(3)}
    mapping = BatchFeatureMapping(
        None, [ManagerFeatureMapping("m", [FieldFeatureMapping("xy", "series")])]
    )
    managers = [FeatureVectorizerManager("m", [SeriesFeatureVectorizer("series", dims=2)])]
    container = MemorySplitStashContainer(records, {"test": list(records)})
    stash = BatchStash(tmp_path / "s", container, managers, mapping, batch_size=3)
    stash.prime()
    batch = stash.load("test", 0)
    assert [p.id for p in batch.data_points] == list(records)
    assert [p.xy for p in batch.data_points] == [r["xy"] for r in records.values()]
