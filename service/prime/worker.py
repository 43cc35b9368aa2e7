"""The priming worker: plain data in (a :class:`~.work.Work` and id sets), objects written.

A worker rebuilds the dataset from its importable factory (never from pickled closures), keeps
its encoder, opens the store by URL and writes each encoded batch itself; only byte counts go
back. It dies with the process that started it (:mod:`.guard`, its initializer).
"""

from __future__ import annotations

from typing import Any

import torch

from batchstash.service.dataset.idset import DataPointIDSet
from batchstash.service.encode import Encoder
from batchstash.service.store.backend import open_backend
from batchstash.service.store.writer import BatchWriter

from .work import Work

__all__ = ["encode_chunk", "write_batch"]

_encoders: dict[tuple[str, str], Encoder] = {}
_writers: dict[str, BatchWriter] = {}


def _context(work: Work) -> tuple[Encoder, BatchWriter]:
    """The dataset (kept across primes while its recipe and data version stay) and the writer."""
    recipe = work.required_recipe("a priming worker")
    dataset_key = (repr(recipe), work.data_version)
    if dataset_key not in _encoders:
        torch.set_num_threads(1)  # one process per core: no intra-op oversubscription
        _encoders.clear()  # a warm worker keeps one dataset: the current one
        _encoders[dataset_key] = work.build("a priming worker").encoder
    key = repr(work)
    if key not in _writers:
        groups = [frozenset(g) for g in work.groups]
        _writers.clear()
        _writers[key] = BatchWriter(
            open_backend(work.store_url),
            groups,
            work.fingerprint,
            work.generation,
            dict(work.codecs),
        )
    return _encoders[dataset_key], _writers[key]


def encode_chunk(work: Work, id_sets: list[dict[str, Any]]) -> list[int]:
    """Encode and store a chunk of id sets (arguments are plain data).

    Returns:
        The bytes written for each id set, in order.
    """
    encoder, writer = _context(work)
    sizes = []
    for data in id_sets:
        id_set = DataPointIDSet.from_dict(data)
        sizes.append(write_batch(encoder, writer, id_set))
    return sizes


def write_batch(encoder: Encoder, writer: BatchWriter, id_set: DataPointIDSet) -> int:
    """Encode one id set and write its group objects; returns the bytes written."""
    batch = encoder.encode(id_set)
    return writer.write(id_set.split_name, id_set.batch_id, id_set.data_point_ids, batch.attributes)
