"""Rank and world size by default: the torch.distributed process group, torchrun's env, 0 of 1."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Iterator

import pytest
import torch.distributed as dist
from torch.utils.data import DataLoader

from batchstash.client import BatchDataset, EpochPlan
from batchstash.client.ranks import resolve_rank

from .fakeserver import FINGERPRINT, URL, FakeServer, make_client

RANKS_LOGGER = "batchstash.client.ranks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No RANK/WORLD_SIZE/LOCAL_RANK in the environment, whatever the test run has."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def process_group() -> Iterator[None]:
    """A real gloo process group of world size 1 on loopback, destroyed after the test."""
    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def plan_ids(n: int, rank: int, world_size: int, epoch: int = 0) -> list[int]:
    plan = EpochPlan.create(FINGERPRINT, "train", range(n), epoch=epoch, world_size=world_size)
    return plan.rank_ids(rank)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RANKS_LOGGER and r.levelno == logging.INFO
    ]


def test_iter_batches_reads_rank_and_world_size_from_the_environment(
    no_launcher: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "3")
    no_launcher.setenv("LOCAL_RANK", "0")  # picks the GPU, not the data: ignored
    caplog.set_level(logging.INFO, logger=RANKS_LOGGER)
    client = make_client(FakeServer({"train": range(10)}))
    it = client.iter_batches("train", epoch=2)
    assert (it.rank, it.plan.world_size) == (1, 3)
    assert [b.id for b in it] == plan_ids(10, 1, 3, epoch=2)
    assert info_lines(caplog) == ["batchstash: rank 1 of 3, from the RANK/WORLD_SIZE environment"]


@pytest.mark.parametrize("context", [None, "spawn"])
def test_dataset_built_before_the_launcher_resolves_ranks_when_iterated(
    no_launcher: pytest.MonkeyPatch, context: str | None
) -> None:
    # Lightning's launcher builds a module-level dataset as rank 0 of 1, then its ranks start
    # with WORLD_SIZE set and RANK not yet (the process group gives it): nothing fails on build
    no_launcher.setenv("WORLD_SIZE", "4")
    server = FakeServer({"train": range(9)})
    ds = BatchDataset(URL, "train", client_factory=functools.partial(make_client, server))
    no_launcher.setenv("RANK", "2")  # the launcher's share, known once the rank runs
    assert (ds.rank, ds.world_size) == (2, 4)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    assert [b.id for b in loader] == plan_ids(9, 2, 4)
    assert len(ds) == len(plan_ids(9, 2, 4))


def test_explicit_values_win(
    no_launcher: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "3")
    caplog.set_level(logging.INFO, logger=RANKS_LOGGER)
    client = make_client(FakeServer({"train": range(6)}))
    it = client.iter_batches("train", rank=0, world_size=2)
    assert (it.rank, it.plan.world_size) == (0, 2)
    assert info_lines(caplog) == []  # nothing detected, nothing to tell
    assert resolve_rank(None, 6) == (1, 6)  # one given: the other one detected
    assert resolve_rank(0, None) == (0, 3)


def test_without_group_or_environment_rank_0_of_1(
    no_launcher: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RANKS_LOGGER)
    it = make_client(FakeServer({"train": range(5)})).iter_batches("train")
    assert (it.rank, it.plan.world_size) == (0, 1)
    assert len(it) == 5
    assert info_lines(caplog) == [
        "batchstash: rank 0 of 1, from the default (no process group, no RANK/WORLD_SIZE)"
    ]


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANK": "1"}, "RANK is set in the environment but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set in the environment but RANK is not"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' and WORLD_SIZE='2' .* must be integers"),
        ({"RANK": "0", "WORLD_SIZE": ""}, "must be integers"),
    ],
)
def test_half_an_environment_is_an_error(
    no_launcher: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name, value in env.items():
        no_launcher.setenv(name, value)
    client = make_client(FakeServer({"train": range(4)}))
    with pytest.raises(ValueError, match=match):
        client.iter_batches("train")
    ds = BatchDataset(URL, "train")  # built before the launcher set both: checked when used
    with pytest.raises(ValueError, match=match):
        iter(ds)
    with pytest.raises(ValueError, match=match):
        len(ds)
    assert len(client.iter_batches("train", rank=0, world_size=1)) == 4  # explicit: not read


def test_process_group_wins_over_the_environment(
    no_launcher: pytest.MonkeyPatch, process_group: None, caplog: pytest.LogCaptureFixture
) -> None:
    no_launcher.setenv("RANK", "1")  # stale values from another launcher: the group decides
    no_launcher.setenv("WORLD_SIZE", "2")
    caplog.set_level(logging.INFO, logger=RANKS_LOGGER)
    server = FakeServer({"train": range(7)})
    it = make_client(server).iter_batches("train", epoch=1)
    assert (it.rank, it.plan.world_size) == (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert [b.id for b in it] == plan_ids(7, 0, 1, epoch=1)
    ds = BatchDataset(URL, "train", client_factory=functools.partial(make_client, server))
    assert (ds.rank, ds.world_size) == (0, 1)
    assert (
        info_lines(caplog)
        == ["batchstash: rank 0 of 1, from the torch.distributed process group"] * 2
    )
