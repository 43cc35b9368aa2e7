"""Resuming re-dealt epochs: at any position, at other world sizes, with the bucket window."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchstash.client import BatchIterator, PlanError
from batchstash.client.rebatch import RebatchPlan

from .memsource import MemorySource, check_rows, read, sizes_of

FAST = settings(max_examples=40, deadline=None)


# -- resuming ------------------------------------------------------------------------------------


@FAST
@given(
    st.integers(1, 30),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(0, 40),
    st.booleans(),
)
def test_resume_at_any_position_and_world_size_reads_every_row_once(
    n: int, before: int, after: int, window: int, stop: int, pad: bool
) -> None:
    src = MemorySource(sizes_of(n))
    common = {"shuffle_window": window, "epoch": 4, "pad_ranks": pad, "seed": 9}
    first = [
        BatchIterator(src, "train", rank=r, world_size=before, **common) for r in range(before)
    ]  # type: ignore[arg-type]
    per_rank = first[0].plan.per_rank
    position = min(stop, per_rank)
    taken = [check_rows(next(it)) for it in first for _ in range(min(position, len(it)))]
    state = json.loads(json.dumps(first[0].state_dict()))
    state["position"] = position
    rest = [
        [check_rows(b) for b in BatchIterator(src, "train", rank=r, world_size=after, state=state)]
        for r in range(after)
    ]
    if pad:
        assert len({len(r) for r in rest}) == 1  # equal steps after the resume too
    rows = Counter(dp for batch in taken + [b for r in rest for b in r] for dp in batch)
    stored = {f"{b}-{i}" for b, size in enumerate(src.sizes) for i in range(size)}
    assert set(rows) == stored
    if not pad:
        assert set(rows.values()) == {1}


def test_resume_mid_window_at_the_same_world_size_continues_exactly() -> None:
    src = MemorySource(sizes_of(30))
    whole = read(src, shuffle_window=8, epoch=2, rank=1, world_size=2)
    it = BatchIterator(src, "train", shuffle_window=8, epoch=2, rank=1, world_size=2)
    head = [check_rows(next(it)) for _ in range(5)]
    state = it.state_dict()
    assert state["shuffle_window"] == 8 and state["position"] == 5
    resumed = BatchIterator(src, "train", rank=1, world_size=2, state=state)  # W from the state
    assert resumed.shuffle_window == 8
    assert head + [check_rows(b) for b in resumed] == whole


def test_a_state_of_another_window_or_store_is_checked() -> None:
    src = MemorySource(sizes_of(12))
    it = BatchIterator(src, "train", shuffle_window=4)
    next(it)
    state = it.state_dict()
    with pytest.raises(PlanError, match="no longer give the saved plan"):
        BatchIterator(src, "train", state={**state, "shuffle_window": 3})
    with pytest.raises(PlanError, match="store changed"):
        BatchIterator(MemorySource(sizes_of(12), fingerprint="d" * 32), "train", state=state)
    plain = BatchIterator(src, "train")
    plain_state = plain.state_dict()
    assert "shuffle_window" not in plain_state
    with pytest.raises(ValueError, match="shuffle_window"):
        BatchIterator(src, "train", shuffle_window=-1)


def test_a_state_brings_the_bucket_window_of_its_plan() -> None:
    src = MemorySource(sizes_of(24))
    args: dict[str, object] = {"shuffle_window": 4, "bucket_window": 3, "epoch": 1}
    whole = [check_rows(b) for b in BatchIterator(src, "train", **args)]  # type: ignore[arg-type]
    plan = BatchIterator(src, "train", **args).plan  # type: ignore[arg-type]
    assert isinstance(plan, RebatchPlan) and plan.bands == 3
    for window in plan.windows:  # a window pools batches of one band, or of neighbouring ones
        bands = sorted({b % 3 for b in window.batch_ids})
        assert bands[-1] - bands[0] <= 1
    it = BatchIterator(src, "train", **args)  # type: ignore[arg-type]
    head = [check_rows(next(it)) for _ in range(6)]
    state = it.state_dict()
    assert state["bucket_window"] == 3
    resumed = BatchIterator(src, "train", state=state)  # no bucket_window given: the state's
    assert head + [check_rows(b) for b in resumed] == whole


@FAST
@given(st.integers(1, 30), st.integers(0, 12), st.integers(0, 12), st.integers(1, 5))
def test_two_resumes_at_other_world_sizes_read_every_row_once(
    n: int, first_stop: int, second_stop: int, window: int
) -> None:
    src = MemorySource(sizes_of(n))
    common: dict[str, object] = {"shuffle_window": window, "epoch": 2, "pad_ranks": False}
    rows: Counter[str] = Counter()
    state = None
    for world_size, stop in ((4, first_stop), (3, second_stop), (2, None)):
        iters = [
            BatchIterator(src, "train", rank=r, world_size=world_size, state=state, **common)  # type: ignore[arg-type]
            for r in range(world_size)
        ]
        position = iters[0].plan.per_rank if stop is None else min(stop, iters[0].plan.per_rank)
        for it in iters:
            for _ in range(min(position, len(it))):
                rows.update(check_rows(next(it)))
        state = iters[0].state_dict()
        state["position"] = position
    stored = Counter(f"{b}-{i}" for b, size in enumerate(src.sizes) for i in range(size))
    assert rows == stored
