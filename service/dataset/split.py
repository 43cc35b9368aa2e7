"""Split containers: the data point ids of each split and the raw data of each id."""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from batchstash.client import BatchError

from .fingerprint import ContentHasher, Unfingerprintable, ordered_ids, type_name
from .splitting import assign_splits, plain_id

__all__ = [
    "CsvSplitStashContainer",
    "MemorySplitStashContainer",
    "SplitStashContainer",
]


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

    def get_many(self, data_point_ids: Sequence[Any]) -> list[Any]:
        """The raw data of several data points, in order.

        A batch's rows are asked for at once: containers over columns or files read them
        together.
        """
        return [self[i] for i in data_point_ids]

    def version(self) -> str:
        """A token that changes whenever the data does.

        Each priming worker checks its own against the priming process's before it encodes.
        It is the fingerprint unless a subclass has a cheaper one (its files' ``stat``
        signatures).
        """
        return self.fingerprint()


class MemorySplitStashContainer(SplitStashContainer):
    """A container over in-memory records: a mapping of id to record, or a sequence of records.

    Records are any raw data (dicts of column values for :class:`RowDataPoint`). Splits come
    from exactly one rule, as for the table containers: ``splits`` (the ids of each split),
    ``ratios`` (a seeded shuffle) or ``split_column`` (a key of each record). Ids are the
    mapping's keys, or for a sequence its positions or each record's ``id_column``.

    Its fingerprint covers the content of every record exactly (see
    :mod:`batchstash.service.dataset.fingerprint` for the types it covers); a record holding
    anything else is refused when the container is made.

    Args:
        records: raw data by data point id, or a sequence of records.
        splits: the ids of each split.
        split_column: the key of each record naming its split.
        ratios: split name to fraction of a seeded shuffle.
        seed: the shuffle seed for ``ratios``.
        id_column: the key of each record holding its id (a sequence of records only).

    Raises:
        BatchError: a split names an id without a record, duplicate ids, no split rule, or a
            record (or id) holds a value that cannot be fingerprinted.
    """

    FINGERPRINT_FORMAT: ClassVar[bytes] = b"batchstash.memory-split.v2"

    def __init__(
        self,
        records: Mapping[Any, Any] | Sequence[Any],
        splits: Mapping[str, Sequence[Any]] | None = None,
        *,
        split_column: str | None = None,
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
    ) -> None:
        self._records = _records(records, id_column)
        if splits is not None and ratios is None:
            self._splits = {name: tuple(ids) for name, ids in splits.items()}
            missing = [i for ids in self._splits.values() for i in ids if i not in self._records]
            if missing:
                raise BatchError(f"split ids without a record: {missing[:5]}")
            _refuse_repeated(self._splits)
        else:
            ids = list(self._records)

            def column(name: str) -> list[Any]:
                return [_field(self._records[i], name, i) for i in ids]

            keys = [] if split_column is None else [split_column]
            chosen = assign_splits(
                ids, column, keys, split_column=split_column, splits=splits, ratios=ratios,
                seed=seed, where="records",
            )  # fmt: skip
            self._splits = {name: tuple(listed) for name, listed in chosen.items()}
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


def _refuse_repeated(splits: Mapping[str, Sequence[Any]]) -> None:
    """Refuse an id listed twice: a data point is in one split, once (as table rows are)."""
    seen: dict[Any, str] = {}
    for name, ids in splits.items():
        for i in ids:
            if i in seen:
                where = f"twice in split {name!r}" if seen[i] == name else "in more than one split"
                raise BatchError(f"records: id {i!r} is listed {where}")
            seen[i] = name


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
        if ratios is None and split_column is None:
            raise BatchError("give a split_column or ratios")
        if ratios is None and rows and split_column not in rows[0]:
            raise BatchError(f"{self.path}: no column {split_column!r}")
        try:
            super().__init__(
                rows,
                split_column=None if ratios is not None else split_column,
                ratios=ratios,
                seed=seed,
                id_column=id_column,
            )
        except BatchError as exc:
            raise BatchError(f"{self.path}: {exc.message}") from None


def _records(records: Any, id_column: str | None) -> dict[Any, Any]:
    """Records by id: a mapping as it is, a sequence by position or by ``id_column``."""
    if type(records).__module__.startswith("pandas"):
        raise BatchError("for a pandas DataFrame, use DataFrameSplitStashContainer(df, ...)")
    if isinstance(records, Mapping):
        if id_column is not None:
            raise BatchError("id_column= is for a sequence of records; a mapping's keys are ids")
        return dict(records)
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise BatchError(f"records must be a mapping or a sequence, not {type_name(records)}")
    if id_column is None:
        return dict(enumerate(records))
    found: dict[Any, Any] = {}
    for n, record in enumerate(records):
        key = plain_id(_field(record, id_column, n), f"records, id column {id_column!r}")
        if key in found:
            raise BatchError(f"records: duplicate id {key!r} in column {id_column!r}")
        found[key] = record
    return found


def _field(record: Any, name: str, where: Any) -> Any:
    try:
        return record[name]
    except (KeyError, TypeError, IndexError):
        raise BatchError(f"record {where!r} has no {name!r}") from None
