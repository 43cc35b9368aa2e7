"""Re-dealt epochs (``shuffle_window``): the plan, rows, exactly-once, ranks, determinism."""

from __future__ import annotations

import pickle
import re
import threading
import time
from collections import Counter
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchstash.client import Batch, BatchError, BatchIterator, EpochPlan, dealt, redeal
from batchstash.client.dealt import permutation
from batchstash.client.iterate import WINDOW_AHEAD, default_prefetch
from batchstash.client.rebatch import RebatchPlan, chunks, interleave
from batchstash.client.redeal import RedealtBatchId

from .memsource import FINGERPRINT, MemorySource, metadata, read, sizes_of

FAST = settings(max_examples=40, deadline=None)


every_row = st.integers(1, 30).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, 6), st.integers(1, 8), st.booleans())
)


# -- the plan ------------------------------------------------------------------------------------


@FAST
@given(every_row)
def test_a_rank_reads_as_many_batches_as_without_windows(case: tuple[int, int, int, bool]) -> None:
    n, world_size, window, pad = case
    plain = EpochPlan.create(FINGERPRINT, "train", range(n), world_size=world_size, pad=pad)
    plan = RebatchPlan.create(
        FINGERPRINT, "train", range(n), window=window, world_size=world_size, pad=pad
    )
    assert [len(plan.rank_ids(r)) for r in range(world_size)] == [
        len(plain.rank_ids(r)) for r in range(world_size)
    ]
    items = [i for r in range(world_size) for i in plan.rank_ids(r)]
    assert sorted(items) == list(range(len(items)))  # every item once: ranks disjoint
    for r in range(world_size):  # a rank's windows are its stored batches, in its order
        mine = [plan.locate(i) for i in plan.rank_ids(r)]
        stored = [b for w, index in mine if index == 0 for b in w.batch_ids]
        assert stored == plain.rank_ids(r)
        assert all(len(w.batch_ids) <= window for w, _ in mine)


def test_interleave_and_chunks_deal_contiguous_runs_round_robin() -> None:
    parts = chunks(list(range(7)), 3)
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    order = interleave(parts)
    plan = EpochPlan(FINGERPRINT, "train", tuple(order), world_size=3, pad=False)
    assert [plan.rank_ids(r) for r in range(3)] == parts


def test_the_plan_hash_changes_with_the_window_and_the_inputs() -> None:
    def make(**kw: object) -> RebatchPlan:
        args: dict[str, object] = {"window": 4, "world_size": 2, "epoch": 1, **kw}
        return RebatchPlan.create(FINGERPRINT, "train", range(20), **args)  # type: ignore[arg-type]

    base = make()
    assert base.hash == make().hash
    others = [make(window=5), make(epoch=2), make(seed=1), make(world_size=3), make(bands=4)]
    assert len({base.hash, *(p.hash for p in others)}) == 1 + len(others)
    assert base.replan(1, 3).hash != base.hash


def _splitmix_order(count: int, key: str) -> list[int]:
    """The permutation's definition in plain Python integers (mod 2**64)."""
    mask, seed = 2**64 - 1, int(key[:16], 16)

    def mix(i: int) -> int:
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    return sorted(range(count), key=mix)


def test_permutation_is_splitmix64_sorted() -> None:
    key = "0123456789abcdef" * 2
    got = permutation(1000, key).tolist()
    assert got == _splitmix_order(1000, key) and sorted(got) == list(range(1000))
    assert got != permutation(1000, "f" + key[1:]).tolist()
    assert permutation(0, key).tolist() == [] and permutation(1, key).tolist() == [0]


# -- rows ----------------------------------------------------------------------------------------


@FAST
@given(every_row)
def test_every_data_point_once_per_epoch_and_ranks_disjoint(
    case: tuple[int, int, int, bool],
) -> None:
    n, world_size, window, _ = case
    src = MemorySource(sizes_of(n))
    ranks = [
        read(src, rank=r, world_size=world_size, shuffle_window=window, pad_ranks=False, epoch=3)
        for r in range(world_size)
    ]
    rows = Counter(dp for rank in ranks for batch in rank for dp in batch)
    stored = {f"{b}-{i}" for b, size in enumerate(src.sizes) for i in range(size)}
    assert set(rows) == stored and set(rows.values()) == {1}
    plain = EpochPlan.create(FINGERPRINT, "train", range(n), world_size=world_size, pad=False)
    assert [len(r) for r in ranks] == [len(plain.rank_ids(r)) for r in range(world_size)]


