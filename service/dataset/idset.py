"""Data point id sets: the unit of work of priming, one per batch."""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import xxhash

__all__ = ["DataPointIDSet", "IntIDs", "compact_ids", "plan_id_sets"]


class IntIDs(Sequence[int]):
    """An immutable sequence of integer ids held as 64-bit values, not Python objects.

    A plan keeps every batch's ids for the life of a server: as a tuple of ``int`` objects that
    is about 36 bytes an id, here 8. It compares and hashes like the tuple of its ids.
    """

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = ids if isinstance(ids, array) and ids.typecode == "q" else array("q", ids)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> IntIDs: ...

    def __getitem__(self, index: int | slice) -> int | IntIDs:
        if isinstance(index, slice):
            return IntIDs(self._ids[index])
        return self._ids[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntIDs):
            return self._ids == other._ids
        if isinstance(other, tuple | list):
            return tuple(self._ids) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._ids))

    def __repr__(self) -> str:
        return repr(tuple(self._ids))


_INT64 = range(-(2**63), 2**63)


def _int_array(ids: Sequence[Any]) -> array[int] | None:
    """``ids`` as a new ``array('q')`` when every one is a plain 64-bit ``int``, else ``None``."""
    if not isinstance(ids, range) and not all(type(i) is int and i in _INT64 for i in ids):
        return None
    try:
        return array("q", ids)
    except OverflowError:  # a range beyond 64 bits
        return None


def compact_ids(ids: Iterable[Any]) -> Sequence[Any]:
    """``ids`` as :class:`IntIDs` when every one is a plain 64-bit ``int``, else as a tuple."""
    if isinstance(ids, IntIDs):
        return ids
    items = ids if isinstance(ids, range | tuple | list) else tuple(ids)
    values = _int_array(items)
    return tuple(items) if values is None else IntIDs(values)


@dataclass(frozen=True)
class DataPointIDSet:
    """The data point ids of one batch, sent to a priming worker.

    Attributes:
        batch_id: the batch id (its sequence number within the split).
        data_point_ids: the ids of the batch's data points, in order (:class:`IntIDs` when
            they are integers, else a tuple: see :func:`compact_ids`).
        split_name: the split of the batch.
        torch_seed_context: the torch seed set before the batch is encoded, so random
            vectorizers give the same tensors on any worker.
    """

    batch_id: int
    data_point_ids: Sequence[Any]
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
            compact_ids(data["data_point_ids"]),
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
    order: Callable[[str, Any], Any] | None = None,
) -> list[DataPointIDSet]:
    """Cut each split into batches of ``batch_size`` ids, deterministically for ``seed``.

    Splits named in ``shuffle`` have their ids shuffled (seeded) before cutting; the last batch of
    a split may be smaller. At most ``batch_limit`` batches are made per split. ``order``, given
    a split name and its ids (a list or an ``array``) after the shuffle, reorders them in place
    before cutting (length bucketing: :func:`~.buckets.bucketed`).
    """
    shuffled = set(shuffle)
    sets = []
    for split in sorted(splits):
        keys = splits[split]
        # shuffled in place as 64-bit values when they are integers: the same permutation as a
        # list's, without an object per id
        ids: Any = _int_array(keys)
        if ids is None:
            ids = list(keys)
        if split in shuffled:
            random.Random(f"{seed}:{split}").shuffle(ids)
        if order is not None:
            order(split, ids)
        count = 0
        for start in range(0, len(ids), batch_size):
            if count >= batch_limit:
                break
            context = {"seed": batch_seed(seed, split, count)}
            chunk = ids[start : start + batch_size]
            batch_ids = IntIDs(chunk) if isinstance(chunk, array) else tuple(chunk)
            sets.append(DataPointIDSet(count, batch_ids, split, context))
            count += 1
    return sets
