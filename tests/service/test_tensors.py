"""Array-valued vectorizers: n-d tensors of any dtype (padded where they vary), multi-label."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    VectorizerError,
)
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    MultiLabelFeatureVectorizer,
    TensorFeatureVectorizer,
)

GRID = [[1, 2], [3, 4]]


def _object_rows():
    """A nested list column as pyarrow gives it: an object array of arrays."""
    return pa.array([GRID]).to_numpy(zero_copy_only=False)[0]


@pytest.mark.parametrize(
    "value",
    [
        GRID,
        (np.array([1, 2]), np.array([3, 4])),
        np.array(GRID, dtype=np.int16),
        np.array(GRID, dtype=np.float64),
        _object_rows(),
        torch.tensor(GRID, dtype=torch.int32),
        torch.tensor(GRID, dtype=torch.bfloat16),
    ],
    ids=["lists", "tuple-of-arrays", "int16", "float64", "pyarrow-object", "tensor", "bf16"],
)
@pytest.mark.parametrize("dtype", [torch.float32, "float32", "int64", "uint8", torch.bfloat16])
def test_encode_gives_exactly_its_shape_and_dtype(value, dtype):
    vec = TensorFeatureVectorizer("grid", shape=(2, 2), dtype=dtype)
    out = vec.encode(value)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert out.dtype == expected == vec.dtype and out.shape == (2, 2)
    assert out.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("value", "shape", "expected"),
    [(np.float64(2.5), (), 2.5), (3, (), 3.0), ([7.0], 1, [7.0]), ([[1.0]], [1, None], [[1.0]])],
)
def test_scalars_and_shape_forms(value, shape, expected):
    out = TensorFeatureVectorizer("x", shape=shape).encode(value)
    assert out.dtype == torch.float32 and out.tolist() == expected


def test_the_tensor_is_a_writable_copy_of_a_read_only_array():
    source = np.arange(64, dtype=np.float32).reshape(8, 8)
    source.flags.writeable = False
    vec = TensorFeatureVectorizer("img", shape=(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable array
        one, batch = vec.encode(source), vec.encode_batch([source, source])
    for tensor in (one, batch[1]):
        assert not np.shares_memory(tensor.numpy(), source)
        tensor += 1  # writable
    assert source[0, 0] == 0 and one[0, 0] == 1


def test_a_batch_of_images_stacks_into_one_tensor():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(256)]
    out = TensorFeatureVectorizer("img", shape=(8, 8), dtype="uint8").encode_batch(images)
    assert out.shape == (256, 8, 8) and out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), np.stack(images))


@pytest.mark.parametrize(
    "rows",
    [
        [torch.arange(4.0) + i for i in range(5)],  # plain float32 rows: stacked
        [torch.arange(4.0), torch.arange(4, dtype=torch.float64)],  # a float64 row among them
        [torch.nn.Parameter(torch.arange(4.0)), torch.arange(4.0)],  # a tensor subclass
        [torch.arange(4.0), [1.0, 2.0, 3.0, 4.0]],  # a row that is not a tensor
        [torch.arange(8.0)[::2], torch.arange(4.0)],  # a strided view
    ],
)
def test_tensor_rows_encode_as_their_values_whichever_path_they_take(rows):
    vec = TensorFeatureVectorizer("x", shape=(4,))
    out = vec.encode_many(rows)
    want = np.stack(
        [
            np.asarray(r, dtype=np.float32)
            for r in (x.tolist() if isinstance(x, torch.Tensor) else x for x in rows)
        ]
    )
    assert out.dtype == torch.float32 and out.shape == (len(rows), 4)
    assert np.array_equal(out.numpy(), want) and not out.requires_grad


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ([torch.zeros(4), torch.zeros(3)], r"shape"),
        ([torch.zeros(2, 2), torch.zeros(2, 2)], r"shape"),
    ],
)
def test_tensor_rows_of_the_wrong_shape_are_refused(rows, error):
    with pytest.raises(BatchError, match=error):
        TensorFeatureVectorizer("x", shape=(4,)).encode_many(rows)


@pytest.mark.parametrize(
    ("shape", "value", "got"),
    [((8, 8), np.zeros((8, 7)), r"\(8, 7\)"), ((3,), [[1, 2, 3]], r"\(1, 3\)"), ((2,), 5, r"\(\)")],
)
def test_a_wrong_shape_names_the_feature_and_both_shapes(shape, value, got):
    vec = TensorFeatureVectorizer("img", shape=shape)
    want = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    with pytest.raises(BatchError, match=rf"^img: expected shape \({want}\), got {got}$"):
        vec.encode(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["a", "b"], "values of dtype <U1 are not numbers"),
        ([[1, 2], [3]], "not an array"),
        ({"a": 1}, "values of dtype object are not numbers|not an array"),
    ],
)
def test_values_that_are_no_numeric_array_are_refused(value, message):
    with pytest.raises(BatchError, match=f"^v: ({message})"):
        TensorFeatureVectorizer("v", shape=(2,)).encode(value)


def test_encode_batch_right_pads_varying_dims_with_the_pad_value():
    vec = TensorFeatureVectorizer("seq", shape=(-1, 2), dtype="int64", pad_value=-1)
    out = vec.encode_batch([[[1, 2]], np.array([[3, 4], [5, 6], [7, 8]]), np.zeros((0, 2))])
    assert out.dtype == torch.int64 and out.shape == (3, 3, 2)
    assert out.tolist() == [
        [[1, 2], [-1, -1], [-1, -1]],
        [[3, 4], [5, 6], [7, 8]],
        [[-1, -1], [-1, -1], [-1, -1]],
    ]
    assert vec.shape == (-1, 2) and vec.metadata().shape == (-1, 2)
    assert vec.metadata().extra == {"pad_value": -1}  # pads: its own encode_batch, no per_row
    assert TensorFeatureVectorizer("s", shape=(None, None)).shape == (-1, -1)
    empty = TensorFeatureVectorizer("s", shape=(-1,)).encode_batch([np.array([], dtype=object)])
    assert empty.shape == (1, 0) and empty.dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "dtype", "pad", "message"),
    [
        ((2, 0.5), "float32", 0, "takes ints >= 0, -1 or None"),
        ((-2,), "float32", 0, "takes ints >= 0, -1 or None"),
        ((2,), "float99", 0, "unknown dtype 'float99'"),
        ((2,), "Tensor", 0, "unknown dtype 'Tensor'"),
        ((-1,), "uint8", -1, "pad_value -1 does not fit torch.uint8"),
        ((-1,), "int64", 0.5, "pad_value 0.5 does not fit torch.int64"),
        ((-1,), "float16", 1e6, "pad_value 1000000.0 overflows torch.float16"),
        ((-1,), "float32", "0", "pad_value '0' is not a number"),
    ],
)
def test_bad_configurations_are_refused(shape, dtype, pad, message):
    with pytest.raises(BatchError, match=message):
        TensorFeatureVectorizer("v", shape=shape, dtype=dtype, pad_value=pad)


def test_config_is_json_and_follows_shape_dtype_and_pad():
    base = TensorFeatureVectorizer("v", shape=(-1, 3), dtype="float32")
    assert base.config() == TensorFeatureVectorizer("v", (None, 3), torch.float32, 0).config()
    assert json.loads(json.dumps(base.config()))["dtype"] == "torch.float32"
    others = [
        TensorFeatureVectorizer("v", shape=(-1, 4)),
        TensorFeatureVectorizer("v", shape=(-1, 3), dtype="float64"),
        TensorFeatureVectorizer("v", shape=(-1, 3), pad_value=-1),
    ]
    configs = [json.dumps(v.config(), sort_keys=True) for v in [base, *others]]
    assert len(set(configs)) == 4


def _stash(path, vectorizer, records, is_agg=False):
    mapping = BatchFeatureMapping(
        None, [ManagerFeatureMapping("m", [FieldFeatureMapping("x", "v", is_agg=is_agg)])]
    )
    container = MemorySplitStashContainer(records, {"train": list(records)})
    managers = [FeatureVectorizerManager("m", [vectorizer])]
    return BatchStash(path, container, managers, mapping, batch_size=len(records))


def test_the_store_fingerprint_follows_shape_dtype_and_pad(tmp_path):
    records = {i: {"x": [float(i)] * 3} for i in range(4)}
    hashes = {
        _stash(tmp_path / "s", TensorFeatureVectorizer("v", **kw), records).config_hash
        for kw in (
            {"shape": (3,)},
            {"shape": (-1,)},
            {"shape": (3,), "dtype": "float64"},
            {"shape": (-1,), "pad_value": 9},
        )
    }
    assert len(hashes) == 4


def test_a_stash_pads_an_is_agg_field_and_refuses_a_plain_one(tmp_path):
    records = {i: {"x": list(range(1, i + 2))} for i in range(3)}
    vec = TensorFeatureVectorizer("v", shape=(-1,), dtype="int64", pad_value=0)
    stash = _stash(tmp_path / "agg", vec, records, is_agg=True)
    assert stash.prime() == 1
    batch = stash.load("train", 0)
    assert batch["x"].tolist() == [
        list(range(1, i + 2)) + [0] * (2 - i) for i in batch.data_point_ids
    ]
    plain = _stash(tmp_path / "plain", vec, records)
    with pytest.raises(
        VectorizerError, match=r"varies: set is_agg=True on the field mapping of 'x'"
    ):
        plain.prime()


# multi-label --------------------------------------------------------------------------------

TAGS = ("cat", "dog", "bird")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["cat", "bird"], [1, 0, 1]),
        (("dog",), [0, 1, 0]),
        ({"bird", "dog", "cat"}, [1, 1, 1]),
        (np.array(["dog", "cat"]), [1, 1, 0]),
        (pa.array([["bird"]]).to_numpy(zero_copy_only=False)[0], [0, 0, 1]),
        ([], [0, 0, 0]),
        (["cat", "cat"], [1, 0, 0]),
    ],
)
def test_multi_label_is_k_hot(labels, expected):
    out = MultiLabelFeatureVectorizer("tags", categories=TAGS).encode(labels)
    assert out.dtype == torch.float32 and out.tolist() == expected


def test_multi_label_matches_labels_as_the_category_vectorizer_does():
    vec = MultiLabelFeatureVectorizer("codes", categories=(3, 1, 2))
    assert vec.encode(np.array([1, 2], dtype=np.int64)).tolist() == [0, 1, 1]
    single = CategoryEncodableFeatureVectorizer("codes", categories=(3, 1, 2))
    with pytest.raises(BatchError) as multi_error:
        vec.encode([1, "2"])
    with pytest.raises(BatchError) as single_error:
        single.encode("2")
    assert str(multi_error.value) == str(single_error.value)
    assert "unknown class '2' (str)" in str(multi_error.value)


@pytest.mark.parametrize("value", ["cat", b"cat", 3, np.array([["cat"]])])
def test_multi_label_refuses_what_is_not_an_iterable_of_labels(value):
    with pytest.raises(BatchError, match="^tags: "):
        MultiLabelFeatureVectorizer("tags", categories=TAGS).encode(value)


def test_multi_label_metadata_lists_the_classes():
    meta = MultiLabelFeatureVectorizer("tags", categories=TAGS).metadata()
    assert meta.classes == TAGS and meta.shape == (3,) and meta.dtype == "float32"
    assert meta.extra == {"multi_label": True, "per_row": True}
