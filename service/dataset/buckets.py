"""Length bucketing at priming: ids sorted by length within windows before batches are cut.

As tf.data's ``bucket_by_sequence_length``, batches of similar lengths pad less: a split's ids (in
their planned, for ``train`` shuffled, order) are cut into windows of ``window`` batches, each
window's ids are sorted by a length key (stably), and the batches are then cut from them. Batch
``b`` of a split holds the ``b % window``-th shortest group of its window, which a client reads
back from the metadata's ``bucketing`` to re-deal rows among batches of similar lengths (see
``batchstash.client.rebatch``). The order of batches is the client's to shuffle.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchstash.client import BatchError

__all__ = ["LengthBuckets", "bucketed", "length_of"]


@dataclass(frozen=True)
class LengthBuckets:
    """Which length to sort by, and how many batches a window sorts together.

    Attributes:
        key: the data point attribute whose ``len()`` (or integer value) is the length.
        window: batches a window (``window * batch_size`` ids sorted together).
    """

    key: str
    window: int = 64

    def __post_init__(self) -> None:
        if not self.key or self.window < 1:
            raise BatchError(f"bucket_by needs an attribute name and a window >= 1, not {self}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (in the fingerprint and the batch metadata)."""
        return {"key": self.key, "window": self.window}


def length_of(point: Any, key: str) -> int:
    """The length of ``point`` by ``key``: ``len(point.key)``, or ``point.key`` as an integer.

    Raises:
        BatchError: the attribute is missing, or neither sized nor an integer.
    """
    try:
        value = getattr(point, key)
    except AttributeError as exc:
        raise BatchError(
            f"bucket_by {key!r}: data point {getattr(point, 'id', '?')!r} has no such attribute"
        ) from exc
    if hasattr(value, "__len__"):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise BatchError(
        f"bucket_by {key!r}: data point {getattr(point, 'id', '?')!r} gives "
        f"{type(value).__name__}, neither sized nor an integer"
    )


def bucketed(
    ids: Any, lengths: Callable[[Sequence[Any]], Sequence[int]], span: int, limit: int
) -> Any:
    """``ids`` with each window of ``span`` ids sorted by length (stable), in place.

    Args:
        ids: a split's ids in planned order (a list or an ``array``), sorted in place.
        lengths: the lengths of a sequence of ids.
        span: ids a window.
        limit: only the first ``limit`` ids are read (the batches a split keeps).
    """
    for start in range(0, min(len(ids), limit), span):
        window = list(ids[start : start + span])
        sizes = lengths(window)
        ordered = [window[i] for i in sorted(range(len(window)), key=sizes.__getitem__)]
        end = start + len(window)
        ids[start:end] = array(ids.typecode, ordered) if isinstance(ids, array) else ordered
    return ids
