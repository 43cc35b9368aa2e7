"""Where priming time goes: generating and vectorizing a batch versus persisting it.

Measured in this process (``workers=0``) on a sample of batches, each step timed apart with the
engine's public steps: build the data points, ``batch.encode()`` (vectorize), then
``BatchWriter.write`` (wire encoding, write, rename; ``wire.encode_parts`` is timed alone too)
plus the one store sync a prime makes before its manifest (counted in persisting).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from batchstash.client import wire
from batchstash.service.store.writer import BatchWriter, identity_metadata

from .synthetic import factory

__all__ = ["breakdown"]


def breakdown(path: Path, options: dict[str, Any], sample: int) -> dict[str, Any]:
    """Encode and store ``sample`` batches of the synthetic dataset, timing each step.

    Returns:
        Seconds by step (``data_points``, ``vectorize``, ``serialize``, ``persist``), the batches
        timed, and ``persist_share``: persisting over the whole of priming a batch.
    """
    stash = factory(path=str(path), **{**options, "batches": sample})
    stash.clear_all()
    steps = {"data_points": 0.0, "vectorize": 0.0, "serialize": 0.0, "persist": 0.0}
    writer = BatchWriter(stash.backend, stash.groups, stash.config_hash, "benchmark")
    for id_set in stash.batch_data_point_sets[:sample]:
        t0 = time.perf_counter()
        points = stash.data_points(id_set)
        t1 = time.perf_counter()
        batch = stash.create_batch(points, id_set.split_name, id_set.batch_id)
        batch.encode()
        t2 = time.perf_counter()
        expect = identity_metadata(
            id_set.split_name, id_set.batch_id, stash.config_hash, id_set.data_point_ids
        )
        wire.encode_parts(batch.attributes, expect)
        t3 = time.perf_counter()
        writer.write(id_set.split_name, id_set.batch_id, id_set.data_point_ids, batch.attributes)
        t4 = time.perf_counter()
        steps["data_points"] += t1 - t0
        steps["vectorize"] += t2 - t1
        steps["serialize"] += t3 - t2
        steps["persist"] += t4 - t3
    t5 = time.perf_counter()
    stash.backend.sync()  # what makes the objects durable: the prime's one sync
    steps["persist"] += time.perf_counter() - t5
    total = steps["data_points"] + steps["vectorize"] + steps["persist"]
    stash.clear_all()
    return {
        "batches": sample,
        "vectorizer": options.get("vectorizer", "series"),
        "seconds": steps,
        "total_s": total,
        "persist_share": steps["persist"] / total if total else None,
        "ms_per_batch": 1e3 * total / sample if sample else None,
    }
