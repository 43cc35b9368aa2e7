"""Vectorizers: category, one-hot, series, token ids and lengths, custom ones and managers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from batchstash.client import BatchError, VectorizerMetadata
from batchstash.service import (
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizer,
    FeatureVectorizerManager,
    FeatureVectorizerManagerSet,
    MultiLabelFeatureVectorizer,
    OneHotEncodedFeatureVectorizer,
    SeriesFeatureVectorizer,
    TensorFeatureVectorizer,
    TokenIdFeatureVectorizer,
    TokenLengthFeatureVectorizer,
)
from batchstash.service.dataset.vectorize import code_digest, encodes_many

CLASSES = ("setosa", "versicolor", "virginica")


@pytest.mark.parametrize(("cls", "index"), [("setosa", 0), ("versicolor", 1), ("virginica", 2)])
def test_category_index_and_class(cls, index):
    vec = CategoryEncodableFeatureVectorizer("ilabel", categories=CLASSES)
    assert vec.index(cls) == index
    encoded = vec.encode(cls)
    assert encoded.dtype == torch.int64 and encoded.shape == () and encoded.item() == index
    assert vec.get_classes(torch.tensor([index, 0])) == [cls, "setosa"]


def test_category_errors_and_metadata():
    vec = CategoryEncodableFeatureVectorizer("ilabel", categories=list(CLASSES))
    with pytest.raises(
        BatchError, match=r"unknown class 'rose' \(str\); known: 'setosa' \(str\), 'versicolor'"
    ):
        vec.encode("rose")
    with pytest.raises(BatchError, match="categories must be unique and non-empty"):
        CategoryEncodableFeatureVectorizer("x", categories=("a", "a"))
    with pytest.raises(BatchError, match="categories must be unique and non-empty"):
        CategoryEncodableFeatureVectorizer("x")
    meta = vec.metadata()
    assert meta == VectorizerMetadata(
        "ilabel",
        "CategoryEncodableFeatureVectorizer",
        "category label index",
        "int64",
        (),
        CLASSES,
        extra={"per_row": True},  # the stacking encode_batch: rows are independent
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("setosa", [1.0, 0.0, 0.0]), ("versicolor", [0.0, 1.0, 0.0]), ("virginica", [0.0, 0.0, 1.0])],
)
def test_one_hot(value, expected):
    vec = OneHotEncodedFeatureVectorizer("onehot", categories=CLASSES)
    got = vec.encode(value)
    assert got.dtype == torch.float32
    assert got.tolist() == expected
    assert vec.shape == (3,)
    assert vec.metadata().classes == CLASSES
    assert vec.metadata().dtype == "float32"


def test_series():
    vec = SeriesFeatureVectorizer("iseries", dims=4)
    got = vec.encode(["5.1", 3.5, 1, "0.2"])
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([5.1, 3.5, 1.0, 0.2], dtype=torch.float32))
    assert vec.metadata().shape == (4,)


@pytest.mark.parametrize("value", [[1.0, 2.0, 3.0], [1.0] * 5, []])
def test_series_length_check(value):
    with pytest.raises(BatchError, match=f"iseries: expected 4 values, got {len(value)}"):
        SeriesFeatureVectorizer("iseries", dims=4).encode(value)


def test_token_ids_padded_to_longest():
    vec = TokenIdFeatureVectorizer("ids", vocab=("a", "b", "c"), max_length=4)
    got = vec.encode_batch([["a", "c"], ["b", "zzz", "a", "c", "b", "b"], ["c"]])
    # id i + 2 is vocab[i]; 0 pads, 1 is unknown; cut to max_length
    assert got.dtype == torch.int64
    assert got.tolist() == [[2, 4, 0, 0], [3, 1, 2, 4], [4, 0, 0, 0]]
    assert vec.encode(["c", "a"]).tolist() == [4, 2]
    assert vec.shape == (-1,)
    meta = vec.metadata()
    assert (meta.vocab_size, meta.extra) == (5, {"pad_id": 0, "unk_id": 1, "pad_value": 0})


def test_token_ids_empty_batch_shape():
    vec = TokenIdFeatureVectorizer("ids", vocab=("a",))
    assert vec.encode_batch([[], []]).shape == (2, 0)


@pytest.mark.parametrize(
    ("tokens", "length"), [([], 0), (["a"], 1), (["a"] * 4, 4), (["a"] * 9, 4)]
)
def test_token_lengths_match_cut_ids(tokens, length):
    lengths = TokenLengthFeatureVectorizer("lens", max_length=4)
    ids = TokenIdFeatureVectorizer("ids", vocab=("a",), max_length=4)
    got = lengths.encode(tokens)
    assert got.dtype == torch.int64 and got.item() == length
    assert int((ids.encode_batch([tokens, ["a"]])[0] != 0).sum()) == length


@dataclass
class LengthVectorizer(FeatureVectorizer):
    DESCRIPTION: ClassVar[str] = "text length"

    scale: float = 1.0

    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor([len(value) * self.scale], dtype=torch.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1,)


def test_custom_vectorizer_subclass():
    vec = LengthVectorizer("len", scale=0.5)
    assert vec.encode("abcd").tolist() == [2.0]
    assert vec.encode_batch(["ab", "abcdef"]).tolist() == [[1.0], [3.0]]
    meta = vec.metadata()
    assert (meta.name, meta.description, meta.dtype, meta.shape) == (
        "LengthVectorizer",
        "text length",
        "float32",
        (1,),
    )
    assert vec.config() == {
        "class": f"{__name__}.LengthVectorizer",
        "version": "1",
        "code": code_digest(LengthVectorizer),  # the class's own source: an edit turns stale
        "feature_id": "len",
        "scale": 0.5,
    }
    assert LengthVectorizer("len", scale=2.0).config() != vec.config()


def test_base_vectorizer_must_implement_encode():
    with pytest.raises(TypeError, match="abstract.*encode"):  # wording varies by Python
        FeatureVectorizer("x")


def test_managers():
    series = SeriesFeatureVectorizer("iseries", dims=2)
    label = CategoryEncodableFeatureVectorizer("ilabel", categories=("a", "b"))
    mng = FeatureVectorizerManager("m", [series, label])
    assert mng["iseries"] is series
    assert mng.feature_ids == ("iseries", "ilabel")
    with pytest.raises(BatchError, match="manager 'm' has no vectorizer 'nope'"):
        mng["nope"]
    with pytest.raises(BatchError, match="manager 'd' has duplicate feature ids"):
        FeatureVectorizerManager("d", [series, SeriesFeatureVectorizer("iseries")])

    managers = FeatureVectorizerManagerSet([mng])
    assert managers["m"] is mng
    with pytest.raises(BatchError, match="no vectorizer manager named 'x'"):
        managers["x"]
    config = managers.config()
    assert config["m"]["ilabel"]["categories"] == ["a", "b"]
    assert config["m"]["iseries"]["dims"] == 2


@pytest.mark.parametrize(
    "cls", [CategoryEncodableFeatureVectorizer, OneHotEncodedFeatureVectorizer]
)
def test_integer_categories_match_by_value_and_type_family(cls):
    vec = cls("y", categories=(np.int64(0), 1, 2))
    assert vec.categories == (0, 1, 2) and all(type(c) is int for c in vec.categories)
    for value in (1, np.int64(1), np.int8(1), np.uint16(1)):
        assert vec.index(value) == 1
    assert vec.get_classes([2, 0]) == [2, 0]
    for value in ("1", True, 1.0):
        with pytest.raises(BatchError) as info:
            vec.index(value)
        kind = type(value).__name__
        assert info.value.message == (
            f"unknown class {value!r} ({kind}); known: 0 (int), 1 (int), 2 (int)"
        )
    with pytest.raises(BatchError, match=r"^unknown class 3 \(numpy\.int64\); known: 0 \(int\)"):
        vec.encode(np.int64(3))


def test_string_and_boolean_categories_keep_their_family():
    strings = CategoryEncodableFeatureVectorizer("y", categories=("0", "1"))
    assert strings.index("1") == 1 and strings.index(np.str_("1")) == 1  # CSV strings match
    with pytest.raises(
        BatchError, match=r"unknown class 1 \(int\); known: '0' \(str\), '1' \(str\)"
    ):
        strings.index(1)
    flags = CategoryEncodableFeatureVectorizer("y", categories=(False, True))
    assert flags.index(np.bool_(True)) == 1 and flags.index(False) == 0
    with pytest.raises(BatchError, match=r"unknown class 1 \(int\)"):
        flags.index(1)
    mixed = CategoryEncodableFeatureVectorizer("y", categories=(1, "1", True))
    assert [mixed.index(v) for v in (True, "1", 1)] == [2, 1, 0]


def test_categories_must_be_labels_and_unique_by_family():
    with pytest.raises(BatchError, match=r"^y: category 1\.5 \(float\) is not a str, int or bool$"):
        CategoryEncodableFeatureVectorizer("y", categories=(1, 1.5))
    with pytest.raises(BatchError, match="categories must be unique and non-empty"):
        CategoryEncodableFeatureVectorizer("y", categories=(1, np.int64(1)))


def test_long_category_lists_are_cut_in_the_error():
    vec = CategoryEncodableFeatureVectorizer("y", categories=range(100))
    with pytest.raises(BatchError, match=r"19 \(int\), \.\.\. \(100 in all\)$"):
        vec.index(-1)


def test_integer_classes_serialise_and_come_back_as_ints():
    meta = OneHotEncodedFeatureVectorizer("y", categories=(np.int64(3), 7)).metadata()
    assert meta.classes == (3, 7) and meta.shape == (2,)
    back = VectorizerMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert back == meta and all(type(c) is int for c in back.classes)


def test_a_none_dimension_is_stored_as_minus_one():
    @dataclass
    class Ragged(FeatureVectorizer):
        def encode(self, value: Any) -> torch.Tensor:
            return torch.zeros(len(value), 2)

        @property
        def shape(self) -> tuple[int | None, ...]:
            return (None, 2)

    meta = Ragged("r").metadata()
    assert meta.shape == (-1, 2)
    assert VectorizerMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))).shape == (-1, 2)
    assert VectorizerMetadata.from_dict({**meta.to_dict(), "shape": [None, 2]}).shape == (-1, 2)


@dataclass
class _OneHotByHand(CategoryEncodableFeatureVectorizer):
    """A user's subclass that overrides ``encode`` alone."""

    def encode(self, value: Any) -> torch.Tensor:
        return torch.full((2,), float(self.index(value)))


