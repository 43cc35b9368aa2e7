"""The prefetching batch iterator of one rank's epoch (its plan is in :mod:`.plan`)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

import torch

from .batch import Batch
from .errors import PlanError
from .prefetch import prefetched
from .ranks import resolve_rank
from .rebatch import RebatchPlan, make_plan
from .redeal import redealt
from .resume import restore, state_of
from .source import BatchSource, GroupReader
from .staging import DeviceStage
from .waits import ReadStats

__all__ = ["PREFETCH", "WINDOW_AHEAD", "BatchIterator", "default_prefetch"]

logger = logging.getLogger(__name__)

PREFETCH = 4
"""The default ``prefetch`` of an epoch read without a ``shuffle_window``."""

WINDOW_AHEAD = 8
"""With ``shuffle_window=W`` the default ``prefetch`` is ``W + WINDOW_AHEAD``: a window's new
batches need every one of its stored batches, so a trainer is fed without a stall at each
window only where the next window is read while it steps through the last one's new batches
(measured, 1 MiB batches, a 2 ms step, ``W=16``: data wait 34 % of the pass with prefetch 4,
20 % with 16, 6 % with 24, against 1-2 % without a window)."""


def default_prefetch(shuffle_window: int) -> int:
    """The ``prefetch`` used where none is given (see :data:`WINDOW_AHEAD`).

    :data:`PREFETCH` without a window, ``shuffle_window +`` :data:`WINDOW_AHEAD` with one.
    """
    return PREFETCH if shuffle_window <= 0 else shuffle_window + WINDOW_AHEAD


class BatchIterator:
    """Yields one rank's batches of one epoch, in plan order, prefetched in background threads.

    Built by :meth:`BatchClient.iter_batches`. It is an iterator (single pass); its
    :meth:`state_dict` records how many batches it has yielded, and a new iterator resumes from
    it without repeating or skipping a batch::

        it = client.iter_batches("train", epoch=epoch)  # rank and world size: torchrun's
        it.load_state_dict(saved)            # or iter_batches(..., state=saved)
        for batch in it:
            ...
            saved = it.state_dict()          # JSON-able; store it in the checkpoint

    A state restores the split's epoch, seed, shuffle and ``shuffle_window``; rank and world
    size come from the new iterator. With the same world size the rank continues its list.
    With another world size the batches no rank has read yet (ranks advance in lockstep, as
    under DDP, so any rank's state will do) are re-dealt to the new ranks with the
    :class:`EpochPlan` remainder rule.

    Args:
        client: where the batches come from: a :class:`BatchClient`, or any
            :class:`~batchstash.client.source.BatchSource`.
        split: the split name.
        epoch: the epoch number.
        shuffle: shuffle the order.
        seed: the shuffle seed (the same on every rank).
        rank: this rank; ``None``: detected like ``world_size``.
        world_size: the number of ranks; ``None`` (with ``rank``): the initialized
            ``torch.distributed`` process group's, else the ``RANK`` and ``WORLD_SIZE``
            environment variables that ``torchrun`` sets, else rank 0 of 1 (see
            :func:`~batchstash.client.ranks.resolve_rank`; explicit values win).
        prefetch: batches fetched ahead (``0``: on demand; ``None``: :func:`default_prefetch`,
            4, or ``W + 8`` with ``shuffle_window=W``); at most this many are requested
            and not yet yielded (the group being yielded included), which bounds memory. On
            the data listener's pipelined connection this is a floor: where the link's
            bandwidth-delay product (its measured round trip times its rate) holds more, more
            are kept in flight, up to 64 MiB of answers (see
            :class:`~batchstash.client.inflight.InFlight`).
        batches_per_request: batches fetched in one request (default ``max(1, prefetch // 6)``
            pipelined: one group being yielded, five requests in flight; else
            ``max(1, prefetch // 3)``: two in flight); several a request save a round trip
            each.
        attributes: only these attributes.
        device: copy each batch there. For CUDA the copies run in the background thread on a
            stream of the iteration's own, from the pinned buffers the bodies were received
            into, and overlap the trainer's compute; a batch is ready to use on the current
            stream of the thread that takes it from ``next()`` (see
            :class:`~batchstash.client.staging.DeviceStage`).
        state: a :meth:`state_dict` to resume from.
        pipelined: with ``prefetch`` and a server's data listener (see
            :class:`BatchClient`'s ``data_listener``), send the requests ahead on one
            connection without waiting for their answers, read by one thread (about half the
            CPU per GB of one thread per request; see
            :class:`~batchstash.client.pipeline.PipelinedReader`); anything but a good answer
            is fetched by the request path, with its retries and failover. ``False``, or no
            listener: one request per prefetch thread.
        pad_ranks: give every rank the same number of batches by reading the first batches of
            the order again (the default, what DDP training needs: no rank waits on a step
            the others never take); ``False``: every batch exactly once, ranks uneven by at
            most one (exact evaluation; see :class:`EpochPlan`).
        shuffle_window: ``W > 0`` re-deals the rows of each ``W`` stored batches of the
            rank's list into new batches, differently every epoch (see
            :class:`~batchstash.client.rebatch.RebatchPlan` and
            :mod:`~batchstash.client.redeal`); ``0``: the stored batches as they are. It holds
            ``W`` stored batches besides ``prefetch``; the default ``prefetch`` reads the next
            window while the trainer steps (see :data:`WINDOW_AHEAD`).
        bucket_window: the store's length-bucketing window in batches (its metadata's
            ``bucketing``; :meth:`BatchClient.iter_batches` passes it): windows then pool
            batches of similar lengths.

    Attributes:
        reader: the pipelined reader once iteration started on one (``None``: threads); its
            ``pipelined`` and ``fallbacks`` count the groups each way (see
            :class:`~batchstash.client.source.GroupReader`).

    Raises:
        PlanError: a bad rank, or a state that does not fit the store (see
            :meth:`load_state_dict`).
        ValueError: ``RANK`` or ``WORLD_SIZE`` set without the other, or not integers.
    """

    def __init__(
        self,
        client: BatchSource,
        split: str,
        *,
        epoch: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int | None = None,
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        state: Mapping[str, Any] | None = None,
        batches_per_request: int | None = None,
        pipelined: bool = True,
        pad_ranks: bool = True,
        shuffle_window: int = 0,
        bucket_window: int = 0,
    ) -> None:
        if prefetch is None:
            prefetch = default_prefetch(shuffle_window)
        if prefetch < 0:
            raise ValueError(f"prefetch must not be negative, not {prefetch}")
        if shuffle_window < 0 or bucket_window < 0:
            raise ValueError(
                f"shuffle_window and bucket_window must not be negative, not {shuffle_window}, "
                f"{bucket_window}"
            )
        if batches_per_request is not None and batches_per_request < 1:
            raise ValueError(f"batches_per_request must be >= 1, not {batches_per_request}")
        self.client = client
        self.rank, world_size = resolve_rank(rank, world_size)
        self.prefetch = prefetch
        self.attributes = None if attributes is None else sorted(set(attributes))
        self.device = device
        self._stage: DeviceStage | None = None  # made when iteration starts (a CUDA stream)
        self.pipelined = pipelined
        self.reader: GroupReader | None = None
        fingerprint, self._batch_ids = client.split_batch_ids(split)  # learns the data listener
        # pipelined requests cost little each: smaller groups keep more of them in flight in
        # the same memory (measured: 1 MiB batches, prefetch 24, 4 a request beat 8 by 1.2-1.5x)
        default = prefetch // 6 if pipelined and client.can_pipeline() else prefetch // 3
        self.batches_per_request = batches_per_request or max(1, default)
        self.bucket_window = bucket_window
        self.plan = make_plan(
            fingerprint,
            split,
            self._batch_ids,
            seed=seed,
            epoch=epoch,
            world_size=world_size,
            shuffle=shuffle,
            pad=pad_ranks,
            window=shuffle_window,
            bands=bucket_window,
        )
        self.plan.rank_ids(self.rank)  # validates the rank
        self.position = 0
        self._stream: Generator[Batch, None, None] | None = None
        self.read_stats = ReadStats(split, self.plan.epoch)
        if state is not None:
            self.load_state_dict(state)

    @property
    def shuffle_window(self) -> int:
        """Stored batches a window pools (``0``: the stored batches as they are)."""
        return self.plan.window if isinstance(self.plan, RebatchPlan) else 0

    def rank_ids(self) -> list[int]:
        """This rank's batch ids (item ids with ``shuffle_window``) for the whole plan."""
        return self.plan.rank_ids(self.rank)

    def remaining_ids(self) -> list[int]:
        """The batch ids this iterator has still to yield, in order."""
        return self.rank_ids()[self.position :]

    def __len__(self) -> int:
        """The number of batches left to yield."""
        return len(self.remaining_ids())

    def fetch(self, batch_id: int) -> Batch:
        """Fetch one batch of the plan's split, refusing one from another store fingerprint."""
        return self.client.batch(
            self.plan.split,
            batch_id,
            self.attributes,
            self.device,
            fingerprint=self.plan.fingerprint,
        )

    def __iter__(self) -> BatchIterator:
        return self

    def _fetch_group(self, batch_ids: list[int], stage: DeviceStage | None) -> list[Batch]:
        """A group of the iteration, copied by its stage (handed over in :meth:`__next__`)."""
        start = time.perf_counter()
        batches = self.client.batches(
            self.plan.split, batch_ids, self.attributes, fingerprint=self.plan.fingerprint
        )
        fetched = time.perf_counter()
        self.read_stats.read(fetched - start, sum(map(_tensor_bytes, batches)))
        if stage is None:
            return batches
        batches = stage.copy(batches)
        self.read_stats.copied(time.perf_counter() - fetched)
        return batches

    def stats(self) -> dict[str, Any]:
        """Where this iteration's time went: the trainer's data wait and the reader's parts.

        ``wait_s`` (the consumer blocked in ``next()``) and its ``wait_share`` of the pass,
        the reader's ``network_s``, ``decode_s`` and ``copy_s``, ``bytes`` and ``batches``
        yielded, the ``receive_rate`` and a ``bound`` verdict (``trainer`` when the wait is
        under 5 % of the pass); see :class:`~batchstash.client.waits.ReadStats`. The end of
        each pass logs them as one line at INFO. With ``shuffle_window`` the wait includes
        re-dealing the rows into new batches.
        """
        return self.read_stats.as_dict()

    def stream(self, batch_ids: Sequence[int]) -> Generator[Batch, None, None]:
        """Yield the batches ``batch_ids`` of this plan in order, read as iteration reads.

        Pipelined on the data listener when the server has one (see ``pipelined``), else a
        prefetch thread a request, with this iterator's ``prefetch``, ``batches_per_request``,
        ``attributes`` and ``device``; :attr:`position` does not move. For a reader of part of
        the rank's list, such as a DataLoader worker's shard of :meth:`remaining_ids`; close
        the generator to stop its reader early. With ``shuffle_window`` the ids are items:
        each window they come from is read whole and its new batches built (on the CPU, then
        copied to ``device``).
        """
        if self.device is not None and self._stage is None:
            self._stage = DeviceStage(self.device, self.client.buffers)
        if isinstance(self.plan, RebatchPlan):
            # the new batches alive (the trainer's, the one it is handed, the one being built;
            # one fewer without a builder thread, which needs prefetch 4) count against
            # prefetch: the stored batches read ahead are the rest
            build = 1 if self.prefetch >= 4 else 0
            ahead = min(self.prefetch, max(1, self.prefetch - 2 - build))
            stored = functools.partial(self._stored, stage=None, prefetch=ahead)
            built = redealt(
                self.plan, list(batch_ids), stored, self._stage, self.client.buffers, build
            )
            return self._timed(built)
        return self._timed(self._stored(batch_ids, self._stage))

    def _stored(
        self, batch_ids: Sequence[int], stage: DeviceStage | None, prefetch: int | None = None
    ) -> Generator[Batch, None, None]:
        """The stored batches ``batch_ids`` in order, copied by ``stage`` (see :meth:`stream`).

        ``prefetch``: batches read ahead, if not this iterator's.
        """
        ids, size = list(batch_ids), self.batches_per_request
        groups = [ids[i : i + size] for i in range(0, len(ids), size)]
        # the group being yielded counts against prefetch, so at most prefetch batches are
        # requested and not yet yielded (at least one request ahead)
        ahead = self.prefetch if prefetch is None else prefetch
        in_flight = 0 if ahead == 0 else max(1, ahead // size - 1)
        stream: Generator[list[Batch], None, None]
        reader = None
        if in_flight and self.pipelined:
            reader = self.client.pipelined_reader(
                self.plan.split, self.attributes, stage, self.plan.fingerprint, in_flight
            )
        stats = self.read_stats
        if reader is not None:
            self.reader = reader
            reader.stats = stats
            stream = reader.groups(groups)
        else:
            stream = prefetched(lambda group: self._fetch_group(group, stage), groups, in_flight)
        try:
            for group in stream:
                # each batch is taken off its group as it is yielded, so none is kept alive here
                # after the consumer let it go (a re-dealt window gathered at once drops its
                # stored batches); the reader's own references are to this same list
                group.reverse()
                while group:
                    # in the thread that takes it: ready on that thread's current stream
                    yield group.pop() if stage is None else stage.hand_over(group.pop())
        finally:
            stream.close()

    def _timed(self, batches: Generator[Batch, None, None]) -> Generator[Batch, None, None]:
        """``batches``, the consumer's wait for each one counted; the pass's line logged."""
        stats = self.read_stats
        stats.started()
        try:
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                got = time.perf_counter()
                if batch is None:
                    break
                stats.waited(got - asked, 1, _tensor_bytes(batch), got)
                yield batch
            if stats.batches:
                logger.info("%s", stats.summary())
        finally:
            batches.close()

    def __next__(self) -> Batch:
        if self._stream is None:
            self._stream = self.stream(self.remaining_ids())
        batch = next(self._stream)
        self.position += 1
        return batch

    def close(self) -> None:
        """Stop prefetching and release the worker threads."""
        if self._stream is not None:
            self._stream.close()

    def state_dict(self) -> dict[str, Any]:
        """Return the JSON-able resume state (its keys: :mod:`~batchstash.client.resume`)."""
        return state_of(self.plan, self.rank, self.position, len(self._batch_ids))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict` (before the first batch is taken).

        Raises:
            PlanError: the iterator already started, the state is of another split or plan
                version, the store's fingerprint changed since the state was saved, or the
                split's batch ids no longer give the saved plan.
        """
        if self._stream is not None:
            raise PlanError("load_state_dict must be called before iterating")
        self.plan, self.position, self.bucket_window = restore(state, self.plan, self._batch_ids)
        self.plan.rank_ids(self.rank)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.plan.split!r}, epoch={self.plan.epoch}, "
            f"rank={self.rank}/{self.plan.world_size}, position={self.position}/"
            f"{self.plan.per_rank})"
        )


def _tensor_bytes(batch: Batch) -> int:
    return sum(int(t.nbytes) for t in batch.attributes.values())
