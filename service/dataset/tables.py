"""Containers over tables: rows with columns, split by a column, by given ids or by ratios.

:class:`TableSplitStashContainer` is the base of the DataFrame, array, Parquet and Hugging Face
containers. It holds the index (which row each id is, which ids each split has); a subclass
opens its source, reads whole columns for the index and the rows of a batch on demand
(:meth:`TableSplitStashContainer.get_many`), and says what its content is (the fingerprint).

Splits come from exactly one of:

- ``splits``: the ids of each split, given (rows in no split are left out);
- ``ratios``: split name to fraction, applied to a seeded shuffle of every id;
- ``split_column``: the column naming each row's split (``"split"`` by default);
- the source's own splits (a ``datasets.DatasetDict``'s), where ``split_column`` is ``None``.

Ids are the row numbers, counted across all of the source's files or splits, or the values of
``id_column`` (integers or strings, unique over the whole table): an id names one row wherever
it is listed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from batchstash.client import BatchError

from .fingerprint import ContentHasher, type_name
from .split import SplitStashContainer
from .splitting import assign_splits, plain_id

__all__ = ["TableSplitStashContainer", "picked_columns"]


def picked_columns(
    available: Sequence[str], columns: Sequence[str] | None, where: str
) -> tuple[str, ...]:
    """``columns`` (default: every one ``available``), each checked to be one.

    Raises:
        BatchError: a column not available (naming those that are).
    """
    if columns is None:
        return tuple(available)
    missing = [c for c in columns if c not in available]
    if missing:
        raise BatchError(f"{where}: no column {missing[0]!r} (columns: {', '.join(available)})")
    return tuple(columns)


class TableSplitStashContainer(SplitStashContainer):
    """Rows by id and ids by split over a table; a subclass reads its source.

    A subclass's ``__init__`` opens the source, then calls :meth:`_index` once; it implements
    :meth:`_read_rows` (rows by number, as dicts of column values) and :meth:`_source_digest`
    (its content), and may override :meth:`_check_source` (called before each read) and
    :meth:`version`.
    """

    FINGERPRINT_FORMAT: ClassVar[bytes] = b"batchstash.table.v1"

    columns: tuple[str, ...]
    """The columns each row holds."""

    def _index(
        self,
        num_rows: int,
        column: Callable[[str], Sequence[Any]],
        *,
        split_column: str | None,
        id_column: str | None,
        splits: Mapping[str, Sequence[Any]] | None,
        ratios: Mapping[str, float] | None,
        seed: int,
        row_ids: Sequence[Any] | None = None,
        source_splits: Mapping[str, Sequence[Any]] | None = None,
        available: Sequence[str] | None = None,
        where: str = "the data",
    ) -> None:
        """Build the index: ids, the row of each id, and the splits.

        Args:
            num_rows: the table's rows.
            column: reads one whole column of the source, in row order.
            split_column: see :func:`assign_splits`.
            id_column: the column of ids (``None``: ``row_ids``, else the row numbers).
            splits: see :func:`assign_splits`.
            ratios: see :func:`assign_splits`.
            seed: see :func:`assign_splits`.
            row_ids: the ids when there is no ``id_column`` (a DataFrame's index).
            source_splits: the source's own splits, by row number.
            available: every column of the source (default :attr:`columns`): the id and split
                columns need not be among the columns a row holds.
            where: the source, as error messages name it.

        Raises:
            BatchError: an unknown or non-unique id column, or a bad split rule.
        """
        self._where, self._row_count = where, num_rows
        names = tuple(self.columns if available is None else available)
        if id_column is not None:
            if id_column not in names:
                raise BatchError(
                    f"{where}: no id column {id_column!r} (columns: {', '.join(names)})"
                )
            row_ids = column(id_column)
        if row_ids is None:
            self._ids: list[Any] | None = None
            self._row_of: dict[Any, int] | None = None
            ids: Sequence[Any] = range(num_rows)
        else:
            label = f"{where}, id column {id_column!r}" if id_column else f"{where}, index"
            self._ids = [plain_id(i, label) for i in row_ids]
            self._row_of = {}
            for row, i in enumerate(self._ids):
                if self._row_of.setdefault(i, row) != row:
                    raise BatchError(f"{label}: duplicate id {i!r}")
            ids = self._ids
        if source_splits is not None and self._ids is not None:
            ids_of = self._ids
            source_splits = {n: [ids_of[r] for r in rows] for n, rows in source_splits.items()}
        self._splits = assign_splits(
            ids,
            column,
            names,
            split_column=split_column,
            splits=splits,
            ratios=ratios,
            seed=seed,
            source_splits=source_splits,
            where=where,
        )
        self._rule = {
            "split_column": split_column,
            "id_column": id_column,
            "ratios": None if ratios is None else dict(ratios),
            "seed": seed if ratios is not None else None,
            "given": splits is not None,
        }

    @property
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        """The ids of each split."""
        return dict(self._splits)

    def rows_of(self, data_point_ids: Sequence[Any]) -> list[int]:
        """The row number of each id.

        Raises:
            BatchError: an id no row has.
        """
        try:
            if self._row_of is None:
                return [_row_number(i, self._row_count) for i in data_point_ids]
            return [self._row_of[i] for i in data_point_ids]
        except (KeyError, IndexError) as exc:
            raise BatchError(f"{self._where}: no data point with id {exc.args[0]!r}") from None

    def __len__(self) -> int:
        """The number of rows of the table (in a split or not)."""
        return self._row_count

    def __getitem__(self, data_point_id: Any) -> dict[str, Any]:
        """One row, as a dict of column values."""
        return self.get_many([data_point_id])[0]

    def get_many(self, data_point_ids: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows, in order, read together: a batch's rows cost one read of the source.

        Raises:
            BatchError: an unknown id, or the source changed since it was opened.
        """
        rows = self.rows_of(data_point_ids)
        self._check_source()
        return self._read_rows(rows)

    def fingerprint(self) -> str:
        """A digest of the source's content, the columns read and each split's ids."""
        return self._digest_with(self._source_digest())

    def _digest_with(self, source: str) -> str:
        """A digest of ``source`` (the content, or a version of it) and of the index."""
        hasher = ContentHasher()
        hasher.raw(self.FINGERPRINT_FORMAT)
        hasher.update(type_name(self))
        hasher.update(source)
        hasher.update(list(self.columns))
        hasher.update(self._rule["id_column"])
        hasher.update(len(self._splits))
        for name in sorted(self._splits):
            hasher.update(name)
            listed = self._splits[name]
            if all(type(i) is int for i in listed):
                hasher.update(np.sort(np.asarray(listed, dtype=np.int64)))
            else:
                hasher.update(sorted(listed, key=lambda i: (type(i).__name__, i)))
        return hasher.hexdigest()

    @abstractmethod
    def _read_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The rows numbered ``rows``, in order, as dicts of column values."""

    @abstractmethod
    def _source_digest(self) -> str:
        """A digest of the source's content (every column)."""

    def _check_source(self) -> None:  # noqa: B027 (a hook: in-memory sources cannot change)
        """Raise :class:`BatchError` if the source changed since it was opened."""


def _row_number(data_point_id: Any, rows: int) -> int:
    if type(data_point_id) is not int and not isinstance(data_point_id, np.integer):
        raise KeyError(data_point_id)
    if not 0 <= data_point_id < rows:
        raise IndexError(data_point_id)
    return int(data_point_id)
