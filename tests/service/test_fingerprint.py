"""Content fingerprints: exact over numpy, torch, pandas and Python values, never through repr."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from batchstash.client import BatchError
from batchstash.service import FeatureVectorizer, MemorySplitStashContainer
from batchstash.service.dataset.fingerprint import ContentHasher, Unfingerprintable, content_digest


def digest(value: Any) -> str:
    return content_digest(value, "the test value")


class Opaque:
    """A type the fingerprint does not cover."""


Point = namedtuple("Point", "x y")

SAME_PRINT = [
    [1, 2],
    (1, 2),
    np.array([1, 2]),
    np.array([1, 2], dtype=np.int32),
    np.array([1.0, 2.0]),
    np.array([[1, 2]]),
    torch.tensor([1, 2]),
    torch.tensor([1, 2], dtype=torch.int32),
    "12",
    "[1, 2]",
    b"12",
    bytearray(b"12"),
    memoryview(b"12"),
    {1, 2},
    frozenset({1, 2}),
    {1: 2},
    Point(1, 2),
    [1, [2]],
    [[1], 2],
    1,
    True,
    1.0,
    np.int64(1),
    np.float64(1.0),
    np.array(1),
    "1",
    None,
    [],
    (),
    {},
    "",
    0,
    False,
    0.0,
    -0.0,
]


def test_values_of_another_type_or_structure_differ():
    digests = [digest(v) for v in SAME_PRINT]
    clashes = [
        (SAME_PRINT[i], SAME_PRINT[j])
        for i in range(len(digests))
        for j in range(i)
        if digests[i] == digests[j]
    ]
    assert clashes == []


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"a": 1, "b": [2, 3]}, {"b": [2, 3], "a": 1}),
        (OrderedDict(a=1, b=2), OrderedDict(b=2, a=1)),
        ({"x", "y", 3}, {3, "y", "x"}),
        (np.arange(12.0).reshape(3, 4).T, np.ascontiguousarray(np.arange(12.0).reshape(3, 4).T)),
        (np.arange(10)[::2], np.array([0, 2, 4, 6, 8])),
        (torch.arange(12.0).reshape(3, 4).t(), torch.arange(12.0).reshape(3, 4).t().contiguous()),
        (torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 2.0])),
        (np.array(["a", None, 3], dtype=object), np.array(["a", None, 3], dtype=object)),
        (10**30, 10**30),
    ],
    ids=lambda v: type(v).__name__,
)
def test_equal_content_hashes_equal(one, other):
    assert digest(one) == digest(other)


def test_key_orders_are_reused_for_plain_str_keys_only():
    class Key(str):
        pass

    one, other = ContentHasher(), ContentHasher()
    for record in ({"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 1, "b": 2}):
        one.update(record)
    for record in ({"b": 2, "a": 1}, {"a": 1, "b": 2}, {"b": 2, "a": 1}):
        other.update(record)
    assert one.hexdigest() == other.hexdigest()
    with pytest.raises(Unfingerprintable, match="Key"):  # equal to the cached ("a", "b")
        one.update({Key("a"): 1, "b": 2})


def test_every_element_of_a_large_array_counts():
    # numpy's repr elides the middle of arrays over 1,000 elements: content hashes must not
    rows = np.zeros((4, 3072))
    before = digest(rows)
    rows[2, 1536] = 99.0
    assert digest(rows) != before
    assert "..." in repr(rows) and repr(rows) == repr(np.zeros((4, 3072)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(3, dtype=np.float32),
        lambda: np.arange(3).astype("datetime64[ns]"),
        lambda: np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        lambda: np.array(["ab", "c"]),
        lambda: torch.arange(3.0).bfloat16(),
        lambda: torch.arange(3.0).to(torch.complex64),
        lambda: torch.tensor([True, False]),
    ],
    ids=["float32", "datetime64", "structured", "unicode", "bfloat16", "complex64", "bool"],
)
def test_a_changed_element_changes_arrays_of_any_dtype(make):
    base = make()
    changed = make()
    changed[1] = changed[0]
    assert digest(make()) == digest(base) and digest(changed) != digest(base)


def test_dtypes_of_equal_values_differ():
    assert digest(np.array([1.0], dtype=np.float32)) != digest(np.array([1.0], dtype=np.float64))
    assert digest(torch.tensor([1.0])) != digest(torch.tensor([1.0], dtype=torch.float64))
    assert digest(np.array([1], dtype="<i8")) != digest(np.array([1], dtype=">i8"))


def test_a_conjugate_view_hashes_as_its_values():
    z = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    assert digest(z.conj()) == digest(z.conj().resolve_conj())
    assert digest(z.conj()) != digest(z)


def test_pandas_values_index_columns_and_dtypes():
    import pandas as pd

    def frame() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "n": [1, 2, 3],
                "s": ["x", "y", None],
                "c": pd.Categorical(["u", "v", "u"]),
                "i": pd.array([1, None, 3], dtype="Int64"),
                "t": pd.date_range("2020-01-01", periods=3, tz="Europe/Paris"),
                "o": pd.Series([1, "1", 2.5], dtype=object),
            }
        )

    base = digest(frame())
    assert digest(frame()) == base
    edits = {
        "value": lambda f: f.__setitem__("n", [1, 2, 4]),
        "string": lambda f: f.__setitem__("s", ["x", "z", None]),
        "category": lambda f: f.__setitem__("c", pd.Categorical(["u", "u", "u"])),
        "missing": lambda f: f.__setitem__("i", pd.array([1, 2, 3], dtype="Int64")),
        "time zone": lambda f: f.__setitem__("t", pd.date_range("2020-01-01", periods=3, tz="UTC")),
        "object str vs int": lambda f: f.__setitem__("o", pd.Series(["1", "1", 2.5], dtype=object)),
        "dtype": lambda f: f.__setitem__("n", [1.0, 2.0, 3.0]),
        "index": lambda f: f.set_axis([10, 11, 12], axis=0),
        "column": lambda f: f.rename(columns={"n": "m"}),
    }
    for name, edit in edits.items():
        changed = frame()
        result = edit(changed)
        changed = changed if result is None else result
        assert digest(changed) != base, name
    series = pd.Series([1.0, 2.0], index=["a", "b"], name="s")
    assert digest(series) != digest(series.rename("t"))
    assert digest(series) != digest(series.reset_index(drop=True).rename("s"))
    assert digest(series.index) != digest(pd.Index(["a", "c"]))
    multi = pd.MultiIndex.from_tuples([(1, "a"), (2, "b")])
    assert digest(pd.Series([1, 2], index=multi)) != digest(pd.Series([2, 1], index=multi))


@pytest.mark.parametrize(
    ("value", "type_name", "reason"),
    [
        (Opaque(), "tests.service.test_fingerprint.Opaque", "fingerprints cover None"),
        (torch.tensor([0.0, 1.0]).to_sparse(), "torch.Tensor", "sparse_coo tensor"),
        (torch.zeros(2, device="meta"), "torch.Tensor", "a tensor on meta: move it to the CPU"),
        (np.ma.array([1, 2]), "numpy.ma.MaskedArray", "an ndarray subclass"),
        (np.array([Opaque()], dtype=object), "tests.service.test_fingerprint.Opaque", "cover"),
    ],
    ids=["object", "sparse", "meta", "masked", "object array"],
)
def test_what_cannot_be_fingerprinted_exactly_is_refused(value, type_name, reason):
    with pytest.raises(BatchError) as info:
        digest(value)
    message = info.value.message
    assert message.startswith(f"cannot fingerprint a value of type {type_name} in the test value")
    assert reason in message and "\n" not in message


def test_a_container_that_holds_itself_is_refused():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(BatchError, match="nested too deep, or a container holds itself"):
        digest(loop)


def test_a_memory_container_refuses_an_unfingerprintable_record_when_made():
    records = {i: {"x": np.zeros(3), "meta": [1, {"k": "v"}]} for i in range(5)}
    records[3]["meta"][1]["k"] = Opaque()
    with pytest.raises(
        BatchError,
        match=r"^cannot fingerprint a value of type tests\.service\.test_fingerprint\.Opaque in "
        r"record 3 \(at \['meta'\]\[1\]\['k'\]\): fingerprints cover None, bool, int",
    ):
        MemorySplitStashContainer(records, {"train": range(5)})
    with pytest.raises(BatchError, match=r"test_fingerprint\.Opaque in the record ids"):
        MemorySplitStashContainer({Opaque(): 1}, {})


def test_a_memory_container_fingerprints_content_and_sees_changes_in_place():
    def records() -> dict[str, Any]:
        return {f"r{i}": {"x": np.full(2048, float(i)), "label": i % 2} for i in range(4)}

    data = records()
    box = MemorySplitStashContainer(data, {"train": ["r0", "r1"], "test": ["r2", "r3"]})
    same = MemorySplitStashContainer(records(), {"test": ["r3", "r2"], "train": ["r1", "r0"]})
    assert box.fingerprint() == same.fingerprint()
    data["r1"]["x"][1000] = 99.0
    assert box.fingerprint() != same.fingerprint()
    mixed = MemorySplitStashContainer({1: "a", "1": "b", (1,): "c"}, {"train": [(1,), "1", 1]})
    assert (
        mixed.fingerprint()
        == (
            MemorySplitStashContainer({"1": "b", (1,): "c", 1: "a"}, {"train": [1, "1", (1,)]})
        ).fingerprint()
    )


@dataclass
class ScaledVectorizer(FeatureVectorizer):
    DESCRIPTION: ClassVar[str] = "scaled by a weight array"

    weights: Any = None

    def encode(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(self.weights) * float(value)


def test_a_vectorizer_field_enters_the_configuration_by_its_content():
    weights = np.zeros(3072)
    config = ScaledVectorizer("w", weights=weights).config()
    assert ScaledVectorizer("w", weights=weights.copy()).config() == config
    weights[1536] = 1.0
    assert ScaledVectorizer("w", weights=weights).config() != config
    tensor = ScaledVectorizer("w", weights=torch.zeros(3072)).config()
    assert tensor != config and tensor["weights"]["content"] != config["weights"]["content"]
    assert ScaledVectorizer("w", weights=np.int64(3)).config()["weights"] == 3
    with pytest.raises(
        BatchError,
        match=r"^cannot fingerprint a value of type tests\.service\.test_fingerprint\.Opaque in "
        r"vectorizer 'w' field 'weights': .*; or override config\(\) to describe it$",
    ):
        ScaledVectorizer("w", weights=Opaque()).config()
