"""Epoch plans: the deterministic shuffle of a split, dealt to ranks, and its re-planning."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import PlanError

__all__ = ["PLAN_VERSION", "EpochPlan", "digest", "shuffled"]

PLAN_VERSION = 1
"""Bumped whenever the shuffle or the dealing changes, so old states refuse to resume."""


def digest(doc: Any) -> str:
    """A stable 32-hex-digit BLAKE2b digest of JSON-able ``doc`` (keys sorted)."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def shuffled(ids: Sequence[int], fingerprint: str, split: str, seed: int, epoch: int) -> list[int]:
    """Return ``ids`` in a deterministic pseudo-random order for (fingerprint, split, seed, epoch).

    A Fisher-Yates shuffle driven by ``random.Random(s).random()``, where ``s`` is a BLAKE2b hash
    of the four inputs: ``random()`` is the one sequence CPython guarantees across versions, so
    every rank, process and Python version computes the same order.
    """
    rng = random.Random(int(digest([PLAN_VERSION, fingerprint, split, seed, epoch]), 16))
    order = list(ids)
    for i in range(len(order) - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    return order


@dataclass(frozen=True)
class EpochPlan:
    """Which batches each rank reads, in which order, for one epoch of one split.

    The order is the split's batch ids, sorted, then shuffled (when ``shuffle``) by
    :func:`shuffled` for (fingerprint, split, seed, epoch). It is dealt round robin: rank ``r``
    reads ``slots[r::world_size]``, so after every rank has read ``p`` batches the ranks
    together have read exactly ``slots[:p * world_size]``.

    **Remainder rule (pad, like ``DistributedSampler``):** when the count is not divisible by
    ``world_size``, :attr:`slots` is :attr:`order` followed by its first batches again (cycled
    when there are fewer batches than ranks) until its length divides evenly. Every rank gets
    ``ceil(len(order) / world_size)`` batches; every batch is read at least once per epoch and
    at most ``world_size - len(order) % world_size`` batches are read twice (the first ones of
    the order, so which ones rotates with the shuffle each epoch). Nothing is ever skipped.

    **Without padding** (``pad=False``, for exact evaluation): :attr:`slots` is :attr:`order`,
    so every batch is read exactly once and the first ``len(order) % world_size`` ranks read one
    batch more than the others. Collectives that expect the same number of steps on every rank
    (DDP's gradient all-reduce, a per-step ``all_gather``) then need care: gather the results
    once after the loop instead. A resume state of rank 0 (which reads the most) is exact.

    **Resume:** :meth:`replan` deals the batches the ranks have not read yet to a new world size
    with the same rule; ``resumed_from`` records each earlier ``(world_size, position)`` segment
    of the epoch, so the plan can be rebuilt from a saved state.

    Attributes:
        fingerprint: the store fingerprint the batch ids belong to.
        split: the split name.
        order: the batches still to be dealt this epoch, each once, in reading order.
        seed: the shuffle seed.
        epoch: the epoch number.
        world_size: the number of ranks.
        shuffle: whether the order is shuffled.
        resumed_from: earlier ``(world_size, position)`` segments of this epoch, oldest first.
        pad: pad the ranks' lists to equal length (the remainder rule); ``False``: no repeats.
    """

    fingerprint: str
    split: str
    order: tuple[int, ...]
    seed: int = 0
    epoch: int = 0
    world_size: int = 1
    shuffle: bool = True
    resumed_from: tuple[tuple[int, int], ...] = ()
    pad: bool = True

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise PlanError(f"world_size must be at least 1, not {self.world_size}")
        if len(set(self.order)) != len(self.order):
            raise PlanError(f"split {self.split!r} lists a batch id more than once")

    @classmethod
    def create(
        cls,
        fingerprint: str,
        split: str,
        batch_ids: Iterable[int],
        *,
        seed: int = 0,
        epoch: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        resumed_from: Iterable[tuple[int, int]] = (),
        pad: bool = True,
    ) -> EpochPlan:
        """Plan an epoch of ``batch_ids``, replaying the ``resumed_from`` segments if any.

        Args:
            fingerprint: the store fingerprint.
            split: the split name.
            batch_ids: every batch id of the split (any order).
            seed: the shuffle seed (the same on every rank).
            epoch: the epoch number.
            world_size: the number of ranks of the (last) segment.
            shuffle: shuffle the order; otherwise batch ids ascend.
            resumed_from: ``(world_size, position)`` of each earlier segment of this epoch.
            pad: pad the ranks to equal length (see the remainder rule); ``False``: no repeats.
        """
        ids = sorted(int(i) for i in batch_ids)
        order = shuffled(ids, fingerprint, split, seed, epoch) if shuffle else ids
        segments = [(int(w), int(p)) for w, p in resumed_from]
        first_size = segments[0][0] if segments else world_size
        plan = cls(fingerprint, split, tuple(order), seed, epoch, first_size, shuffle, pad=pad)
        for i, (_, position) in enumerate(segments):
            next_size = segments[i + 1][0] if i + 1 < len(segments) else world_size
            plan = plan.replan(position, next_size)
        return plan

    @cached_property
    def slots(self) -> tuple[int, ...]:
        """:attr:`order` padded (remainder rule) to a multiple of :attr:`world_size`.

        Without :attr:`pad`, :attr:`order` itself.
        """
        if not self.order or not self.pad:
            return self.order
        pad = -len(self.order) % self.world_size
        cycles = -(-pad // len(self.order))
        return self.order + (self.order * cycles)[:pad]

    @property
    def per_rank(self) -> int:
        """How many batches each rank reads (without :attr:`pad`: the most any rank reads)."""
        return -(-len(self.slots) // self.world_size)

    def rank_ids(self, rank: int) -> list[int]:
        """The batch ids ``rank`` reads, in order.

        Raises:
            PlanError: ``rank`` is not in ``[0, world_size)``.
        """
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank} is not in [0, {self.world_size})")
        return list(self.slots[rank :: self.world_size])

    @cached_property
    def hash(self) -> str:
        """A stable hex digest of the plan (everything that decides who reads what)."""
        # ``pad_ranks`` appears only when off, so states saved before it existed still match
        unpadded = {} if self.pad else {"pad_ranks": False}
        return digest(
            {
                **unpadded,
                "version": PLAN_VERSION,
                "fingerprint": self.fingerprint,
                "split": self.split,
                "seed": self.seed,
                "epoch": self.epoch,
                "world_size": self.world_size,
                "shuffle": self.shuffle,
                "order": list(self.order),
                "resumed_from": [list(s) for s in self.resumed_from],
            }
        )

    def check_position(self, position: int) -> None:
        """Raise :class:`PlanError` unless ``position`` is a rank position of this plan."""
        if not 0 <= position <= self.per_rank:
            raise PlanError(f"position {position} is not in [0, {self.per_rank}] for this plan")

    def remaining(self, position: int) -> tuple[int, ...]:
        """The batches not read yet once every rank has read ``position`` batches, in order."""
        self.check_position(position)
        read = set(self.slots[: position * self.world_size])
        return tuple(b for b in self.order if b not in read)

    def replan(self, position: int, world_size: int) -> EpochPlan:
        """Deal the batches left after ``position`` lockstep reads to ``world_size`` ranks.

        Args:
            position: batches every rank of this plan has read.
            world_size: the new number of ranks.
        """
        return EpochPlan(
            self.fingerprint,
            self.split,
            self.remaining(position),
            self.seed,
            self.epoch,
            world_size,
            self.shuffle,
            (*self.resumed_from, (self.world_size, position)),
            self.pad,
        )
