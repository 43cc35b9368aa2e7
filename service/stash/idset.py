"""Data point id sets: the unit of work of priming, one per batch."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

__all__ = ["DataPointIDSet", "plan_id_sets"]


@dataclass(frozen=True)
class DataPointIDSet:
    """The data point ids of one batch, sent to a priming worker.

    Attributes:
        batch_id: the batch id (its sequence number within the split).
        data_point_ids: the ids of the batch's data points, in order.
        split_name: the split of the batch.
        torch_seed_context: the torch seed set before the batch is encoded, so random
            vectorizers give the same tensors on any worker.
    """

    batch_id: int
    data_point_ids: tuple[Any, ...]
    split_name: str
    torch_seed_context: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the manifest)."""
        return {
            "batch_id": self.batch_id,
            "data_point_ids": list(self.data_point_ids),
            "split_name": self.split_name,
            "torch_seed_context": self.torch_seed_context,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataPointIDSet:
        """Rebuild from :meth:`to_dict` data."""
        return cls(
            int(data["batch_id"]),
            tuple(data["data_point_ids"]),
            str(data["split_name"]),
            dict(data.get("torch_seed_context") or {}),
        )


def batch_seed(seed: int, split: str, batch_id: int) -> int:
    """A 63-bit seed for one batch, independent of which worker encodes it."""
    return int(xxhash.xxh3_64_intdigest(f"{seed}\0{split}\0{batch_id}".encode()) >> 1)


def plan_id_sets(
    splits: Mapping[str, Sequence[Any]],
    batch_size: int,
    seed: int,
    batch_limit: int,
    shuffle: Iterable[str] = ("train",),
) -> list[DataPointIDSet]:
    """Cut each split into batches of ``batch_size`` ids, deterministically for ``seed``.

    Splits named in ``shuffle`` have their ids shuffled (seeded) before cutting; the last batch of
    a split may be smaller. At most ``batch_limit`` batches are made per split.
    """
    shuffled = set(shuffle)
    sets = []
    for split in sorted(splits):
        ids = list(splits[split])
        if split in shuffled:
            random.Random(f"{seed}:{split}").shuffle(ids)
        count = 0
        for start in range(0, len(ids), batch_size):
            if count >= batch_limit:
                break
            context = {"seed": batch_seed(seed, split, count)}
            sets.append(
                DataPointIDSet(count, tuple(ids[start : start + batch_size]), split, context)
            )
            count += 1
    return sets
