"""A large window placed as its stored batches arrive: the same new batches as dealing it whole."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchstash.client import Batch, dealt, redeal
from batchstash.client.dealt import DealtWindow

from .memsource import check_rows, make_batch, metadata

KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
META = metadata()
RULES = redeal.field_rules(META, ["x", "label", "tokens"])


def _window(count: int = 0, key: str | None = None) -> DealtWindow:
    return DealtWindow(RULES, lambda i: 1000 + i, count=count, key=key)


def _dealt(sizes: list[int], key: str, count: int = 0, expected: str | None = None) -> list[Any]:
    """Each new batch's ids and tensors: ``count`` and ``expected`` (the key told ahead)."""
    window = _window(count, expected)
    for b, size in enumerate(sizes):
        window.add(make_batch("train", b, size, META))
    window.deal(key)
    out = []
    for i in range(len(window)):
        batch = window.batch(i)
        check_rows(batch)
        out.append((batch.data_point_ids, {k: v.clone() for k, v in batch.attributes.items()}))
    return out


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        ids_a == ids_b and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        for (ids_a, ta), (ids_b, tb) in zip(a, b, strict=True)
    )


window_sizes = st.tuples(st.integers(1, 7), st.integers(1, 9)).flatmap(
    lambda ws: st.tuples(
        st.just([ws[1]] * ws[0]),
        st.one_of(st.none(), st.tuples(st.integers(0, ws[0] - 1), st.integers(1, ws[1]))),
    )
)


@settings(max_examples=60, deadline=None)
@given(window_sizes, st.text("0123456789abcdef", min_size=16, max_size=16))
def test_placing_deals_the_batches_dealing_the_whole_window_deals(
    case: tuple[list[int], tuple[int, int] | None], key: str
) -> None:
    sizes, other = case
    if other is not None:  # one stored batch of another size, anywhere (the first included)
        sizes = list(sizes)
        sizes[other[0]] = other[1]
    old = dealt.BULK_BYTES
    try:
        whole = _dealt(sizes, key)  # small: gathered at once
        dealt.BULK_BYTES = 0
        by_batch = _dealt(sizes, key)  # no layout told: gathered new batch by new batch
        placed = _dealt(sizes, key, len(sizes), key)
    finally:
        dealt.BULK_BYTES = old
    assert _same(whole, by_batch)
    assert _same(placed, by_batch)
    every = sorted(i for ids, _ in placed for i in ids)
    assert every == sorted(f"{b}-{i}" for b, n in enumerate(sizes) for i in range(n))


def test_a_placed_stored_batch_is_let_go_as_it_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dealt, "BULK_BYTES", 0)

    def kept(window: DealtWindow) -> list[bool]:
        refs = []
        for b in range(4):
            batch = make_batch("train", b, 5, META)
            refs.append(weakref.ref(batch.attributes["x"]))
            window.add(batch)
            del batch
        gc.collect()
        return [ref() is not None for ref in refs]

    assert kept(_window(4, KEY)) == [False] * 4  # placed: only the padded tokens are held
    assert kept(_window()) == [True] * 4  # no layout told: held until dealt


@pytest.mark.parametrize(
    ("sizes", "count", "key"),
    [
        ([6, 6, 6], 4, KEY),  # fewer stored batches than told
        ([6, 6, 6, 6], 4, "0" * 64),  # dealt with another key than told
        ([6, 6, 6, 2], 4, KEY),  # the last is smaller (a split's last batch)
        ([2, 6, 6, 6], 4, KEY),  # the first is
    ],
    ids=["fewer", "other-key", "last-smaller", "first-smaller"],
)
def test_a_window_not_as_told_is_dealt_as_one_of_unknown_layout(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int], count: int, key: str
) -> None:
    monkeypatch.setattr(dealt, "BULK_BYTES", 0)
    assert _same(_dealt(sizes, key, count, KEY), _dealt(sizes, key))


def test_placed_batches_are_the_batches_an_epoch_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstash.client import BatchIterator

    from .memsource import MemorySource, sizes_of

    src = MemorySource(sizes_of(23, 6, 2))

    def epoch() -> list[Batch]:
        it = BatchIterator(src, "train", shuffle_window=5, epoch=3, rank=0, world_size=2)
        return list(it)

    whole = [(b.data_point_ids, b.attributes) for b in epoch()]
    monkeypatch.setattr(dealt, "BULK_BYTES", 0)  # every window placed (but one of another size)
    placed = [(b.data_point_ids, b.attributes) for b in epoch()]
    assert _same(placed, whole)


def test_an_epoch_lets_each_placed_stored_batch_go(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstash.client import BatchIterator

    from .memsource import MemorySource

    class Watched(MemorySource):
        def __init__(self, sizes: list[int]) -> None:
            super().__init__(sizes)
            self.refs: dict[int, weakref.ref[torch.Tensor]] = {}

        def batches(self, *args: Any, **kwargs: Any) -> list[Batch]:  # type: ignore[override]
            out = super().batches(*args, **kwargs)
            self.refs.update({int(b.id): weakref.ref(b.attributes["x"]) for b in out})
            return out

    monkeypatch.setattr(dealt, "BULK_BYTES", 0)
    src = Watched([6] * 12)
    it = BatchIterator(src, "train", shuffle_window=4, prefetch=8, batches_per_request=2)
    first = next(it)
    gc.collect()
    window = first.id.batch_ids  # type: ignore[attr-defined]
    # every stored batch of the first window was placed and let go, the last one included
    assert [src.refs[b]() is None for b in window] == [True] * 4
    assert len(list(it)) == 11