@FAST
@given(every_row)
def test_padded_ranks_take_equal_steps_and_repeat_only_remainder_batches(
    case: tuple[int, int, int, bool],
) -> None:
    n, world_size, window, _ = case
    src = MemorySource(sizes_of(n))
    ranks = [
        read(src, rank=r, world_size=world_size, shuffle_window=window, epoch=1)
        for r in range(world_size)
    ]
    assert len({len(r) for r in ranks}) == 1
    plain = EpochPlan.create(FINGERPRINT, "train", range(n), world_size=world_size, epoch=1)
    want = Counter(f"{b}-{i}" for b in plain.slots for i in range(src.sizes[b]))
    assert Counter(dp for rank in ranks for batch in rank for dp in batch) == want


def test_batches_are_of_the_store_size_and_new_each_epoch() -> None:
    src = MemorySource(sizes_of(64, 8, 5))
    epochs = [read(src, shuffle_window=16, epoch=e) for e in range(3)]
    for batches in epochs:
        assert sorted(len(b) for b in batches) == sorted(src.sizes)
    previous = {frozenset(b) for b in epochs[0]}
    repeated = sum(frozenset(b) in previous for b in epochs[1])
    assert repeated == 0
    stored = {frozenset(f"{b}-{i}" for i in range(s)) for b, s in enumerate(src.sizes)}
    assert not stored & {frozenset(b) for b in epochs[2]}
    assert read(src, shuffle_window=16, epoch=1) == epochs[1]  # deterministic
    assert read(src, shuffle_window=16, epoch=1, seed=5) != epochs[1]
    assert read(src, shuffle_window=8, epoch=1) != epochs[1]


def test_a_large_window_gathered_batch_by_batch_gives_the_same_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = MemorySource(sizes_of(23, 6, 2))

    def batches() -> list[dict[str, torch.Tensor]]:
        it = BatchIterator(src, "train", shuffle_window=5, epoch=7, rank=1, world_size=2)
        return [{"ids": b.data_point_ids, **b.attributes} for b in it]  # type: ignore[dict-item]

    whole = batches()  # small windows: gathered in one go when dealt
    monkeypatch.setattr(dealt, "BULK_BYTES", 0)
    one_by_one = batches()
    assert len(whole) == len(one_by_one) == 12
    for a, b in zip(whole, one_by_one, strict=True):
        assert a["ids"] == b["ids"]
        assert all(torch.equal(a[k], b[k]) for k in ("x", "label", "tokens"))


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize(
    "convert",
    [
        lambda x: x.to(torch.bfloat16),  # numpy has no bfloat16: torch gathers it
        lambda x: x.requires_grad_(True),  # numpy() refuses it until detached
        lambda x: x.t().contiguous().t(),  # column-major: a strided view
    ],
    ids=["bfloat16", "requires_grad", "strided"],
)
def test_fields_numpy_cannot_view_directly_are_redealt_alike(
    monkeypatch: pytest.MonkeyPatch, convert: Any, bulk: bool
) -> None:
    class Converted(MemorySource):
        def batches(self, *args: Any, **kwargs: Any) -> list[Batch]:  # type: ignore[override]
            out = super().batches(*args, **kwargs)
            for batch in out:
                batch._attributes["x"] = convert(batch._attributes["x"])
            return out

    if not bulk:
        monkeypatch.setattr(dealt, "BULK_BYTES", 0)
    sizes = sizes_of(11)
    expected = read(MemorySource(sizes), shuffle_window=4, epoch=3)
    assert read(Converted(sizes), shuffle_window=4, epoch=3) == expected  # rows checked


