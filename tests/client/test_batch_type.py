"""batch_type: a user's Batch subclass is what every read builds (client, iterator, dataset)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from batchstash.client import Batch, BatchClient, BatchDataset

from .fakeserver import URL, FakeServer, make_client, make_tensors


class IrisBatch(Batch):
    """A user's batch: a property over the tensors and one over the metadata."""

    @property
    def features(self) -> torch.Tensor:
        return self["x"]

    @property
    def class_names(self) -> list[str]:
        return self.get_label_classes()


def expected_classes(batch_id: int) -> list[str]:
    return [("a", "b", "c")[int(i)] for i in make_tensors("train", batch_id)["label"]]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"train": range(6)})


def test_client_builds_the_subclass(server: FakeServer) -> None:
    client = make_client(server, batch_type=IrisBatch)
    assert client.batch_type is IrisBatch
    batch = client.batch("train", 2)
    assert type(batch) is IrisBatch and batch.state_name == "decoded"
    assert isinstance(batch, IrisBatch)
    assert torch.equal(batch.features, make_tensors("train", 2)["x"])
    assert batch.class_names == expected_classes(2)
    many = client.batches("train", [4, 5])
    assert [type(b) for b in many] == [IrisBatch, IrisBatch]
    assert many[1].class_names == expected_classes(5)
    copied = client.batch("train", 1, device="cpu")
    assert type(copied) is IrisBatch and copied.state_name == "memory copied"
    assert copied.class_names == expected_classes(1)


def test_iter_batches_yields_the_subclass(server: FakeServer) -> None:
    client = make_client(server, batch_type=IrisBatch)
    got = list(client.iter_batches("train", epoch=1, rank=0, world_size=1, prefetch=3))
    assert len(got) == 6 and {type(b) for b in got} == {IrisBatch}
    assert all(b.class_names == expected_classes(b.id) for b in got)


def test_default_is_the_plain_batch(server: FakeServer) -> None:
    assert type(make_client(server).batch("train", 0)) is Batch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_through_the_client_factory(server: FakeServer, num_workers: int) -> None:
    factory = functools.partial(make_client, server, batch_type=IrisBatch)
    ds = BatchDataset(URL, "train", rank=0, world_size=1, client_factory=factory)
    got = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
    assert {type(b) for b in got} == {IrisBatch}
    assert all(b.class_names == expected_classes(b.id) for b in got)


def test_dataset_batch_type_reaches_the_default_client() -> None:
    ds = BatchDataset("http://stash.test", "train", rank=0, world_size=1, batch_type=IrisBatch)
    with ds.client_factory() as client:
        assert client.batch_type is IrisBatch


@pytest.mark.parametrize("bad", [int, dict, "IrisBatch", Batch(None, 0, "train", ()), None])
def test_anything_but_a_batch_subclass_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="batch_type must be batchstash.client.Batch or a subclass"):
        BatchClient(URL, batch_type=bad)
    if bad is not None:  # None: the dataset's "not given"
        with pytest.raises(TypeError, match="batch_type must be"):
            BatchDataset(URL, "train", rank=0, world_size=1, batch_type=bad)


def test_dataset_refuses_batch_type_with_a_client_factory(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="pass batch_type to the BatchClient your client_factory"):
        BatchDataset(
            URL,
            "train",
            rank=0,
            world_size=1,
            batch_type=IrisBatch,
            client_factory=functools.partial(make_client, server),
        )
