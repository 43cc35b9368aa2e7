"""BatchDataset: worker shards, DataLoader with 0 and 2 workers on MockTransport, resume."""

from __future__ import annotations

import functools
import os
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from batchstash.client import Batch, BatchDataset, EpochPlan
from batchstash.client.dataset import worker_shard

from .fakeserver import FINGERPRINT, URL, FakeServer, make_client, make_tensors


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_shards_are_disjoint_and_round_robin(n: int, workers: int) -> None:
    ids = [10 + i for i in range(n)]
    shards = [worker_shard(ids, w, workers) for w in range(workers)]
    assert sorted(b for s in shards for b in s) == sorted(ids)
    # a DataLoader takes one item from each worker in turn: that gives back the rank's order
    interleaved = [s[i] for i in range(max(map(len, shards))) for s in shards if i < len(s)]
    assert interleaved == ids
    with pytest.raises(ValueError, match="worker 3"):
        worker_shard(ids, 3, 3)


def dataset(server: FakeServer, **kwargs: object) -> BatchDataset:
    return BatchDataset(
        URL, "train", client_factory=functools.partial(make_client, server), **kwargs
    )  # type: ignore[arg-type]


def rank_ids(n: int, **kwargs: object) -> list[int]:
    rank = int(kwargs.pop("rank", 0))  # type: ignore[call-overload]
    return EpochPlan.create(FINGERPRINT, "train", range(n), **kwargs).rank_ids(rank)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_yields_the_rank_list_once(num_workers: int) -> None:
    server = FakeServer({"train": range(11)})
    ds = dataset(server, epoch=3, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    assert [b.id for b in batches] == rank_ids(11, epoch=3, rank=1, world_size=2)
    assert len(ds) == len(batches) == 6
    first = batches[0]
    assert torch.equal(first["x"], make_tensors("train", first.id)["x"])
    assert first.metadata is not None and first.metadata.label_classes == ("a", "b", "c")


def test_dataloader_two_ranks_two_workers_cover_the_epoch() -> None:
    server = FakeServer({"train": range(12)})
    seen = []
    for rank in range(2):
        ds = dataset(server, epoch=1, rank=rank, world_size=2, prefetch=1)
        seen += [b.id for b in DataLoader(ds, batch_size=None, num_workers=2)]
    assert Counter(seen) == Counter(range(12))


def test_dataloader_as_dict_and_attributes() -> None:
    server = FakeServer({"train": range(4)})
    ds = dataset(server, as_dict=True, attributes=["x"], shuffle=False)
    items = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert all(isinstance(i, dict) and list(i) == ["x"] for i in items)
    assert [i["x"].shape for i in items] == [torch.Size([4, 3])] * 4
    assert torch.equal(items[2]["x"], make_tensors("train", 2)["x"])


def _scaled(item: dict[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    return os.getpid(), item["x"] * 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_transform_runs_in_the_reading_process(num_workers: int) -> None:
    server = FakeServer({"train": range(4)})
    ds = dataset(server, as_dict=True, shuffle=False, transform=_scaled)
    items = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
    assert [x.tolist() for _, x in items] == [
        (make_tensors("train", i)["x"] * 2).tolist() for i in range(4)
    ]
    pids = {pid for pid, _ in items}
    if num_workers == 0:
        assert pids == {os.getpid()}
    else:  # each worker transforms its own shard
        assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.slow
def test_dataloader_spawned_workers() -> None:
    server = FakeServer({"train": range(6)})
    ds = dataset(server, epoch=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert [b.id for b in loader] == rank_ids(6, epoch=2)


def test_set_epoch_changes_the_order_and_drops_the_state() -> None:
    server = FakeServer({"train": range(10)})
    ds = dataset(server, epoch=0)
    epoch0 = [b.id for b in ds]
    ds.state = ds.state_dict(4)
    ds.set_epoch(1)
    assert ds.state is None
    epoch1 = [b.id for b in ds]
    assert epoch0 == rank_ids(10, epoch=0) and epoch1 == rank_ids(10, epoch=1)
    assert epoch0 != epoch1


@pytest.mark.parametrize("new_world_size", [2, 3])
def test_dataset_resume_from_position(new_world_size: int) -> None:
    server = FakeServer({"train": range(12)})
    loaders = [
        DataLoader(dataset(server, epoch=5, rank=r, world_size=2), batch_size=None, num_workers=2)
        for r in range(2)
    ]
    iters = [iter(loader) for loader in loaders]
    read = [next(it).id for _ in range(2) for it in iters]
    state = dataset(server, epoch=5, rank=0, world_size=2).state_dict(2)
    assert state["position"] == 2 and state["epoch"] == 5
    del iters
    rest = []
    for rank in range(new_world_size):
        ds = dataset(server, epoch=5, rank=rank, world_size=new_world_size, state=state)
        rest += [b.id for b in DataLoader(ds, batch_size=None, num_workers=2)]
    assert set(read) | set(rest) == set(range(12))
    assert not set(read) & set(rest)
    with pytest.raises(ValueError, match="position 7"):
        dataset(server, epoch=5, world_size=2).state_dict(7)


def test_unpadded_ranks_read_every_batch_exactly_once_through_dataloaders() -> None:
    server = FakeServer({"train": range(7)})
    per_rank = [
        [
            b.id
            for b in DataLoader(
                dataset(server, rank=r, world_size=3, pad_ranks=False, shuffle=False),
                batch_size=None,
                num_workers=2,
            )
        ]
        for r in range(3)
    ]
    assert sorted(b for ids in per_rank for b in ids) == list(range(7))
    assert [len(ids) for ids in per_rank] == [3, 2, 2]
    assert len(dataset(server, rank=2, world_size=3, pad_ranks=False)) == 2
    assert len(dataset(server, rank=2, world_size=3)) == 3  # padded by default
