"""Split containers: the data point ids of each split and the raw data of each id."""

from __future__ import annotations

import csv
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from batchstash.client import BatchError

from .fingerprint import ContentHasher, Unfingerprintable, ordered_ids

__all__ = ["CsvSplitStashContainer", "MemorySplitStashContainer", "SplitStashContainer"]


class SplitStashContainer(ABC):
    """The source data of a stash: ids by split (``train``/``dev``/``test``) and data by id.

    Subclasses implement :attr:`keys_by_split`, :meth:`__getitem__` and :meth:`fingerprint`.
    """

    @property
    @abstractmethod
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        """The data point ids of each split (any sequence: a ``range`` holds no id objects)."""

    @property
    def split_names(self) -> tuple[str, ...]:
        """The names of the splits, sorted."""
        return tuple(sorted(self.keys_by_split))

    @abstractmethod
    def __getitem__(self, data_point_id: Any) -> Any:
        """Return the raw data of one data point."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of the ids and the content of the data: a change marks the store stale."""


class MemorySplitStashContainer(SplitStashContainer):
    """A container over in-memory records.

    Its fingerprint covers the content of every record exactly (see
    :mod:`batchstash.service.dataset.fingerprint` for the types it covers); a record holding
    anything else is refused when the container is made.

    Args:
        records: raw data by data point id.
        splits: the ids of each split.

    Raises:
        BatchError: a split names an id without a record, or a record (or id) holds a value
            that cannot be fingerprinted.
    """

    FINGERPRINT_FORMAT: ClassVar[bytes] = b"batchstash.memory-split.v2"

    def __init__(self, records: Mapping[Any, Any], splits: Mapping[str, Sequence[Any]]) -> None:
        self._records = dict(records)
        self._splits = {name: tuple(ids) for name, ids in splits.items()}
        missing = [i for ids in self._splits.values() for i in ids if i not in self._records]
        if missing:
            raise BatchError(f"split ids without a record: {missing[:5]}")
        self._content_digest()  # refuses what it cannot fingerprint now, not at a prime

    @property
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        """The data point ids of each split."""
        return dict(self._splits)

    def __getitem__(self, data_point_id: Any) -> Any:
        try:
            return self._records[data_point_id]
        except KeyError:
            raise BatchError(f"no data point with id {data_point_id!r}") from None

    def fingerprint(self) -> str:
        """Content hash of each split's ids (in any order: the stored plan fixes it) and records.

        Computed at each call, so records changed in place since the container was made count.

        Raises:
            BatchError: a value that cannot be fingerprinted (naming its type and record).
        """
        return self._content_digest()

    def _content_digest(self) -> str:
        hasher = ContentHasher()
        hasher.raw(self.FINGERPRINT_FORMAT)
        stage, key = "the split names", None
        try:
            hasher.update(len(self._splits))
            for key in sorted(self._splits):
                stage = "split"
                hasher.update(key)
                hasher.update(ordered_ids(hasher, self._splits[key]))
            stage = "the record ids"
            keys = ordered_ids(hasher, self._records)
            hasher.update(len(keys))
            for key in keys:
                stage = "id"
                hasher.update(key)
                stage = "record"
                hasher.update(self._records[key])
        except Unfingerprintable as exc:
            raise BatchError(exc.message(_where(stage, key))) from None
        return hasher.hexdigest()


def _where(stage: str, key: Any) -> str:
    """Where a fingerprint failed: ``record 3``, ``the id ...``, ``the ids of split 'train'``."""
    text = repr(key) if len(repr(key)) < 60 else f"{repr(key)[:57]}..."
    if stage == "split":
        return f"the ids of split {text}"
    if stage == "id":
        return f"the id {text}"
    if stage == "record":
        return f"record {text}"
    return stage


class CsvSplitStashContainer(MemorySplitStashContainer):
    """A container over a CSV file, split by a column or by ratios.

    Rows are dicts of strings keyed by the header. Ids come from ``id_column`` (as strings) or are
    the row numbers (ints).

    Args:
        path: the CSV file.
        split_column: the column naming each row's split; if ``None``, ``ratios`` are used.
        ratios: split name to fraction (summing to 1), applied after a seeded shuffle.
        seed: the shuffle seed for ``ratios``.
        id_column: the column holding unique ids (row numbers when ``None``).
    """

    def __init__(
        self,
        path: str | Path,
        split_column: str | None = "split",
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
    ) -> None:
        self.path = Path(path)
        with self.path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        records: dict[Any, Any] = {}
        for number, row in enumerate(rows):
            key: Any = number if id_column is None else row[id_column]
            if key in records:
                raise BatchError(f"{self.path}: duplicate id {key!r} in column {id_column!r}")
            records[key] = row
        if ratios is not None:
            splits = _ratio_splits(list(records), ratios, seed)
        elif split_column is not None:
            splits = {}
            for key, row in records.items():
                if split_column not in row:
                    raise BatchError(f"{self.path}: no column {split_column!r}")
                splits.setdefault(row[split_column], []).append(key)
        else:
            raise BatchError("give a split_column or ratios")
        super().__init__(records, splits)


def _ratio_splits(ids: list[Any], ratios: Mapping[str, float], seed: int) -> dict[str, list[Any]]:
    if not ratios or any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise BatchError(f"split ratios must be non-negative and sum to 1, got {dict(ratios)}")
    random.Random(seed).shuffle(ids)
    splits, start = {}, 0
    names = list(ratios)
    for i, name in enumerate(names):
        end = len(ids) if i == len(names) - 1 else start + round(ratios[name] * len(ids))
        splits[name] = ids[start:end]
        start = end
    return splits
