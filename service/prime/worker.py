"""The priming worker: rebuilds the stash from its importable factory and encodes id sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from batchstash.service.stash.idset import DataPointIDSet

if TYPE_CHECKING:
    from batchstash.service.engine import BatchStash

__all__ = ["encode_chunk"]

_stashes: dict[str, BatchStash] = {}


def _stash(factory: str, kwargs: dict[str, Any]) -> BatchStash:
    from batchstash.service.engine import BatchStash

    key = f"{factory}:{sorted(kwargs.items())!r}"
    if key not in _stashes:
        torch.set_num_threads(1)  # one process per core: no intra-op oversubscription
        _stashes[key] = BatchStash.from_factory(factory, **kwargs)
    return _stashes[key]


def encode_chunk(factory: str, kwargs: dict[str, Any], id_sets: list[dict[str, Any]]) -> int:
    """Encode and store a chunk of id sets in a worker process (arguments are plain data).

    Returns:
        The number of batches stored.
    """
    stash = _stash(factory, kwargs)
    for data in id_sets:
        stash.encode_id_set(DataPointIDSet.from_dict(data))
    return len(id_sets)
