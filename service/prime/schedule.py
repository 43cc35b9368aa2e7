"""The order a prime encodes in: ``train`` first, each split in batch order, demanded batches first.

A :class:`WorkQueue` hands an executor its chunks one at a time, when the executor has room for
one, so a batch a trainer asks for while the prime runs (a :class:`Demand`, filled by the
store's reader on every ``503 not_primed``) goes into the very next chunk instead of waiting
for the rest of the queue.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence

from batchstash.service.dataset.idset import DataPointIDSet

from ..store.demand import Demand, Key

__all__ = ["WorkQueue", "priority"]

logger = logging.getLogger(__name__)


def priority(id_set: DataPointIDSet) -> tuple[bool, str, int]:
    """``train`` first, then the other splits, each in batch order.

    A trainer waiting on a prime starts after its first batches, not after dev and test.
    """
    return (id_set.split_name != "train", id_set.split_name, id_set.batch_id)


class WorkQueue:
    """The id sets a prime has still to hand out, in :func:`priority` order, demand first.

    Iterating yields chunks of at most ``chunk_size`` id sets, made when asked for: each first
    takes what ``demand`` holds, and a chunk of demanded batches holds nothing else (an
    executor reports a chunk when all of it is stored).

    Args:
        id_sets: the id sets to encode.
        chunk_size: id sets per chunk (at least 1).
        demand: batches to encode before the others (``None``: the plain order).
        ramp: the first ``ramp`` chunks hold one id set each (one a worker: the first stored
            batches are reported as soon as they are stored, not a whole chunk later).
    """

    def __init__(
        self,
        id_sets: Sequence[DataPointIDSet],
        chunk_size: int,
        demand: Demand | None = None,
        ramp: int = 0,
    ) -> None:
        self.chunk_size = max(1, chunk_size)
        self.ramp = ramp
        self.demand = demand
        self.demanded = 0
        """How many id sets were handed out early because they were demanded."""
        self._order = deque(sorted(id_sets, key=priority))
        self._pending: dict[Key, DataPointIDSet] = {
            (s.split_name, s.batch_id): s for s in self._order
        }
        self._urgent: deque[Key] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[list[DataPointIDSet]]:
        while self._pending:
            yield self.next_chunk()

    def next_chunk(self) -> list[DataPointIDSet]:
        """The next chunk: demanded batches not handed out yet, else the next in order."""
        if self.demand is not None:
            self._urgent.extend(k for k in self.demand.take() if k in self._pending)
        chunk: list[DataPointIDSet] = []
        while self._urgent and len(chunk) < self.chunk_size:
            id_set = self._pending.pop(self._urgent.popleft(), None)
            if id_set is not None:
                chunk.append(id_set)
        if chunk:
            self.demanded += len(chunk)
            logger.debug(
                "encoding demanded batches next: %s",
                ", ".join(f"{s.split_name}/{s.batch_id}" for s in chunk),
            )
            return chunk
        size = self.chunk_size
        if self.ramp > 0:
            self.ramp, size = self.ramp - 1, 1
        while self._order and len(chunk) < size:
            id_set = self._order.popleft()
            if self._pending.pop((id_set.split_name, id_set.batch_id), None) is not None:
                chunk.append(id_set)
        return chunk
