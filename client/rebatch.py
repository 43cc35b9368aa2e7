"""Re-dealt epochs: each rank's stored batches pooled in windows whose rows make new batches.

With ``shuffle_window=W`` an epoch is planned in two steps. The split's stored batches are
shuffled and dealt to ranks as :class:`~.plan.EpochPlan` deals them (remainder rule included);
each rank's list is then cut into *windows* of ``W`` stored batches, in its order. A window's
rows are permuted (see :mod:`.redeal`) and dealt into as many new batches as it pooled, so a rank
reads exactly as many batches as without windows, and ranks stay disjoint with equal step
counts. Every new batch is an *item*: items are numbered window by window, rank by rank, and
what a rank reads is an :class:`EpochPlan` over item ids, so the resume machinery of plans
(lockstep positions, the remainder rule, :meth:`EpochPlan.replan`) works on items unchanged.

The windows are fixed by the epoch's first world size. Resuming at another world size deals
the items no rank has read to the new ranks in contiguous runs of item ids (window by window),
so a new rank reads the rest of an old window that was half read, then whole windows; the rows
of a window are always dealt the same way, so every row is read exactly once either way.

On a length-bucketed store (see ``BatchStash(bucket_by=...)``) a rank's list is first ordered
by *band*, a stored batch's rank in length within its priming window (``batch id % bucket
window``), so a window pools batches of similar lengths; the windows' order is then shuffled.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .plan import EpochPlan, digest, shuffled

__all__ = ["RebatchPlan", "Window", "make_plan"]


@dataclass(frozen=True)
class Window:
    """Stored batches pooled into new batches.

    Attributes:
        index: its number among the epoch's windows (seeds its permutation).
        batch_ids: the stored batches, in the rank's order (a batch may appear twice where the
            remainder rule repeats it).
        first: the item id of its first new batch; its items are ``first + i`` for
            ``i < len(batch_ids)``.
    """

    index: int
    batch_ids: tuple[int, ...]
    first: int


def interleave(lists: Sequence[Sequence[int]]) -> list[int]:
    """The order that deals ``lists[r]`` to rank ``r`` round robin (longer lists first)."""
    longest = max((len(x) for x in lists), default=0)
    return [x[i] for i in range(longest) for x in lists if i < len(x)]


def chunks(ids: Sequence[int], parts: int) -> list[list[int]]:
    """``ids`` cut into ``parts`` contiguous runs, the first ``len % parts`` one longer."""
    size, extra = divmod(len(ids), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        out.append(list(ids[start:end]))
        start = end
    return out


@dataclass(frozen=True)
class RebatchPlan:
    """Which re-dealt batches (items) each rank reads, for one epoch of one split.

    Built by :meth:`create`; offers what :class:`EpochPlan` offers (:meth:`rank_ids` gives item
    ids), so an iterator resumes either alike.

    Attributes:
        base: the plan of the stored batches at the epoch's first world size.
        window: stored batches a window pools (``W``).
        bands: the store's bucket window in batches (``0``: not bucketed).
        windows: every window of the epoch, rank by rank.
        items: the plan over item ids (resumed segments included).
    """

    base: EpochPlan
    window: int
    bands: int
    windows: tuple[Window, ...]
    items: EpochPlan

    @classmethod
    def create(
        cls,
        fingerprint: str,
        split: str,
        batch_ids: Iterable[int],
        *,
        window: int,
        seed: int = 0,
        epoch: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        resumed_from: Sequence[tuple[int, int]] = (),
        pad: bool = True,
        bands: int = 0,
    ) -> RebatchPlan:
        """Plan an epoch with windows of ``window`` stored batches (``resumed_from`` replayed).

        Raises:
            ValueError: ``window`` or ``bands`` below 1 or 0.
        """
        if window < 1 or bands < 0:
            raise ValueError(f"shuffle_window must be >= 1 and bands >= 0, not {window}, {bands}")
        segments = [(int(w), int(p)) for w, p in resumed_from]
        first_size = segments[0][0] if segments else world_size
        base = EpochPlan.create(
            fingerprint,
            split,
            batch_ids,
            seed=seed,
            epoch=epoch,
            world_size=first_size,
            shuffle=shuffle,
            pad=pad,
        )
        windows: list[Window] = []
        per_rank: list[list[int]] = []
        start = 0
        for rank in range(first_size):
            begin = start
            for part in rank_windows(base, rank, window, bands):
                windows.append(Window(len(windows), tuple(part), start))
                start += len(part)
            per_rank.append(list(range(begin, start)))
        order = tuple(interleave(per_rank))
        items = EpochPlan(fingerprint, split, order, seed, epoch, first_size, shuffle, (), pad)
        plan = cls(base, window, bands, tuple(windows), items)
        for i, (_, position) in enumerate(segments):
            next_size = segments[i + 1][0] if i + 1 < len(segments) else world_size
            plan = plan.replan(position, next_size)
        return plan

    # -- what EpochPlan offers ---------------------------------------------------------------

    fingerprint = property(lambda self: self.items.fingerprint)
    split = property(lambda self: self.items.split)
    seed = property(lambda self: self.items.seed)
    epoch = property(lambda self: self.items.epoch)
    shuffle = property(lambda self: self.items.shuffle)
    pad = property(lambda self: self.items.pad)
    world_size = property(lambda self: self.items.world_size)
    resumed_from = property(lambda self: self.items.resumed_from)
    order = property(lambda self: self.items.order)
    per_rank = property(lambda self: self.items.per_rank)

    def rank_ids(self, rank: int) -> list[int]:
        """The item ids ``rank`` reads, in order (see :meth:`EpochPlan.rank_ids`)."""
        return self.items.rank_ids(rank)

    def check_position(self, position: int) -> None:
        """Raise :class:`PlanError` unless ``position`` is a rank position of this plan."""
        self.items.check_position(position)

    @cached_property
    def hash(self) -> str:
        """A stable hex digest of the plan: the stored plan, ``W``, the bands and the items."""
        return digest(
            {
                "base": self.base.hash,
                "shuffle_window": self.window,
                "bands": self.bands,
                "items": self.items.hash,
            }
        )

    def replan(self, position: int, world_size: int) -> RebatchPlan:
        """Deal the items left after ``position`` lockstep reads to ``world_size`` ranks.

        Each new rank gets a contiguous run of the items left, in item order (the first
        ``len % world_size`` ranks one more), so it reads window after window; the remainder
        rule of :class:`EpochPlan` then pads the ranks (repeating the first items) if asked.
        """
        left = sorted(self.items.remaining(position))
        items = EpochPlan(
            self.fingerprint,
            self.split,
            tuple(interleave(chunks(left, world_size))),
            self.seed,
            self.epoch,
            world_size,
            self.shuffle,
            (*self.items.resumed_from, (self.items.world_size, position)),
            self.pad,
        )
        return RebatchPlan(self.base, self.window, self.bands, self.windows, items)

    # -- windows -----------------------------------------------------------------------------

    @cached_property
    def _firsts(self) -> list[int]:
        return [w.first for w in self.windows]

    def locate(self, item: int) -> tuple[Window, int]:
        """The window an item is dealt from and its index there."""
        window = self.windows[bisect.bisect_right(self._firsts, item) - 1]
        return window, item - window.first

    def runs(self, items: Sequence[int]) -> list[tuple[Window, list[int]]]:
        """``items`` as runs of consecutive items of one window: (window, indices) each."""
        out: list[tuple[Window, list[int]]] = []
        for item in items:
            window, index = self.locate(item)
            if out and out[-1][0] is window:
                out[-1][1].append(index)
            else:
                out.append((window, [index]))
        return out

    def window_key(self, window: Window) -> str:
        """What seeds a window's permutation: (fingerprint, split, seed, epoch, W, window)."""
        p = self.items
        fields = [p.fingerprint, p.split, p.seed, p.epoch, self.window, window.index]
        return digest(["rebatch", *fields])


