"""Batch metadata: vectorizer and field metadata, JSON round trips and network sizing."""

from __future__ import annotations

import json

import pytest
import torch

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    MetadataNetworkSettings,
    VectorizerMetadata,
)

LABEL = FieldFeatureMapping("label", "ilabel", True)
DIMS = FieldFeatureMapping("flower_dims", "iseries")
TOKENS = FieldFeatureMapping("tokens", "token_ids", is_agg=True)
EXTRA = FieldFeatureMapping("extra", "extra_vec")
MAPPING = BatchFeatureMapping(
    "label",
    [ManagerFeatureMapping("m", (LABEL, DIMS)), ManagerFeatureMapping("t", (TOKENS, EXTRA))],
)
VECTORIZERS = {
    "label": VectorizerMetadata(
        "ilabel", "CategoryEncodableFeatureVectorizer", "category", "int64", (), ("a", "b", "c")
    ),
    "flower_dims": VectorizerMetadata(
        "iseries", "SeriesFeatureVectorizer", "series", "float32", (4,)
    ),
    "tokens": VectorizerMetadata(
        "token_ids",
        "TokenIdFeatureVectorizer",
        "ids",
        "int64",
        (-1,),
        vocab_size=17,
        extra={"pad_id": 0, "unk_id": 1},
    ),
    "extra": VectorizerMetadata("extra_vec", "X", "x", "float16", (2, 6)),
}


@pytest.fixture
def metadata() -> BatchMetadata:
    fields = {f.attr: BatchFieldMetadata(f, VECTORIZERS[f.attr]) for f in MAPPING.fields}
    return BatchMetadata("pkg.Point", "pkg.Batch", MAPPING, fields)


def test_field_metadata(metadata):
    dims = metadata.fields_by_attribute["flower_dims"]
    assert dims.shape == (4,)
    assert dims.dtype == "float32"
    assert dims.field is DIMS
    assert metadata.label_classes == ("a", "b", "c")


def test_round_trip_through_json(metadata):
    data = json.loads(json.dumps(metadata.to_dict()))
    assert data["fields"]["tokens"]["vectorizer"]["shape"] == [-1]
    assert data["fields"]["label"]["vectorizer"]["classes"] == ["a", "b", "c"]
    assert data["mapping"]["label_attribute_name"] == "label"

    again = BatchMetadata.from_dict(data)
    assert again == metadata
    assert again.fields_by_attribute["tokens"].vectorizer.extra == {"pad_id": 0, "unk_id": 1}
    assert again.to_dict() == metadata.to_dict()


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", torch.float32), ("int64", torch.int64), ("bfloat16", torch.bfloat16)],
)
def test_vectorizer_torch_dtype(dtype, expected):
    assert VectorizerMetadata("f", "n", dtype=dtype).torch_dtype is expected


@pytest.mark.parametrize("dtype", ["nope", "Tensor"])
def test_vectorizer_unknown_dtype(dtype):
    with pytest.raises(BatchError, match=f"unknown dtype '{dtype}'"):
        _ = VectorizerMetadata("f", "n", dtype=dtype).torch_dtype


@pytest.mark.parametrize(
    ("attributes", "width"),
    [
        (["flower_dims"], 4),
        (["label"], 1),
        (["flower_dims", "label"], 5),
        (["extra", "flower_dims"], 10),
        ([], 0),
    ],
)
def test_input_width(metadata, attributes, width):
    assert MetadataNetworkSettings(metadata).input_width(attributes) == width


def test_network_settings(metadata):
    net = MetadataNetworkSettings(metadata)
    assert net.num_labels == 3
    assert net.vocab_size("tokens") == 17
    with pytest.raises(BatchError, match="field 'tokens' has a variable width"):
        net.input_width(["flower_dims", "tokens"])
    with pytest.raises(BatchError, match="field 'flower_dims' has no vocabulary"):
        net.vocab_size("flower_dims")
    with pytest.raises(BatchError, match="no field 'nope' in the batch metadata"):
        net.input_width(["nope"])


def test_num_labels_without_classes(metadata):
    fields = dict(metadata.fields_by_attribute)
    fields["label"] = BatchFieldMetadata(LABEL, VECTORIZERS["flower_dims"])
    net = MetadataNetworkSettings(BatchMetadata("p", "b", MAPPING, fields))
    assert net.batch_metadata.label_classes is None
    with pytest.raises(BatchError, match="lists no classes"):
        _ = net.num_labels
