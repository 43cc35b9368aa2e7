"""A window's new batches, gathered at once or one by one, and the stored batches it lets go."""

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


def _window() -> DealtWindow:
    return DealtWindow(RULES, lambda i: 1000 + i)


def _dealt(sizes: list[int], key: str) -> list[Any]:
    """Each new batch's ids and tensors (each checked against its data points)."""
    window = _window()
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
def test_a_window_gathered_at_once_or_batch_by_batch_deals_the_same_batches(
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
        by_batch = _dealt(sizes, key)  # gathered new batch by new batch
    finally:
        dealt.BULK_BYTES = old
    assert _same(whole, by_batch)
    every = sorted(i for ids, _ in whole for i in ids)
    assert every == sorted(f"{b}-{i}" for b, n in enumerate(sizes) for i in range(n))


@pytest.mark.parametrize("at_once", [True, False])
def test_a_window_gathered_at_once_lets_its_stored_batches_go_when_dealt(
    monkeypatch: pytest.MonkeyPatch, at_once: bool
) -> None:
    if not at_once:
        monkeypatch.setattr(dealt, "BULK_BYTES", 0)
    window, refs = _window(), []
    for b in range(4):
        batch = make_batch("train", b, 5, META)
        refs.append(weakref.ref(batch.attributes["x"]))
        window.add(batch)
        del batch
    window.deal(KEY)
    gc.collect()
    # gathered at once: the new batches are views of one buffer; one by one: each new batch
    # is gathered when asked for, so the stored rows stay until the window is let go
    assert [ref() is None for ref in refs] == [at_once] * 4
    assert [len(window.batch(i)) for i in range(4)] == [5] * 4
    del window
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_the_smallest_fields_that_fit_together_are_gathered_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large batch's small fields (labels) are gathered for the whole window, the rest not."""
    sizes = [5, 5, 5, 5]  # x (2 float32) and label (int64): 8 bytes a row, 160 a window
    expected = {}
    for bulk in (0, 1 << 20):
        monkeypatch.setattr(dealt, "BULK_BYTES", bulk)
        expected[bulk] = _dealt(sizes, KEY)
    monkeypatch.setattr(dealt, "BULK_BYTES", 160)  # room for one of them: the first, x
    window, refs = _window(), {"x": [], "label": []}
    for b, size in enumerate(sizes):
        batch = make_batch("train", b, size, META)
        for name, held in refs.items():
            held.append(weakref.ref(batch.attributes[name]))
        window.add(batch)
        del batch
    window.deal(KEY)
    gc.collect()
    assert all(ref() is None for ref in refs["x"])  # gathered: its stored rows let go
    assert all(ref() is not None for ref in refs["label"])  # gathered batch by batch
    batches = [window.batch(i) for i in range(len(window))]
    storages = {
        name: {b.attributes[name].untyped_storage().data_ptr() for b in batches}
        for name in ("x", "label")
    }
    assert len(storages["x"]) == 1 and len(storages["label"]) == len(batches)
    got = [(b.data_point_ids, {k: v.clone() for k, v in b.attributes.items()}) for b in batches]
    assert _same(got, expected[0]) and _same(got, expected[1 << 20])


def test_an_epoch_keeps_no_stored_batch_its_window_let_go() -> None:
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

    src = Watched([6] * 12)
    it = BatchIterator(src, "train", shuffle_window=4, prefetch=8, batches_per_request=2)
    first = next(it)
    gc.collect()
    window = first.id.batch_ids  # type: ignore[attr-defined]
    # every stored batch of the first window was let go once it was dealt, the last included
    # (which the iterator's stored stream once held until it read the next one)
    assert [src.refs[b]() is None for b in window] == [True] * 4
    assert len(list(it)) == 11