@dataclass
class _Doubling(FeatureVectorizer):
    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor(2.0 * value)


@pytest.mark.parametrize(
    ("vectorizer", "values", "many"),
    [
        (CategoryEncodableFeatureVectorizer("c", categories=("a", "b")), ["b", "a", "b"], True),
        (CategoryEncodableFeatureVectorizer("c", categories=range(3)), [2, np.int64(0)], True),
        (
            CategoryEncodableFeatureVectorizer("c", categories=(0, 1, True, "1")),
            [0, 1, True, "1", np.int64(1), np.bool_(True), np.str_("1")],
            True,
        ),
        (OneHotEncodedFeatureVectorizer("o", categories=("a", "b", "c")), ["c", "a"], True),
        (SeriesFeatureVectorizer("s", dims=3), [[1, 2.5, 3], np.arange(3.0)], True),
        (SeriesFeatureVectorizer("s", dims=0), [[], []], True),
        (TensorFeatureVectorizer("t", shape=(2,), dtype="uint8"), [[1, 2], np.ones(2)], True),
        (  # rows already tensors of its dtype and shape: stacked as they are
            TensorFeatureVectorizer("t", shape=(3,)),
            [torch.tensor([1.0, float("nan"), -0.0]), torch.ones(3, requires_grad=True)],
            True,
        ),
        (TensorFeatureVectorizer("t", shape=(2,)), [torch.tensor([1, 2]), torch.ones(2)], True),
        (  # a sparse row: assembled, not stacked
            TensorFeatureVectorizer("t", shape=(2,)),
            [torch.ones(2).to_sparse(), torch.ones(2)],
            True,
        ),
        (TensorFeatureVectorizer("t", shape=(2, 1)), [torch.ones(2, 1), torch.zeros(2, 1)], True),
        (MultiLabelFeatureVectorizer("m", categories=("a", "b")), [["a"], ["a", "b"]], False),
        (_OneHotByHand("h", categories=("a", "b")), ["b", "a"], False),
        (_Doubling("d"), [1.0, 2.0], False),
    ],
)
def test_encode_many_gives_the_stacked_encodes(vectorizer, values, many):
    # where it is not written for the class's encode, it is the stacked encodes themselves
    assert encodes_many(type(vectorizer)) is many
    stacked = torch.stack([vectorizer.encode(v) for v in values])
    got = vectorizer.encode_many(values)
    assert got.dtype == stacked.dtype and got.shape == stacked.shape
    assert got.detach().numpy().tobytes() == stacked.detach().numpy().tobytes()


@pytest.mark.parametrize(
    ("vectorizer", "bad"),
    [
        (CategoryEncodableFeatureVectorizer("c", categories=("a", "b")), "z"),
        (CategoryEncodableFeatureVectorizer("c", categories=("a", "b")), ["a"]),
        (CategoryEncodableFeatureVectorizer("c", categories=(0, 1)), 1.0),
        (SeriesFeatureVectorizer("s", dims=2), [1, 2, 3]),
        (TensorFeatureVectorizer("t", shape=(2,)), [1, 2, 3]),
    ],
)
def test_encode_many_refuses_what_encode_refuses(vectorizer, bad):
    with pytest.raises(BatchError):
        vectorizer.encode(bad)
    with pytest.raises(BatchError):
        first = vectorizer.categories[0] if hasattr(vectorizer, "categories") else [1, 2]
        vectorizer.encode_many([first, bad])
