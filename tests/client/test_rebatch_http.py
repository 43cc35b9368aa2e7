"""``shuffle_window`` over HTTP: ``iter_batches`` checks the fields, DataLoader workers, resumes."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from batchstash.client import Batch, BatchDataset, BatchError
from batchstash.client.redeal import RedealtBatchId

from .fakeserver import URL, FakeServer, make_client, make_tensors

N = 13


def redealable(server: FakeServer) -> FakeServer:
    """``server`` whose ``label`` vectorizer (is_agg) declares independent rows."""
    meta = server.metadata
    label = meta.fields_by_attribute["label"]
    vec = replace(label.vectorizer, extra={"per_row": True})
    fields = {**meta.fields_by_attribute, "label": replace(label, vectorizer=vec)}
    server.metadata = replace(meta, fields_by_attribute=fields)
    return server


def rows(batch: Batch) -> list[str]:
    """The batch's data point ids, each row checked against the stored row it came from."""
    ids = list(batch.data_point_ids)
    for row, dp in enumerate(ids):
        split, b, i = dp.split("-")
        stored = make_tensors(split, int(b))
        assert torch.equal(batch["x"][row], stored["x"][int(i)])
        assert torch.equal(batch["label"][row], stored["label"][int(i)])
    return ids


def every_row(server: FakeServer) -> Counter[str]:
    return Counter(f"train-{b}-{i}" for b in server.splits["train"] for i in range(server.rows))


def dataset(server: FakeServer, **kwargs: object) -> BatchDataset:
    factory = functools.partial(make_client, server)
    return BatchDataset(URL, "train", client_factory=factory, **kwargs)  # type: ignore[arg-type]


def test_iter_batches_names_a_field_it_cannot_redeal_before_reading() -> None:
    server = FakeServer({"train": range(N)})
    client = make_client(server)
    with pytest.raises(BatchError, match=r"field\(s\) 'label' \(is_agg: vectorizer 'flabel'"):
        client.iter_batches("train", shuffle_window=4)
    assert server.batch_requests() == []
    it = client.iter_batches("train", shuffle_window=4, attributes=["x"])  # left out: fine
    assert sum(len(b) for b in it) == N * server.rows


@pytest.mark.parametrize("prefetch", [0, 6])
def test_iter_batches_redeals_every_row_once(prefetch: int) -> None:
    server = redealable(FakeServer({"train": range(N)}))
    client = make_client(server)
    batches = list(client.iter_batches("train", shuffle_window=4, epoch=2, prefetch=prefetch))
    assert len(batches) == N and all(isinstance(b.id, RedealtBatchId) for b in batches)
    assert Counter(dp for b in batches for dp in rows(b)) == every_row(server)
    stored = {frozenset(f"train-{b}-{i}" for i in range(server.rows)) for b in range(N)}
    assert sum(frozenset(b.data_point_ids) in stored for b in batches) <= 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_yield_the_rank_sequence(num_workers: int) -> None:
    server = redealable(FakeServer({"train": range(N)}))
    want = [
        list(b.data_point_ids)
        for b in make_client(server).iter_batches(
            "train", shuffle_window=3, epoch=1, rank=1, world_size=2
        )
    ]
    ds = dataset(server, shuffle_window=3, epoch=1, rank=1, world_size=2, prefetch=2)
    got = [rows(b) for b in DataLoader(ds, batch_size=None, num_workers=num_workers)]
    assert got == want and len(ds) == len(got)


@pytest.mark.parametrize("new_world_size", [1, 2, 3])
def test_dataloader_resume_mid_window_at_any_world_size(new_world_size: int) -> None:
    server = redealable(FakeServer({"train": range(N)}))
    loaders = [
        DataLoader(
            dataset(server, epoch=5, rank=r, world_size=2, shuffle_window=4),
            batch_size=None,
            num_workers=2,
        )
        for r in range(2)
    ]
    iters = [iter(loader) for loader in loaders]
    read = [rows(next(it)) for _ in range(3) for it in iters]
    state = dataset(server, epoch=5, rank=0, world_size=2, shuffle_window=4).state_dict(3)
    assert (state["position"], state["shuffle_window"]) == (3, 4)
    del iters
    rest = []
    for rank in range(new_world_size):
        ds = dataset(server, rank=rank, world_size=new_world_size, state=state)  # W: the state's
        rest.append([rows(b) for b in DataLoader(ds, batch_size=None, num_workers=2)])
    assert len({len(r) for r in rest}) == 1  # equal steps
    seen = Counter(dp for batch in read + [b for r in rest for b in r] for dp in batch)
    assert set(seen) == set(every_row(server))
    # 13 batches on 2 ranks repeat one; re-dealt to other ranks, the remainder rule may add more
    assert sum(seen.values()) - sum(every_row(server).values()) <= server.rows * new_world_size