def test_without_a_window_the_stored_batches_come_as_they_are() -> None:
    src = MemorySource(sizes_of(6))
    plan = EpochPlan.create(FINGERPRINT, "train", range(6), epoch=2)
    got = read(src, epoch=2)
    assert got == [[f"{b}-{i}" for i in range(src.sizes[b])] for b in plan.rank_ids(0)]


def test_a_redealt_batch_says_where_it_came_from() -> None:
    src = MemorySource(sizes_of(10))
    it = BatchIterator(src, "train", shuffle_window=4, epoch=1)
    batches = list(it)
    assert all(isinstance(b.id, RedealtBatchId) for b in batches)
    first = batches[0].id
    assert isinstance(first, RedealtBatchId)
    assert int(first) == it.rank_ids()[0] and first.index == 0
    assert {dp.split("-")[0] for dp in batches[0].data_point_ids} <= {
        str(b) for b in first.batch_ids
    }
    again = pickle.loads(pickle.dumps(first))
    assert (again, again.window, again.batch_ids) == (first, first.window, first.batch_ids)
    assert "window=" in repr(first)


def test_attributes_subset_is_redealt() -> None:
    src = MemorySource(sizes_of(8))
    for batch in BatchIterator(src, "train", shuffle_window=3, attributes=["x"]):
        assert set(batch.attributes) == {"x"}
        for row, dp in enumerate(batch.data_point_ids):
            assert batch["x"][row].tolist() == [float(p) for p in dp.split("-")]


@pytest.mark.parametrize(
    ("meta", "named"),
    [
        (metadata(label_per_row=False), "'label' (is_agg"),
        (metadata(tokens_pad=False), "'tokens' (is_agg"),
        (metadata(tokens_pad=False, tokens_agg=False), "'tokens' (its shape (-1,) varies"),
        (None, "needs the store's batch metadata"),
    ],
)
def test_fields_that_cannot_be_redealt_are_named(meta: object, named: str) -> None:
    src = MemorySource(sizes_of(6), meta)  # type: ignore[arg-type]
    if meta is None:
        src.meta = None  # type: ignore[assignment]
    it = BatchIterator(src, "train", shuffle_window=2)
    with pytest.raises(BatchError, match="shuffle_window .*" + re.escape(named)):
        next(it)
    # the field left out, or no window: served
    if meta is not None:
        kept = ["x", "tokens"] if "label" in named else ["x", "label"]
        assert len(list(BatchIterator(src, "train", shuffle_window=2, attributes=kept))) == 6
    assert len(list(BatchIterator(src, "train"))) == 6


def test_memory_holds_one_window_besides_prefetch() -> None:
    src = MemorySource(sizes_of(40))
    it = BatchIterator(src, "train", shuffle_window=8, prefetch=2, batches_per_request=1)
    next(it)
    # the first window (8) was read, and prefetch runs at most 2 stored batches ahead of it
    assert 8 <= len(src.fetched) <= 8 + 2 + 1
    list(it)
    assert sorted(src.fetched) == list(range(40))


@pytest.mark.parametrize(("prefetch", "read_ahead"), [(None, True), (4, False)])
def test_by_default_the_next_window_is_read_while_the_trainer_steps(
    prefetch: int | None, read_ahead: bool
) -> None:
    src = MemorySource(sizes_of(40))
    it = BatchIterator(src, "train", shuffle_window=8, prefetch=prefetch, batches_per_request=1)
    assert it.prefetch == (8 + WINDOW_AHEAD if prefetch is None else prefetch)
    next(it)  # the trainer holds the first window's first batch and steps
    time.sleep(0.3)
    second = set(it.plan.windows[1].batch_ids)
    assert second.issubset(src.fetched) is read_ahead
    assert len(src.fetched) <= 8 + it.prefetch
    list(it)
    assert sorted(src.fetched) == list(range(40))


def test_without_a_window_the_default_prefetch_is_4() -> None:
    assert BatchIterator(MemorySource(sizes_of(6)), "train").prefetch == 4 == default_prefetch(0)


def _builders() -> int:
    return sum(t.name == "batchstash-redeal" for t in threading.enumerate())


