"""A ``torch.utils.data.IterableDataset`` over a batchstash server, shardable across workers."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .batch import Batch, check_batch_type
from .http import BatchClient
from .iterate import BatchIterator, prefetched
from .ranks import resolve_rank

__all__ = ["BatchDataset", "worker_shard"]

logger = logging.getLogger(__name__)


def worker_shard(ids: list[int], worker_id: int, num_workers: int) -> list[int]:
    """Return DataLoader worker ``worker_id``'s share of ``ids``: ``ids[worker_id::num_workers]``.

    A DataLoader takes one item from each worker in turn, so these round-robin shards come out of
    the loader in the order of ``ids``; shards are disjoint and together cover ``ids``.
    """
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker {worker_id} is not in [0, {num_workers})")
    return ids[worker_id::num_workers]


_STATE_BYTES = 64 * 1024
"""Room for a resume state in shared memory (a state is a few hundred bytes)."""


class _Cursor:
    """A dataset's epoch and resume state in shared memory, read by every DataLoader worker.

    A DataLoader pickles the dataset into each worker once; a persistent worker keeps that copy
    for every epoch. The cursor is one small tensor in shared memory (``share_memory_()``), and
    the pickled copies keep sharing it (fork inherits the mapping; spawn passes it with
    torch's multiprocessing pickler), so what the training process sets here is what a worker
    reads at its next ``__iter__``.
    """

    def __init__(self, epoch: int, state: Mapping[str, Any] | None) -> None:
        shared = torch.zeros(16 + _STATE_BYTES, dtype=torch.uint8)
        shared.share_memory_()  # type: ignore[no-untyped-call]
        self._head = shared[:16].view(torch.int64)  # the epoch, the state's size in bytes
        self._blob = shared[16:]  # the state's JSON
        self.epoch = epoch
        self.state = state

    @property
    def epoch(self) -> int:
        return int(self._head[0])

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._head[0] = int(epoch)

    @property
    def state(self) -> dict[str, Any] | None:
        size = int(self._head[1])
        if size == 0:
            return None
        return dict(json.loads(self._blob[:size].numpy().tobytes()))

    @state.setter
    def state(self, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self._head[1] = 0
            return
        raw = json.dumps(dict(state), separators=(",", ":")).encode()
        if not 0 < len(raw) <= _STATE_BYTES:
            raise ValueError(f"a resume state of {len(raw)} bytes does not fit {_STATE_BYTES}")
        self._head[1] = 0  # a worker starting now sees no half-written state
        self._blob[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        self._head[1] = len(raw)


class BatchDataset(IterableDataset[Any]):
    """One rank's batches of one epoch as an ``IterableDataset`` (use ``batch_size=None``).

    Each DataLoader worker builds its own :class:`BatchClient` (an ``httpx`` client must not
    cross a process boundary) and reads its :func:`worker_shard` of the rank's list, so no batch
    is read twice. Tensors stay on the CPU: pass ``pin_memory=True`` to the DataLoader (with
    ``as_dict=True``) and move them to the GPU in the training loop::

        dataset = BatchDataset("http://stash:8000", "train")  # rank and world size: torchrun's
        loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
        if checkpoint:
            dataset.load_state_dict(checkpoint["data"])  # resume mid-epoch
        for epoch in range(start_epoch, epochs):
            dataset.set_epoch(epoch)
            for step, batch in enumerate(loader, 1):
                ...
                checkpoint = {"data": dataset.state_dict(step), ...}

    **Epochs and resuming reach every worker**, persistent ones included: the epoch and the
    resume state live in a small shared-memory tensor the workers read each time they start an
    epoch (at ``__iter__``), so :meth:`set_epoch` and :meth:`load_state_dict` called between two
    epochs of one ``DataLoader(persistent_workers=True)`` apply to its next epoch.

    **Resuming:** :meth:`state_dict` gives the state after the training loop has taken some
    batches this epoch; :meth:`load_state_dict` (or the constructor's ``state``) makes the next
    epoch iterated yield exactly the batches that state had not reached yet. With another world
    size than the state's, the batches no rank has read are re-dealt to the new ranks (see
    :class:`BatchIterator`). The state stays until :meth:`set_epoch` moves to another epoch
    than the state's (``set_epoch`` of the state's own epoch keeps it, so the loop above resumes).

    Args:
        url: the server's base URL, or several replicas' (a sequence or one comma separated
            string; see :class:`BatchClient`): each worker's client spreads its requests over
            them and fails over from one that is down.
        split: the split name.
        epoch: the epoch number (see :meth:`set_epoch`; ``state`` sets its own).
        shuffle: shuffle the order.
        seed: the shuffle seed (the same on every rank).
        rank: this rank; ``None``: detected when the dataset is built, in the training
            process, from the initialized ``torch.distributed`` process group, else the
            ``RANK``/``WORLD_SIZE`` environment torchrun sets, else 0 (see
            :func:`~batchstash.client.ranks.resolve_rank`).
        world_size: the number of ranks; ``None``: detected like ``rank`` (else 1).
        prefetch: batches each worker fetches ahead in threads.
        attributes: only these attributes.
        token: the bearer token.
        as_dict: yield ``{attribute: tensor}`` dicts instead of :class:`Batch` objects.
        state: a :meth:`state_dict` to resume from (as :meth:`load_state_dict`, checked only
            when iterated).
        client_factory: builds the client in each worker (default: ``BatchClient(url, token,
            batch_type=batch_type)``); it must be picklable when workers are spawned.
        batch_type: the :class:`Batch` subclass the default client builds (with a
            ``client_factory``, give it to the client the factory builds).

    Raises:
        ValueError: ``RANK``/``WORLD_SIZE`` set without the other or not integers, or both
            ``client_factory`` and ``batch_type``.
        TypeError: ``batch_type`` is not a :class:`Batch` subclass.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        split: str,
        *,
        epoch: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 2,
        attributes: Iterable[str] | None = None,
        token: str | None = None,
        as_dict: bool = False,
        state: Mapping[str, Any] | None = None,
        client_factory: Callable[[], BatchClient] | None = None,
        batch_type: type[Batch] | None = None,
    ) -> None:
        super().__init__()
        if client_factory is not None and batch_type is not None:
            raise ValueError(
                "pass batch_type to the BatchClient your client_factory builds, not to BatchDataset"
            )
        self.url = url
        self.split = split
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.prefetch = prefetch
        self.attributes = None if attributes is None else sorted(set(attributes))
        self.as_dict = as_dict
        state_epoch = _state_epoch(state)
        self._cursor = _Cursor(epoch if state_epoch is None else state_epoch, state)
        chosen = check_batch_type(Batch if batch_type is None else batch_type)
        self.client_factory = client_factory or functools.partial(
            BatchClient, url, token, batch_type=chosen
        )

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (shared with the DataLoader workers)."""
        return self._cursor.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._cursor.epoch = epoch

    @property
    def state(self) -> dict[str, Any] | None:
        """The resume state the next iteration starts from (``None``: the epoch's start)."""
        return self._cursor.state

    @state.setter
    def state(self, state: Mapping[str, Any] | None) -> None:
        self._cursor.state = state

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (call before each epoch, like ``DistributedSampler``).

        Reaches persistent DataLoader workers too. Drops a resume state of another epoch; keeps
        one of ``epoch`` (so ``load_state_dict`` then ``set_epoch`` of its epoch resumes).
        """
        state = self.state
        if state is not None and _state_epoch(state) != int(epoch):
            self.state = None
        self.epoch = epoch

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next epoch iterated yields what it had left.

        Sets the epoch to the state's. Works with persistent DataLoader workers (call it
        between two epochs, not while one is being iterated) and with any world size: with
        the state's, each rank continues its list; with another, the batches left are
        re-dealt. The state is checked against the server now (one request).

        Args:
            state: a :meth:`state_dict` (or :meth:`BatchIterator.state_dict`) of this split.

        Raises:
            PlanError: the state does not fit the store (another split, a changed store or
                batch list; see :meth:`BatchIterator.load_state_dict`).
        """
        with self.client_factory() as client:
            it = self._iterator(client, 0, state)  # a state restores its own epoch
        self.state = state
        self.epoch = it.plan.epoch

    def iterator(self, client: BatchClient) -> BatchIterator:
        """The rank's :class:`BatchIterator` for the current epoch, without prefetching."""
        return self._iterator(client, self.epoch, self.state)

    def _iterator(
        self, client: BatchClient, epoch: int, state: Mapping[str, Any] | None
    ) -> BatchIterator:
        return client.iter_batches(
            self.split,
            epoch=epoch,
            shuffle=self.shuffle,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            prefetch=0,
            attributes=self.attributes,
            state=state,
        )

    def state_dict(self, position: int) -> dict[str, Any]:
        """The resume state after the training loop has taken ``position`` batches this epoch.

        Args:
            position: batches taken from the DataLoader in this pass over the epoch (all
                workers together; after a resume, since the resume).

        Raises:
            ValueError: ``position`` is more than this pass yields.
        """
        with self.client_factory() as client:
            it = self.iterator(client)
            if not 0 <= position <= len(it):
                raise ValueError(f"position {position} is not in [0, {len(it)}]")
            it.position += position
            return it.state_dict()

    def _item(self, batch: Batch) -> Batch | dict[str, torch.Tensor]:
        return dict(batch.attributes) if self.as_dict else batch

    def __iter__(self) -> Iterator[Batch | dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        with self.client_factory() as client:
            it = self.iterator(client)
            ids = worker_shard(it.remaining_ids(), worker_id, num_workers)
            logger.debug(
                "worker %d/%d of rank %d reads %d batches of %s epoch %d",
                worker_id,
                num_workers,
                self.rank,
                len(ids),
                self.split,
                it.plan.epoch,
            )
            for batch in prefetched(it.fetch, ids, self.prefetch):
                yield self._item(batch)

    def __len__(self) -> int:
        """Batches this rank reads this epoch (what a ``batch_size=None`` DataLoader yields)."""
        with self.client_factory() as client:
            return len(self.iterator(client))


def _state_epoch(state: Mapping[str, Any] | None) -> int | None:
    """The epoch a resume state is of (``None`` when there is none or it is unreadable)."""
    try:
        return None if state is None else int(state["epoch"])
    except (KeyError, TypeError, ValueError):
        return None
