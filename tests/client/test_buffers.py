"""Receive buffers are reused once nothing views them, and never while a batch does."""

from __future__ import annotations

import gc

import torch

from batchstash.client import BatchClient
from batchstash.client.buffers import BufferPool
from batchstash.client.transport import BufferTransport

from .fakeserver import FakeServer, SocketServer

MIB = 1 << 20


def view(buffer: object) -> torch.Tensor:
    return torch.frombuffer(memoryview(buffer), dtype=torch.uint8)  # type: ignore[arg-type]


def test_a_buffer_comes_back_only_when_its_tensors_are_gone() -> None:
    pool = BufferPool()
    first = pool.get(MIB)
    first[:4] = [1, 2, 3, 4]
    tensor = view(first)
    del first
    second = pool.get(MIB)
    assert pool.allocated == 2 and pool.reused == 0
    second[:4] = [9, 9, 9, 9]
    assert tensor[:4].tolist() == [1, 2, 3, 4]  # untouched: the tensor still owns that memory
    del tensor, second
    gc.collect()
    assert pool.get(MIB).nbytes == MIB
    assert pool.reused == 1 and pool.allocated == 2


def test_sizes_reuse_a_buffer_only_when_little_is_wasted() -> None:
    pool = BufferPool()
    pool.get(4 * MIB)  # dropped at once: free
    assert pool.get(3 * MIB).nbytes == 3 * MIB and pool.reused == 1
    pool.get(MIB)  # 4 MiB would waste more than half: a new buffer
    assert pool.allocated == 2 and len(pool) == 2


def test_a_buffer_is_at_most_a_sixtieth_larger_than_its_body_and_fits_its_neighbours() -> None:
    pool = BufferPool()
    for size in (256 * 1024 + 1, 1_050_624, 1_052_800, 4 * MIB + 12_345, 17_000_000):
        body = pool.get(size)
        assert body.base is not None
        held, where = body.base.nbytes, body.ctypes.data
        assert size <= held <= size * 1.016 + 4096, size
        del body
        again = pool.get(held)  # a body of the next batch, a few ids longer: reused
        assert again.ctypes.data == where and pool.allocated == len(pool), size
        del again


def test_small_bodies_are_not_pooled() -> None:
    pool = BufferPool(min_bytes=MIB)
    assert pool.get(1000).nbytes == 1000
    assert len(pool) == 0 and pool.allocated == 0


def test_the_pool_never_holds_more_than_max_buffers() -> None:
    pool = BufferPool(max_buffers=2)
    held = [pool.get(MIB) for _ in range(5)]  # all in use: the extra ones are not pooled
    assert len(pool) == 2 and pool.allocated == 5
    del held
    pool.get(2 * MIB)  # a new size replaces a free buffer instead of growing the pool
    assert len(pool) == 2


def test_a_full_pool_drops_a_free_buffer_behind_one_in_use() -> None:
    pool = BufferPool(max_buffers=2)
    in_use = pool.get(MIB)  # the first pooled buffer stays viewed
    pool.get(MIB)  # the second is free at once
    third = pool.get(3 * MIB)  # no fit: a free buffer is dropped for it, the one in use kept
    assert len(pool) == 2 and pool.allocated == 3
    in_use[:1] = 7
    assert third.nbytes == 3 * MIB and in_use[0] == 7


def test_an_epoch_reuses_the_buffers_of_the_batches_it_dropped() -> None:
    server = SocketServer(FakeServer({"train": range(24)}, rows=4096))
    transport = BufferTransport(buffers=BufferPool(min_bytes=0))
    try:
        with BatchClient(server.url, transport=transport) as client:
            seen = 0
            for _ in range(2):
                for batch in client.iter_batches("train", prefetch=6, batches_per_request=2):
                    assert batch.attributes["x"].shape == (4096, 3)
                    seen += 1
    finally:
        server.kill()
    assert seen == 48
    pool = transport.buffers
    assert pool.reused > pool.allocated  # most bodies landed in a buffer used before
    # requests in flight, the group being yielded and the JSON answers: not the 24 batches
    assert len(pool) <= 8


class Fence:
    """A stand-in for the CUDA event recorded after the copies that read a buffer."""

    def __init__(self) -> None:
        self.passed = False
        self.waited = 0

    def query(self) -> bool:
        return self.passed

    def synchronize(self) -> None:
        self.waited += 1
        self.passed = True


def test_a_fenced_buffer_waits_for_its_copies_even_with_nothing_viewing_it() -> None:
    pool = BufferPool()
    buffer = pool.get(MIB)
    fence = Fence()
    assert pool.fence([view(buffer)[16:32]], fence) == 1  # a tensor inside the buffer
    del buffer
    gc.collect()
    pool.get(MIB)  # the copies may still read it: a new one
    assert (pool.allocated, pool.reused) == (2, 0)
    fence.passed = True
    pool.get(MIB)
    assert (pool.allocated, pool.reused) == (2, 1)


def test_fence_leaves_tensors_outside_the_pool_alone() -> None:
    pool = BufferPool()
    kept = pool.get(MIB)
    fence = Fence()
    assert pool.fence([torch.zeros(8), torch.zeros(2, device="meta")], fence) == 0
    del kept
    pool.get(MIB)
    assert pool.reused == 1


def test_a_later_fence_replaces_an_earlier_one() -> None:
    pool = BufferPool()
    buffer = pool.get(MIB)
    first, second = Fence(), Fence()
    pool.fence([view(buffer)], first)
    pool.fence([view(buffer)], second)
    del buffer
    first.passed = True
    pool.get(MIB)
    assert pool.reused == 0  # the second copy is still pending
    second.passed = True
    pool.get(MIB)
    assert pool.reused == 1


def test_clear_waits_for_pending_copies() -> None:
    pool = BufferPool()
    buffer = pool.get(MIB)
    fence = Fence()
    pool.fence([view(buffer)], fence)
    pool.clear()
    assert fence.waited == 1 and len(pool) == 0
    del buffer
    assert pool.get(MIB) is not None and pool.allocated == 2
