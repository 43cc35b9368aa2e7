"""The client batch: states, attribute access, labels, device copies and the text dump."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from batchstash.client import (
    Batch,
    BatchError,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    TorchConfig,
    VectorizerMetadata,
    wire,
)

CLASSES = ("setosa", "versicolor", "virginica")
MAPPING = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "m", (FieldFeatureMapping("label", "ilabel"), FieldFeatureMapping("x", "series"))
        )
    ],
)


def _metadata(label_vectorizer: VectorizerMetadata | None = None) -> BatchMetadata:
    label = label_vectorizer or VectorizerMetadata("ilabel", "Cat", dtype="int64", classes=CLASSES)
    fields = {
        "label": BatchFieldMetadata(MAPPING.field("label"), label),
        "x": BatchFieldMetadata(MAPPING.field("x"), VectorizerMetadata("series", "S", shape=(2,))),
    }
    return BatchMetadata("p.Point", "p.Batch", MAPPING, fields)


def _decoded(label: torch.Tensor | None = None, metadata: BatchMetadata | None = None) -> Batch:
    tensors = {"x": torch.arange(6, dtype=torch.float32).reshape(3, 2)}
    if label is not None:
        tensors["label"] = label
    meta = {
        "batchstash.split": "dev",
        "batchstash.batch_id": "4",
        "batchstash.data_point_ids": '["a","b","c"]',
    }
    payload = wire.decode(bytearray(wire.encode(tensors, meta)))
    return Batch.from_payload(payload, metadata or _metadata(), TorchConfig("cpu"))


def test_states_table():
    assert Batch.STATES == {
        "d": "decoded",
        "e": "encoded",
        "k": "deallocated",
        "n": "nascent",
        "t": "memory copied",
    }


def test_decoded_batch_from_payload():
    batch = _decoded(torch.tensor([2, 0, 1]))
    assert (batch.state, batch.state_name) == ("d", "decoded")
    assert (batch.id, batch.split_name, len(batch)) == (4, "dev", 3)
    assert batch.data_point_ids == ("a", "b", "c")
    assert batch.data_points is None
    assert batch.batch_stash is None
    assert sorted(batch) == ["label", "x"]
    assert "x" in batch and "y" not in batch
    assert batch["x"].shape == (3, 2)
    assert batch.attributes["label"].tolist() == [2, 0, 1]
    with pytest.raises(KeyError, match=r"batch has no attribute 'y' \(has: label, x\)"):
        batch["y"]


def test_labels_of_a_decoded_batch():
    batch = _decoded(torch.tensor([2, 0, 1]))
    assert batch.has_labels
    assert batch.get_label_feature_vectorizer().feature_id == "ilabel"
    assert batch.get_label_classes() == ["virginica", "setosa", "versicolor"]


def test_one_hot_labels_use_argmax():
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert _decoded(one_hot).get_label_classes() == ["versicolor", "virginica", "setosa"]


def test_prediction_batch_has_no_labels():
    batch = _decoded()
    assert not batch.has_labels
    with pytest.raises(KeyError, match="no attribute 'label'"):
        batch.get_label_classes()


def test_label_vectorizer_without_classes():
    batch = _decoded(torch.tensor([0, 0, 0]), _metadata(VectorizerMetadata("ilabel", "Cat")))
    with pytest.raises(BatchError, match="label vectorizer 'ilabel' lists no classes"):
        batch.get_label_classes()


def test_batch_without_metadata():
    batch = Batch(None, 0, "train", None)
    assert batch.mapping is None
    assert not batch.has_labels
    with pytest.raises(BatchError, match="no metadata for its label"):
        batch.get_label_feature_vectorizer()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(["a", "b"], True), (["a", None], False), ([None, None], False), ([], False)],
)
def test_nascent_has_labels(labels, expected):
    points = [SimpleNamespace(id=i, label=lab) for i, lab in enumerate(labels)]
    batch = Batch(None, 0, "train", points, metadata=_metadata())
    assert batch.state_name == "nascent"
    assert batch.data_point_ids == tuple(range(len(labels)))
    assert batch.has_labels is expected


def test_to_returns_a_memory_copied_clone_sharing_tensors_already_there():
    batch = _decoded(torch.tensor([2, 0, 1]))

    copy = batch.to("cpu")

    assert copy is not batch
    assert (copy.state_name, batch.state_name) == ("memory copied", "decoded")
    # the tensors are on the CPU already: shared, not copied
    for name in ("x", "label"):
        assert copy[name].data_ptr() == batch[name].data_ptr()
    assert copy.attributes is not batch.attributes
    copy.attributes.pop("x")
    assert "x" in batch
    assert copy.data_point_ids == batch.data_point_ids
    assert copy.get_label_classes() == batch.get_label_classes()


def test_to_another_device_copies():
    batch = _decoded(torch.tensor([2, 0, 1]))
    copy = batch.to("meta")  # a device every build has: a real copy, without the data
    assert copy["x"].device.type == "meta" and batch["x"].device.type == "cpu"
    assert copy.state_name == "memory copied"


def test_deallocate():
    batch = _decoded(torch.tensor([2, 0, 1]))
    batch.deallocate()
    assert batch.state_name == "deallocated"
    assert batch.attributes == {}
    with pytest.raises(BatchError, match="batch dev/4 is deallocated"):
        batch.to("cpu")


def test_write_and_repr():
    batch = _decoded(torch.tensor([2, 0, 1]))
    out = io.StringIO()
    batch.write(depth=1, writer=out)
    assert out.getvalue().splitlines() == [
        "  Batch: id=4, split=dev, size=3, state=decoded",
        # a decoded batch lists its tensors in payload (sorted name) order
        "    label: shape=(3,), dtype=torch.int64, device=cpu",
        "    x: shape=(3, 2), dtype=torch.float32, device=cpu",
    ]
    assert repr(batch) == (
        "Batch(id=4, split='dev', state='decoded', attributes=[label(3,), x(3, 2)])"
    )


def test_write_data_points_of_a_nascent_batch():
    points = [SimpleNamespace(id=7, label="a")]
    out = io.StringIO()
    Batch(None, 1, "train", points).write(writer=out, include_data_points=True)
    assert out.getvalue().splitlines() == [
        "Batch: id=1, split=train, size=1, state=nascent",
        "  data points:",
        "    namespace(id=7, label='a')",
    ]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_is_a_pinned_non_blocking_copy():
    batch = _decoded(torch.tensor([2, 0, 1]))
    copy = batch.to("cuda")
    assert copy["x"].device.type == "cuda"
    assert torch.equal(copy["x"].cpu(), batch["x"])
    assert batch["x"].device.type == "cpu"