def test_a_trainer_with_a_step_gets_batches_built_by_a_thread_while_it_steps() -> None:
    src = MemorySource(sizes_of(40))
    plain = [b.data_point_ids for b in BatchIterator(src, "train", shuffle_window=8, epoch=3)]
    it = BatchIterator(src, "train", shuffle_window=8, prefetch=4, epoch=3)
    got = []
    for batch in it:
        got.append(batch.data_point_ids)
        if len(got) == redeal.PROBE + 3:
            assert _builders() == 1  # the step outlasts a build: a thread builds ahead
        time.sleep(0.003)  # the trainer's step
    assert got == plain  # the same batches, in the same order
    assert _builders() == 0
    stopped = BatchIterator(src, "train", shuffle_window=8, prefetch=4, epoch=1)
    for _ in range(redeal.PROBE + 3):
        next(stopped)
        time.sleep(0.003)
    assert _builders() == 1
    stopped.close()  # mid-epoch: the thread stops
    assert _builders() == 0


def test_a_loop_that_only_reads_builds_in_its_own_thread() -> None:
    src = MemorySource(sizes_of(40))
    it = BatchIterator(src, "train", shuffle_window=8, prefetch=4)
    seen = []
    for batch in it:
        seen.append(batch)
        assert _builders() == 0
    assert len(seen) == 40


def test_with_a_builder_memory_holds_one_window_and_prefetch() -> None:
    src = MemorySource(sizes_of(40))
    it = BatchIterator(src, "train", shuffle_window=8, prefetch=4, batches_per_request=1)
    for _ in range(redeal.PROBE + 2):
        next(it)
        time.sleep(0.003)
    time.sleep(0.3)  # the thread builds ahead as far as it may
    # read: the first 2 windows and 1 stored batch ahead (prefetch 4 less the trainer's batch,
    # the one waiting for it and the one being built)
    assert _builders() == 1 and len(src.fetched) <= 16 + 1 + 1
    it.close()


# -- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_epoch_is_redealt_on_the_cpu_then_copied() -> None:
    src = MemorySource(sizes_of(20))
    on_cpu = [
        {"ids": b.data_point_ids, **b.attributes}
        for b in BatchIterator(src, "train", shuffle_window=4, epoch=2)
    ]
    it = BatchIterator(src, "train", shuffle_window=4, epoch=2, device="cuda")
    on_gpu = list(it)
    torch.cuda.current_stream().synchronize()
    assert it._stage is not None and it._stage.stream is not None
    assert len(on_gpu) == len(on_cpu) == 20
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.data_point_ids == cpu["ids"] and isinstance(gpu.id, RedealtBatchId)
        for name in ("x", "label", "tokens"):
            assert gpu[name].is_cuda and torch.equal(gpu[name].cpu(), cpu[name]), name


# -- data point ids ------------------------------------------------------------------------------


def test_redealt_ids_are_looked_up_when_asked_and_pickle_as_their_tuple() -> None:
    src = MemorySource(sizes_of(9))
    batches = list(BatchIterator(src, "train", shuffle_window=3, epoch=4))
    assert all(callable(b._data_point_ids) for b in batches)  # nothing parsed yet
    copies = [pickle.loads(pickle.dumps(b)) for b in batches]
    assert all(isinstance(c._data_point_ids, tuple) for c in copies)
    for batch, copy in zip(batches, copies, strict=True):
        assert copy.data_point_ids == batch.data_point_ids and len(batch) == len(copy)
        for row, dp in enumerate(batch.data_point_ids):  # each id names its own row
            assert batch["x"][row].tolist() == [float(p) for p in dp.split("-")]


def test_a_stored_batch_listing_other_ids_than_rows_is_refused_when_asked() -> None:
    class ShortIds(MemorySource):
        def batches(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
            out = super().batches(*args, **kwargs)  # type: ignore[arg-type]
            for batch in out:
                if batch.id == 2:
                    batch._data_point_ids = '["2-0"]'  # as a payload's JSON text: one id short
            return out

    batches = list(BatchIterator(ShortIds(sizes_of(6)), "train", shuffle_window=6))
    with pytest.raises(BatchError, match=r"batch train/2 lists 1 data point ids for 4 rows"):
        [b.data_point_ids for b in batches]
