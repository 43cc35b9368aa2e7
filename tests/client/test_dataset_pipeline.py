"""BatchDataset reads as iter_batches does: pipelined on a data listener, else by request."""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Iterator

import pytest
from torch.utils.data import DataLoader

from batchstash.client import BatchClient, BatchDataset, EpochPlan

from .fakeserver import FINGERPRINT, FakeServer, make_client
from .test_pipeline import Stack, _check


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(12)
    yield s
    s.close()


def _order(n: int, **kwargs: object) -> list[int]:
    rank = int(kwargs.pop("rank", 0))  # type: ignore[call-overload]
    return EpochPlan.create(FINGERPRINT, "train", range(n), **kwargs).rank_ids(rank)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_pass_is_pipelined_on_the_data_listener(stack: Stack, num_workers: int) -> None:
    ds = BatchDataset(stack.api.url, "train", epoch=2, rank=1, world_size=2, prefetch=6)
    batches = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
    expected = _order(12, epoch=2, rank=1, world_size=2)
    _check(batches, expected)
    # one connection a reading process, every batch asked for on it, none through the API
    assert len(stack.data._connections) == max(1, num_workers)
    assert sorted(stack.listener.ids()) == sorted(expected)
    assert stack.api_batch_requests() == []
    if num_workers == 0:
        assert stack.listener.ids() == expected  # in the pass's order


def test_without_a_listener_the_request_path_reads_the_same_batches(stack: Stack) -> None:
    factory = functools.partial(BatchClient, stack.api.url, data_listener=False)
    ds = BatchDataset(stack.api.url, "train", epoch=2, client_factory=factory, prefetch=6)
    _check(list(DataLoader(ds, batch_size=None)), _order(12, epoch=2))
    assert stack.listener.requests == []
    assert all(path.endswith("/payloads") for path in stack.api_batch_requests())
    assert len(stack.api_batch_requests()) == 6  # prefetch // 3 batches a request


@pytest.mark.parametrize("prefetch", [0, 1, 4])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_order_is_the_rank_list_whatever_the_reading(prefetch: int, num_workers: int) -> None:
    server = FakeServer({"train": range(11)})
    ds = BatchDataset(
        "http://x",
        "train",
        epoch=3,
        rank=0,
        world_size=2,
        prefetch=prefetch,
        client_factory=functools.partial(make_client, server),
    )
    batches = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
    _check(batches, _order(11, epoch=3, rank=0, world_size=2))


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batchstash-pipeline"]


def test_stopping_a_pass_early_stops_its_reader() -> None:
    many = Stack(80)
    try:
        # the window held at prefetch: these tiny batches would let a window sized from the
        # link run far ahead, and the last assertion bounds the requests by the window
        make = functools.partial(many.client, in_flight_bytes=0)
        ds = BatchDataset(many.api.url, "train", shuffle=False, prefetch=6, client_factory=make)
        it = iter(DataLoader(ds, batch_size=None))
        assert next(it).id == 0
        assert len(_readers()) == 1
        del it  # the pass's generator closes, and with it the pipelined reader
        gc.collect()
        deadline = time.monotonic() + 5
        while _readers() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _readers() == []
        assert len(many.listener.requests) <= 7  # the window, not the epoch
    finally:
        many.close()
