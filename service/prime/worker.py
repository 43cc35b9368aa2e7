"""The priming worker: plain data in (a spec and id sets), batch objects written to the store.

A worker rebuilds the dataset from its importable factory (never from pickled closures), opens
the store by URL and writes each encoded batch itself; only byte counts go back. It dies with the
process that started it (:mod:`.guard`, its initializer).
"""

from __future__ import annotations

from typing import Any

import torch

from batchstash.client import BatchError
from batchstash.service.dataset.idset import DataPointIDSet
from batchstash.service.encode import Encoder
from batchstash.service.factory import load_factory
from batchstash.service.store.backend import open_backend
from batchstash.service.store.writer import BatchWriter

__all__ = ["encode_chunk", "write_batch"]

_contexts: dict[str, tuple[Encoder, BatchWriter]] = {}


def _context(spec: dict[str, Any]) -> tuple[Encoder, BatchWriter]:
    key = repr(sorted(spec.items()))
    if key not in _contexts:
        torch.set_num_threads(1)  # one process per core: no intra-op oversubscription
        built = load_factory(spec["factory"])(**spec["factory_kwargs"])
        encoder = getattr(built, "encoder", built)
        if not isinstance(encoder, Encoder):
            raise BatchError(f"dataset factory {spec['factory']!r} did not build a BatchStash")
        groups = [frozenset(g) for g in spec["groups"]]
        writer = BatchWriter(
            open_backend(spec["store_url"]), groups, spec["fingerprint"], spec["generation"]
        )
        _contexts[key] = (encoder, writer)
    return _contexts[key]


def encode_chunk(spec: dict[str, Any], id_sets: list[dict[str, Any]]) -> list[int]:
    """Encode and store a chunk of id sets (arguments are plain data).

    Returns:
        The bytes written for each id set, in order.
    """
    encoder, writer = _context(spec)
    sizes = []
    for data in id_sets:
        id_set = DataPointIDSet.from_dict(data)
        sizes.append(write_batch(encoder, writer, id_set))
    return sizes


def write_batch(encoder: Encoder, writer: BatchWriter, id_set: DataPointIDSet) -> int:
    """Encode one id set and write its group objects; returns the bytes written."""
    batch = encoder.encode(id_set)
    return writer.write(id_set.split_name, id_set.batch_id, id_set.data_point_ids, batch.attributes)
