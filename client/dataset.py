"""A ``torch.utils.data.IterableDataset`` over a batchstash server, shardable across workers."""

from __future__ import annotations

import functools
import logging
import multiprocessing.context
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .batch import Batch, check_batch_type
from .frameworks import accelerate_wraps
from .http import BatchClient
from .iterate import BatchIterator
from .passes import EpochCursor
from .ranks import Ranks, detect_rank

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
            dataset.set_epoch(epoch)  # optional: each pass is the next epoch anyway
            for step, batch in enumerate(loader, 1):
                ...
                checkpoint = {"data": dataset.state_dict(step), ...}

    **Each pass is a new epoch.** Iterating the dataset again (a new ``for`` over the
    DataLoader, as Lightning, accelerate and plain loops do) reads the next epoch, so the order
    is reshuffled without a ``set_epoch`` call; :meth:`set_epoch` names the epoch of the next
    pass (the passes after it count on from there). This reaches every DataLoader worker,
    persistent ones included: the epochs, passes and the resume state live in a small
    shared-memory tensor the workers read each time they start a pass.

    **Reading.** The process that reads (the training process with ``num_workers=0``, else
    each worker) reads its share as :meth:`BatchClient.iter_batches` does: requests pipelined on
    one connection to the server's data listener (else a thread a request), bodies received
    into reused buffers and decoded in place. With ``num_workers=0`` that is as fast as
    ``iter_batches``, and the fastest way to read. Workers make reading slower, not faster:
    every tensor a worker yields reaches the training process through a new block of shared
    memory that torch's DataLoader allocates and copies it into (the dataset adds no copy of
    its own). They pay off when per-batch CPU work (a ``transform``) costs more than that
    hand-over, as they then run it in parallel; docs/benchmarks.md has the numbers.

    **Batch composition** is fixed when the store is primed unless ``shuffle_window`` is set:
    then the rows of each ``W`` stored batches are re-dealt into new batches every epoch (see
    :meth:`BatchClient.iter_batches`). Each worker reads the whole windows its batches come
    from, so with ``W`` and ``N`` workers each stored batch is fetched ``N`` times.

    **Ranks** are resolved when a pass starts (or :func:`len` is taken), in the training
    process, not when the dataset is built: a dataset made at module level before the process
    group exists (Lightning's launcher, ``mp.spawn``) still reads its own rank's share.

    **Resuming:** :meth:`state_dict` gives the state after the training loop has taken some
    batches of the current pass; :meth:`load_state_dict` (or the constructor's ``state``)
    makes the next pass read that state's epoch and yield exactly the batches it had not
    reached yet. With another world size than the state's, the batches no rank has read are
    re-dealt to the new ranks (see :class:`BatchIterator`). The state stays until
    :meth:`set_epoch` moves to another epoch than the state's (``set_epoch`` of the state's own
    epoch keeps it, so the loop above resumes); a pass of another epoch ignores it.

    **HF accelerate:** do not pass the DataLoader to ``accelerator.prepare`` (it would make
    process 0 read its own rank's share and dispatch it to every process, training on part of
    the epoch): the dataset already gives each process its share. Move batches with
    ``batch.to(accelerator.device)``. A prepared loader is refused with an error saying so.

    Args:
        url: the server's base URL, or several replicas' (a sequence or one comma separated
            string; see :class:`BatchClient`): each worker's client spreads its requests over
            them and fails over from one that is down.
        split: the split name.
        epoch: the epoch of the first pass (see :meth:`set_epoch`; ``state`` sets its own).
        shuffle: shuffle the order.
        seed: the shuffle seed (the same on every rank).
        rank: this rank; ``None``: detected when a pass starts, in the training process,
            from the initialized ``torch.distributed`` process group, else the
            ``RANK``/``WORLD_SIZE`` environment torchrun sets, else 0 (see
            :func:`~batchstash.client.ranks.resolve_rank`).
        world_size: the number of ranks; ``None``: detected like ``rank`` (else 1).
        prefetch: batches fetched ahead by the process that reads (the training process
            with ``num_workers=0``, else each DataLoader worker), as in
            :meth:`BatchClient.iter_batches` (default 4, or ``W + 8`` with
            ``shuffle_window=W``): pipelined on one connection to the server's data listener
            when it has one, else a thread a request.
        attributes: only these attributes.
        token: the bearer token.
        as_dict: yield ``{attribute: tensor}`` dicts instead of :class:`Batch` objects.
        transform: called on each item (a :class:`Batch`, or its dict with ``as_dict``) in the
            process that reads it, a DataLoader worker where there are workers; the dataset
            yields what it returns. Per-batch CPU work placed here runs in parallel in the
            workers (see "Reading"); it must be picklable when workers are spawned.
        state: a :meth:`state_dict` to resume from (as :meth:`load_state_dict`, checked only
            when iterated).
        client_factory: builds the client in each worker (default: ``BatchClient(url, token,
            batch_type=batch_type)``); it must be picklable when workers are spawned.
        batch_type: the :class:`Batch` subclass the default client builds (with a
            ``client_factory``, give it to the client the factory builds).
        pad_ranks: equal-length rank lists (the default, for training; see
            :meth:`BatchClient.iter_batches`); ``False``: every batch exactly once, ranks
            uneven by at most one batch (exact evaluation).
        shuffle_window: re-deal the rows of each ``W`` stored batches into new batches every
            epoch (``0``: the stored batches; see :meth:`BatchClient.iter_batches`). A resume
            state brings its own.

    Raises:
        ValueError: both ``client_factory`` and ``batch_type``; when a pass starts,
            ``RANK``/``WORLD_SIZE`` set without the other or not integers.
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
        prefetch: int | None = None,
        attributes: Iterable[str] | None = None,
        token: str | None = None,
        as_dict: bool = False,
        transform: Callable[[Any], Any] | None = None,
        state: Mapping[str, Any] | None = None,
        client_factory: Callable[[], BatchClient] | None = None,
        batch_type: type[Batch] | None = None,
        pad_ranks: bool = True,
        shuffle_window: int = 0,
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
        self._given_ranks = (rank, world_size)
        self._resolved_ranks: tuple[int, int] | None = None  # set in a spawned worker's copy
        self._logged_ranks: Ranks | None = None
        self._prepared_by_accelerate = False  # set in a spawned worker's copy
        self.prefetch = prefetch
        self.attributes = None if attributes is None else sorted(set(attributes))
        self.as_dict = as_dict
        self.transform = transform
        self.pad_ranks = pad_ranks
        self.shuffle_window = shuffle_window
        state_epoch = _state_epoch(state)
        self._cursor = EpochCursor(epoch if state_epoch is None else state_epoch, state)
        self._passes = 0  # passes this copy started (a persistent worker's copy counts on)
        self._main_key = random.getrandbits(62)  # names this copy's passes in the main process
        chosen = check_batch_type(Batch if batch_type is None else batch_type)
        self.client_factory = client_factory or functools.partial(
            BatchClient, url, token, batch_type=chosen
        )

    @property
    def rank(self) -> int:
        """This process's rank (given, else detected now; see the class's ``rank``)."""
        return self._ranks()[0]

    @property
    def world_size(self) -> int:
        """The number of ranks (given, else detected now)."""
        return self._ranks()[1]

    def _ranks(self) -> tuple[int, int]:
        if self._resolved_ranks is not None:
            return self._resolved_ranks
        found = detect_rank(*self._given_ranks)
        if found != self._logged_ranks:  # one line a change, not one a pass
            found.log()
        self._logged_ranks = found
        return found.as_tuple()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if multiprocessing.context.get_spawning_popen() is not None:
            # pickled for a process being spawned (a DataLoader worker) by the training
            # process, which has the process group and the launcher's environment: the worker
            # reads with these ranks (a copy made any other way resolves its own when used)
            state["_resolved_ranks"] = self._ranks()
            prepared = self._prepared_by_accelerate or accelerate_wraps(self)
            state["_prepared_by_accelerate"] = prepared
        return state

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads (shared with the DataLoader workers)."""
        return self._cursor.next_epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._cursor.set_next(epoch)

    @property
    def current_epoch(self) -> int:
        """The epoch of the pass in progress, or of the last one (before any: the next)."""
        return self._cursor.current_epoch

    @property
    def state(self) -> dict[str, Any] | None:
        """The resume state the next pass of its epoch starts from (``None``: the start)."""
        return self._cursor.state

    @state.setter
    def state(self, state: Mapping[str, Any] | None) -> None:
        self._cursor.state = state

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` in the next pass (optional: each pass is the next epoch).

        Reaches persistent DataLoader workers too. Drops a resume state of another epoch; keeps
        one of ``epoch`` (so ``load_state_dict`` then ``set_epoch`` of its epoch resumes).

        Raises:
            RuntimeError: the DataLoader was prepared by HF accelerate (see the class).
        """
        self._refuse_accelerate()
        state = self.state
        if state is not None and _state_epoch(state) != int(epoch):
            self.state = None
        self.epoch = epoch

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next pass yields what it had left.

        Sets the next pass's epoch to the state's. Works with persistent DataLoader workers
        (call it between two passes, not while one is being iterated) and with any world size:
        with the state's, each rank continues its list; with another, the batches left are
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

    def iterator(
        self, client: BatchClient, epoch: int | None = None, *, prefetch: int | None = 0
    ) -> BatchIterator:
        """The rank's :class:`BatchIterator` of ``epoch`` (default: the current pass's).

        It starts from the resume state where that is of the same epoch; ``prefetch`` as
        :meth:`BatchClient.iter_batches`' (default: none).
        """
        epoch = self.current_epoch if epoch is None else epoch
        state = self.state
        return self._iterator(
            client, epoch, state if _state_epoch(state) == epoch else None, prefetch
        )

    def _iterator(
        self,
        client: BatchClient,
        epoch: int,
        state: Mapping[str, Any] | None,
        prefetch: int | None = 0,
    ) -> BatchIterator:
        rank, world_size = self._ranks()
        return client.iter_batches(
            self.split,
            epoch=epoch,
            shuffle=self.shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            prefetch=prefetch,
            attributes=self.attributes,
            state=state,
            pad_ranks=self.pad_ranks,
            shuffle_window=self.shuffle_window,
        )

    def state_dict(self, position: int) -> dict[str, Any]:
        """The resume state after the training loop has taken ``position`` batches this pass.

        Args:
            position: batches taken from the DataLoader in the current pass (all workers
                together; after a resume, since the resume).

        Raises:
            ValueError: ``position`` is more than this pass yields.
        """
        with self.client_factory() as client:
            it = self.iterator(client)
            if not 0 <= position <= len(it):
                raise ValueError(f"position {position} is not in [0, {len(it)}]")
            it.position += position
            return it.state_dict()

    def _item(self, batch: Batch) -> Any:
        item = dict(batch.attributes) if self.as_dict else batch
        return item if self.transform is None else self.transform(item)

    def _refuse_accelerate(self) -> None:
        if self._prepared_by_accelerate or accelerate_wraps(self):
            raise RuntimeError(
                "this BatchDataset's DataLoader was passed to accelerator.prepare(), which "
                "would train on part of each epoch (process 0 reads its own rank's share and "
                "dispatches it to every process). BatchDataset already gives each process its "
                "share: keep the DataLoader out of prepare() and move batches with "
                "batch.to(accelerator.device)"
            )

    def __iter__(self) -> Iterator[Any]:
        # not a generator: the pass is claimed when the DataLoader makes its fetcher, before
        # any batch is asked for, so every worker of a pass claims it while the pass is on
        self._refuse_accelerate()
        self._ranks()  # a launcher's half-set environment fails here, not at the first batch
        info = get_worker_info()
        if info is None:
            worker_id, num_workers, key = 0, 1, (self._main_key, self._passes)
        else:
            worker_id, num_workers = info.id, info.num_workers
            key = ((info.seed - info.id) % 2**62, self._passes)
        self._passes += 1
        epoch = self._cursor.start_pass(key, worker_id)
        return self._pass(epoch, worker_id, num_workers)

    def _pass(self, epoch: int, worker_id: int, num_workers: int) -> Iterator[Any]:
        with self.client_factory() as client:
            it = self.iterator(client, epoch, prefetch=self.prefetch)
            ids = worker_shard(it.remaining_ids(), worker_id, num_workers)
            logger.debug(
                "worker %d/%d of rank %d reads %d batches of %s epoch %d",
                worker_id,
                num_workers,
                it.rank,
                len(ids),
                self.split,
                it.plan.epoch,
            )
            stream = it.stream(ids)
            try:
                for batch in stream:
                    yield self._item(batch)
            finally:
                stream.close()  # stops the reader before its client closes

    def __len__(self) -> int:
        """Batches this rank reads in the next pass (what a ``batch_size=None`` loader yields)."""
        with self.client_factory() as client:
            return len(self.iterator(client, self.epoch))


def _state_epoch(state: Mapping[str, Any] | None) -> int | None:
    """The epoch a resume state is of (``None`` when there is none or it is unreadable)."""
    try:
        return None if state is None else int(state["epoch"])
    except (KeyError, TypeError, ValueError):
        return None
