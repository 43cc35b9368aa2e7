"""BatchDataset with DataLoader(persistent_workers=True): epochs and resumes reach the workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch.utils.data import DataLoader

from batchstash.client import BatchDataset, EpochPlan, PlanError

from .fakeserver import FINGERPRINT, FakeServer, SocketServer

N = 14


@pytest.fixture
def server() -> Iterator[SocketServer]:
    """A fake server on a real loopback socket: the workers' own clients connect to it."""
    socket_server = SocketServer(FakeServer({"train": range(N)}))
    yield socket_server
    socket_server.kill()


def plan_ids(epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    plan = EpochPlan.create(FINGERPRINT, "train", range(N), epoch=epoch, world_size=world_size)
    return plan.rank_ids(rank)


def persistent(ds: BatchDataset, context: str | None = None) -> DataLoader[object]:
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
    )


def ids(batches: object) -> list[int]:
    return [b.id for b in batches]  # type: ignore[attr-defined]


def test_set_epoch_reaches_persistent_workers(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=1, world_size=2, epoch=0)
    loader = persistent(ds)
    epoch0 = ids(loader)
    workers = loader._iterator  # the same worker processes serve every epoch
    ds.set_epoch(1)
    epoch1 = ids(loader)
    assert loader._iterator is workers
    ds.set_epoch(2)
    epoch2 = ids(loader)
    assert epoch0 == plan_ids(0, 1, 2)
    assert epoch1 == plan_ids(1, 1, 2)
    assert epoch2 == plan_ids(2, 1, 2)
    assert len({tuple(epoch0), tuple(epoch1), tuple(epoch2)}) == 3


def test_load_state_dict_resumes_persistent_workers_mid_epoch(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1)
    loader = persistent(ds)
    ds.set_epoch(3)
    it = iter(loader)
    taken = [next(it).id for _ in range(5)]
    saved = ds.state_dict(5)
    assert (saved["epoch"], saved["position"]) == (3, 5)
    del it
    ds.set_epoch(4)
    assert ids(loader) == plan_ids(4)  # a whole other epoch in between
    ds.load_state_dict(saved)
    assert ds.epoch == 3
    ds.set_epoch(3)  # the usual loop: set_epoch of the resumed epoch keeps the state
    rest = ids(loader)
    assert taken == plan_ids(3)[:5]
    assert rest == plan_ids(3)[5:]
    # from the resume on, positions count from the resume point
    assert ds.state_dict(len(rest))["position"] == N
    ds.set_epoch(4)  # another epoch: the state is dropped
    assert ds.state is None
    assert ids(loader) == plan_ids(4)


def test_a_new_process_resumes_with_load_state_dict(server: SocketServer) -> None:
    first = BatchDataset(server.url, "train", rank=0, world_size=1, epoch=6)
    it = iter(persistent(first))
    taken = [next(it).id for _ in range(4)]
    saved = first.state_dict(4)
    del it
    again = BatchDataset(server.url, "train", rank=0, world_size=1)  # after a restart
    loader = persistent(again)
    again.load_state_dict(saved)
    rest = ids(loader)
    assert taken + rest == plan_ids(6)
    again.set_epoch(7)
    assert ids(loader) == plan_ids(7)


def test_load_state_dict_of_another_world_size_redeals(server: SocketServer) -> None:
    ranks = [BatchDataset(server.url, "train", rank=r, world_size=2, epoch=1) for r in range(2)]
    iters = [iter(persistent(ds)) for ds in ranks]
    read = [next(it).id for _ in range(3) for it in iters]
    saved = ranks[0].state_dict(3)
    del iters
    single = BatchDataset(server.url, "train", rank=0, world_size=1)
    loader = persistent(single)
    assert len(ids(loader)) == N  # workers started on epoch 0
    single.load_state_dict(saved)
    rest = ids(loader)
    assert sorted(read + rest) == list(range(N))


