"""A ``torch.utils.data.IterableDataset`` over a batchstash server, shardable across workers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .batch import Batch
from .http import BatchClient
from .iterate import BatchIterator, prefetched

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

        dataset = BatchDataset("http://stash:8000", "train", rank=rank, world_size=world)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            for batch in loader:
                ...

    To resume mid-epoch, pass ``state`` (a :meth:`state_dict`); it applies to the first epoch
    iterated and :meth:`set_epoch` drops it.

    Args:
        url: the server's base URL, or several replicas' (a sequence or one comma separated
            string; see :class:`BatchClient`): each worker's client spreads its requests over
            them and fails over from one that is down.
        split: the split name.
        epoch: the epoch number (see :meth:`set_epoch`).
        shuffle: shuffle the order.
        seed: the shuffle seed (the same on every rank).
        rank: this rank.
        world_size: the number of ranks.
        prefetch: batches each worker fetches ahead in threads.
        attributes: only these attributes.
        token: the bearer token.
        as_dict: yield ``{attribute: tensor}`` dicts instead of :class:`Batch` objects.
        state: a :meth:`state_dict` to resume from.
        client_factory: builds the client in each worker (default: ``BatchClient(url, token)``);
            it must be picklable when workers are spawned.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        split: str,
        *,
        epoch: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        attributes: Iterable[str] | None = None,
        token: str | None = None,
        as_dict: bool = False,
        state: Mapping[str, Any] | None = None,
        client_factory: Callable[[], BatchClient] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.split = split
        self.epoch = epoch
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.attributes = None if attributes is None else sorted(set(attributes))
        self.as_dict = as_dict
        self.state = None if state is None else dict(state)
        self.client_factory = client_factory or functools.partial(BatchClient, url, token)

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (call before each epoch, like ``DistributedSampler``)."""
        self.epoch = epoch
        self.state = None

    def iterator(self, client: BatchClient) -> BatchIterator:
        """The rank's :class:`BatchIterator` for the current epoch, without prefetching."""
        return client.iter_batches(
            self.split,
            epoch=self.epoch,
            shuffle=self.shuffle,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            prefetch=0,
            attributes=self.attributes,
            state=self.state,
        )

    def state_dict(self, position: int) -> dict[str, Any]:
        """The resume state after the training loop has taken ``position`` batches this epoch.

        Args:
            position: batches taken from the DataLoader this epoch (all workers together).
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
                self.epoch,
            )
            for batch in prefetched(it.fetch, ids, self.prefetch):
                yield self._item(batch)

    def __len__(self) -> int:
        """Batches this rank reads this epoch (what a ``batch_size=None`` DataLoader yields)."""
        with self.client_factory() as client:
            return len(self.iterator(client))
