"""The rows of a window of stored batches, permuted and dealt into new, re-padded batches.

A window's stored batches are read in order and their rows numbered ``0..R-1`` as if
concatenated. The rows are permuted by :func:`~.dealt.permutation` of the window's seed (see
:meth:`~.rebatch.RebatchPlan.window_key`), which integer arithmetic alone defines. New batch
``i`` takes the next ``sizes[i]`` rows of the permutation, where ``sizes`` are the stored
batches' sizes from largest to smallest: a window gives as many batches as it pooled, of the
store's batch size (a split's last, smaller batch stays the smaller one).

**Fields.** Which fields can be re-dealt is read from the store's metadata
(:class:`~.metadata.BatchFieldMetadata`):

- a field encoded one data point at a time (not ``is_agg``) has independent rows;
- an ``is_agg`` field (encoded over its whole batch) has independent rows only when its
  vectorizer says so: ``extra["per_row"]`` true, or a pad value (``extra["pad_value"]`` or
  ``extra["pad_id"]``: a padding vectorizer pads each row on its own);
- a field with a varying dimension (``-1`` in its shape) needs a pad value: a new batch is padded
  with it to its longest row, and trimmed to that. A row's length along such a dimension is where
  its last element that is not the pad value ends (a trailing pad value counts as padding).

Any other field makes re-dealing an error that names it: its rows are not the field's values
for those data points alone, and re-dealing would serve wrong training data.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .batch import Batch
from .dealt import DealtWindow, FieldRule
from .errors import BatchError
from .metadata import BatchMetadata
from .prefetch import ahead

if TYPE_CHECKING:
    from .buffers import BufferPool
    from .rebatch import RebatchPlan
    from .staging import DeviceStage

__all__ = ["RedealtBatchId", "field_rules", "redealt"]


def _pad_value(extra: dict[str, Any]) -> float | int | None:
    for key in ("pad_value", "pad_id"):
        value = extra.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def field_rules(metadata: BatchMetadata | None, attributes: Iterable[str]) -> dict[str, FieldRule]:
    """The rule of each of ``attributes``, or an error naming every field that cannot be re-dealt.

    Raises:
        BatchError: no metadata, an attribute it does not describe, an ``is_agg`` field whose
            vectorizer does not declare independent rows, or a varying field without a pad
            value.
    """
    if metadata is None:
        raise BatchError("shuffle_window needs the store's batch metadata to re-deal rows")
    rules, refused = {}, []
    for name in attributes:
        fld = metadata.fields_by_attribute.get(name)
        if fld is None:
            refused.append(f"{name!r} (not in the store's metadata)")
            continue
        extra = fld.vectorizer.extra
        pad = _pad_value(extra)
        if fld.field.is_agg and not (extra.get("per_row") is True or pad is not None):
            refused.append(
                f"{name!r} (is_agg: vectorizer {fld.vectorizer.feature_id!r} encodes a batch "
                "at once and does not declare its rows independent, extra['per_row'])"
            )
        elif -1 in fld.shape and pad is None:
            refused.append(f"{name!r} (its shape {fld.shape} varies and it declares no pad value)")
        else:
            rules[name] = FieldRule(name, pad if -1 in fld.shape else None)
    if refused:
        raise BatchError(
            "shuffle_window cannot re-deal the rows of field(s) " + ", ".join(refused) + "; read "
            "without shuffle_window, or leave the field out with attributes="
        )
    return rules


class RedealtBatchId(int):
    """The id of a re-dealt batch: its item number in the epoch's plan, saying where it came from.

    It is an ``int`` (the item id, unique in the epoch) whose attributes say it was re-dealt.

    Attributes:
        window: the window's number in the epoch.
        index: the batch's index in its window.
        batch_ids: the stored batches the window pooled.
    """

    window: int
    index: int
    batch_ids: tuple[int, ...]

    def __new__(
        cls, item: int, window: int, index: int, batch_ids: Sequence[int]
    ) -> RedealtBatchId:
        """Make the id of item ``item``, batch ``index`` of window ``window``."""
        self = super().__new__(cls, item)
        self.window, self.index, self.batch_ids = window, index, tuple(batch_ids)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (int(self), self.window, self.index, self.batch_ids)

    def __repr__(self) -> str:
        return f"RedealtBatchId({int(self)}, window={self.window}, index={self.index})"


PROBE = 8
"""Batches :func:`redealt` builds in the caller's thread, timing them against the trainer's
step, before it decides whether a thread of their own builds the rest."""

STEP_SHARE = 0.5
"""The share of a batch's build time the trainer's step must exceed for a builder thread."""

MIN_STEP_S = 2e-4
"""The shortest step (mean, seconds) a builder thread is worth: a handoff between threads on
busy cores costs tens of microseconds, and a loop that only reads gains nothing from it."""


def redealt(
    plan: RebatchPlan,
    items: list[int],
    read: Callable[[list[int]], Generator[Batch, None, None]],
    stage: DeviceStage | None,
    pool: BufferPool | None = None,
    build_ahead: int = 0,
) -> Generator[Batch, None, None]:
    """Yield the re-dealt batches ``items`` of ``plan``, in order.

    The stored batches of each window the items come from are read in order by ``read`` (one
    stream for all, so its prefetch runs ahead across windows) and held until the window's
    new batches are built (see :class:`~.dealt.DealtWindow`), on the CPU, in buffers of
    ``pool`` (pinned for a CUDA ``stage``), and copied by ``stage``; ``stage`` hands each over
    in the caller's thread.

    New batches are built in the caller's thread at first. With ``build_ahead``, once
    :data:`PROBE` batches after the first show that the trainer's step (its time between two
    ``next()``) lasts more than :data:`STEP_SHARE` of building one and :data:`MIN_STEP_S`, a
    thread of their own builds the rest, ``build_ahead`` ahead, so the building overlaps the
    step. A caller that asks again at once (a loop that only reads) keeps building in its own
    thread, where a handoff between threads would only add to its wait.

    Raises:
        BatchError: a field cannot be re-dealt (see :func:`field_rules`).
    """
    built = _built(plan, items, read, stage, pool)
    source: Generator[Batch, None, None] = built
    try:
        build_s = step_s = 0.0
        for seen in range(1 + PROBE if build_ahead else 0):
            start = time.perf_counter()
            batch = next(built, None)
            if batch is None:
                return
            asked = time.perf_counter()
            yield batch if stage is None else stage.hand_over(batch)
            if seen:  # the first read the first window: not a build
                build_s, step_s = build_s + asked - start, step_s + time.perf_counter() - asked
        if build_ahead and step_s > max(build_s * STEP_SHARE, MIN_STEP_S * PROBE):
            source = ahead(built, build_ahead, "batchstash-redeal")
        for batch in source:
            yield batch if stage is None else stage.hand_over(batch)
    finally:
        source.close()  # the thread, if any, closes ``built`` itself
        with contextlib.suppress(ValueError):  # still in a thread that outlived its wait
            built.close()


def _built(
    plan: RebatchPlan,
    items: list[int],
    read: Callable[[list[int]], Generator[Batch, None, None]],
    stage: DeviceStage | None,
    pool: BufferPool | None,
) -> Generator[Batch, None, None]:
    """The new batches of :func:`redealt`, copied by ``stage`` (not handed over)."""
    runs = plan.runs(items)
    stored = read([b for window, _ in runs for b in window.batch_ids])
    pin = stage is not None and stage.pinned
    rules: dict[str, FieldRule] | None = None
    try:
        for window, indices in runs:

            def name(i: int, w: Any = window) -> RedealtBatchId:
                return RedealtBatchId(w.first + i, w.index, i, w.batch_ids)

            # no local names the stored or new batches: the window alone holds them, and it
            # is let go before the next window is read
            dealt: DealtWindow | None = None
            for _ in window.batch_ids:
                dealt, rules = _hold(next(stored), dealt, rules, name, pool, pin)
            if dealt is None:
                continue
            dealt.deal(plan.window_key(window))
            for index in indices:
                yield dealt.batch(index) if stage is None else stage.copy([dealt.batch(index)])[0]
            dealt = None
    finally:
        stored.close()


def _hold(
    batch: Batch,
    dealt: DealtWindow | None,
    rules: dict[str, FieldRule] | None,
    name: Callable[[int], int],
    pool: BufferPool | None,
    pin: bool,
) -> tuple[DealtWindow, dict[str, FieldRule]]:
    """Add a stored batch to its window (made with the first), the rules read from the first."""
    if rules is None:
        rules = field_rules(batch.metadata, batch.attributes)
    if dealt is None:
        dealt = DealtWindow(rules, name, pool, pin)
    dealt.add(batch)
    return dealt, rules