def rank_windows(base: EpochPlan, rank: int, window: int, bands: int = 0) -> list[list[int]]:
    """``rank``'s stored batches cut into windows of ``window``, in the order it reads them.

    Without ``bands`` the windows follow the rank's list. With ``bands`` the list is first
    sorted by band (``batch id % bands``; stably, so the shuffle orders each band), so a window
    pools batches of similar lengths, and the windows are then put in an order shuffled for
    (fingerprint, split, seed, epoch, rank).
    """
    ids = base.rank_ids(rank)
    if bands:
        ids.sort(key=lambda b: b % bands)
    parts = [ids[i : i + window] for i in range(0, len(ids), window)]
    if bands and base.shuffle:
        where = f"{base.split}/rank {rank}/windows"
        order = shuffled(range(len(parts)), base.fingerprint, where, base.seed, base.epoch)
        parts = [parts[i] for i in order]
    return parts


def make_plan(
    fingerprint: str,
    split: str,
    batch_ids: Iterable[int],
    *,
    window: int = 0,
    bands: int = 0,
    **options: Any,
) -> EpochPlan | RebatchPlan:
    """An epoch's plan: a :class:`RebatchPlan` with ``window``, else an :class:`EpochPlan`.

    ``options``: the plans' common keywords (``seed``, ``epoch``, ``world_size``, ``shuffle``,
    ``resumed_from``, ``pad``; see :meth:`EpochPlan.create`).
    """
    if window:
        return RebatchPlan.create(
            fingerprint, split, batch_ids, window=window, bands=bands, **options
        )
    return EpochPlan.create(fingerprint, split, batch_ids, **options)