def test_load_state_dict_checks_the_state_now(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1)
    saved = ds.state_dict(2)
    with pytest.raises(PlanError, match="store changed"):
        ds.load_state_dict({**saved, "fingerprint": "0" * 32})
    with pytest.raises(PlanError, match="not a batch iterator state"):
        ds.load_state_dict({"epoch": 1})
    assert ds.state is None and ds.epoch == 0  # a refused state changes nothing


def test_a_state_too_large_for_shared_memory_is_refused(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1)
    with pytest.raises(ValueError, match="does not fit"):
        ds.state = {"epoch": 0, "padding": "x" * 70_000}


@pytest.mark.slow
def test_set_epoch_and_resume_reach_spawned_persistent_workers(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1, epoch=0)
    loader = persistent(ds, "spawn")
    epoch0 = ids(loader)
    ds.set_epoch(1)
    epoch1 = ids(loader)
    ds.load_state_dict({**ds.state_dict(0), "epoch": 2, "plan_hash": _hash(2), "position": 9})
    rest = ids(loader)
    assert (epoch0, epoch1, rest) == (plan_ids(0), plan_ids(1), plan_ids(2)[9:])


def _hash(epoch: int) -> str:
    return EpochPlan.create(FINGERPRINT, "train", range(N), epoch=epoch).hash


# -- each pass is the next epoch (Lightning and accelerate never call set_epoch on a dataset) --


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize(
    ("num_workers", "persistent_workers", "context"),
    [(0, False, None), (2, False, None), (2, True, None), (3, True, None)],
)
def test_each_pass_without_set_epoch_is_the_next_epoch(
    server: SocketServer, num_workers: int, persistent_workers: bool, context: str | None
) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1, epoch=0)
    loader = DataLoader(
        ds,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=persistent_workers,
        multiprocessing_context=context,
    )
    passes = [ids(loader) for _ in range(3)]
    assert passes == [plan_ids(0), plan_ids(1), plan_ids(2)]
    assert ds.current_epoch == 2 and ds.epoch == 3
    ds.set_epoch(7)  # set_epoch names the next pass; the ones after count on
    assert [ids(loader) for _ in range(2)] == [plan_ids(7), plan_ids(8)]


@pytest.mark.slow
def test_each_pass_is_the_next_epoch_with_spawned_workers(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert [ids(loader) for _ in range(2)] == [plan_ids(0, 1, 2), plan_ids(1, 1, 2)]


def test_a_loader_reseeded_alike_every_pass_still_advances(server: SocketServer) -> None:
    import torch

    ds = BatchDataset(server.url, "train", rank=0, world_size=1)
    passes = []
    for _ in range(3):  # the same base seed for every pass's workers
        generator = torch.Generator().manual_seed(1234)
        passes.append(ids(DataLoader(ds, batch_size=None, num_workers=2, generator=generator)))
    assert passes == [plan_ids(0), plan_ids(1), plan_ids(2)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_an_abandoned_pass_still_counts_and_workers_agree(server: SocketServer) -> None:
    ds = BatchDataset(server.url, "train", rank=0, world_size=1)
    loader = persistent(ds)
    it = iter(loader)
    first = [next(it).id for _ in range(3)]
    del it  # stopped early, like limit_train_batches or a break
    whole = ids(loader)
    assert first == plan_ids(0)[:3]
    assert whole == plan_ids(1)  # both workers read epoch 1: no mix of two epochs
    small = DataLoader(ds, batch_size=None, num_workers=3)  # another loader, more workers
    assert ids(small) == plan_ids(2)


def test_a_resumed_pass_is_followed_by_the_next_epoch(server: SocketServer) -> None:
    first = BatchDataset(server.url, "train", rank=0, world_size=1, epoch=3)
    it = iter(persistent(first))
    taken = [next(it).id for _ in range(4)]
    saved = first.state_dict(4)
    del it
    again = BatchDataset(server.url, "train", rank=0, world_size=1)
    loader = persistent(again)
    again.load_state_dict(saved)
    assert taken + ids(loader) == plan_ids(3)
    assert ids(loader) == plan_ids(4)  # the state is of epoch 3: not applied again
