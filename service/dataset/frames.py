"""Containers over data in memory: a pandas ``DataFrame``, or arrays with rows on dim 0.

Both keep the caller's object (no copy) and fingerprint its content at each call, so data
changed in place since the container was made counts. Each priming worker rebuilds them with
the dataset factory; data larger than a fraction of memory belongs in files
(:class:`ArraySplitStashContainer.open` over ``.npy`` files, memory-mapped, or
:class:`~batchstash.service.dataset.parquet.ParquetSplitStashContainer`), which workers open
without loading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchstash.client import BatchError

from .files import CHANGED_HINT, FileVersion, changed_files, file_digest, versions_of
from .files import cache_dir as cache_dir_of
from .fingerprint import content_digest, type_name
from .tables import TableSplitStashContainer, picked_columns

__all__ = ["ArraySplitStashContainer", "DataFrameSplitStashContainer"]


class DataFrameSplitStashContainer(TableSplitStashContainer):
    """A container over a pandas ``DataFrame``: each row a dict of its column values.

    Ids are the DataFrame's index labels (integers or strings, unique), or the values of
    ``id_column``. Columns of arrays or lists (an image per row) come back as they are held.

    Args:
        df: the data.
        split_column: the column naming each row's split.
        splits: the ids of each split, given (instead of ``split_column``).
        ratios: split name to fraction of a seeded shuffle (instead of ``split_column``).
        seed: the shuffle seed for ``ratios``.
        id_column: the column of ids (default: the index).
        columns: the columns a row holds (default: all).

    Raises:
        BatchError: not a DataFrame, column names that are not unique strings, a missing
            column, ids that are not unique integers or strings, a bad split rule, or a value
            that cannot be fingerprinted.
    """

    def __init__(
        self,
        df: Any,
        split_column: str | None = "split",
        *,
        splits: Mapping[str, Sequence[Any]] | None = None,
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        import pandas as pd  # the pandas extra: imported only by users of DataFrames

        if not isinstance(df, pd.DataFrame):
            raise BatchError(f"expected a pandas DataFrame, got {type_name(df)}")
        names = list(df.columns)
        if not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
            raise BatchError(f"DataFrame columns must be unique strings: {names[:10]}")
        self._df = df
        self.columns = picked_columns(names, columns, "DataFrame")
        plain_index = isinstance(df.index, pd.RangeIndex) and (
            df.index.start,
            df.index.step,
        ) == (0, 1)
        self._index(
            len(df),
            lambda c: df[c].tolist(),
            split_column=split_column,
            id_column=id_column,
            splits=splits,
            ratios=ratios,
            seed=seed,
            row_ids=None if plain_index or id_column else df.index.tolist(),
            available=names,
            where="DataFrame",
        )
        self._source_digest()  # refuses what it cannot fingerprint now, not at a prime

    def _read_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        part = self._df.iloc[list(rows)]
        values = [part[c].to_numpy() for c in self.columns]
        return [dict(zip(self.columns, row, strict=True)) for row in zip(*values, strict=True)]

    def _source_digest(self) -> str:
        return content_digest(self._df, "the DataFrame")


class ArraySplitStashContainer(TableSplitStashContainer):
    """A container over named arrays sharing their first dimension (row ``i`` is ``a[i]`` of each).

    Arrays are numpy arrays (memory-mapped ones too) or CPU tensors; a row is a dict of each
    array's ``[i]`` (a numpy array or scalar, a tensor). A batch's rows are taken with one
    fancy index per array, so a memory-mapped array reads only those rows.

    Args:
        arrays: name to array; every array has the same length on dim 0.
        split_column: the array naming each row's split (strings).
        splits: the ids of each split, given.
        ratios: split name to fraction of a seeded shuffle.
        seed: the shuffle seed for ``ratios``.
        id_column: the array of ids (default: the row numbers).
        columns: the arrays a row holds (default: all).
        files: the files the arrays are memory-mapped from (:meth:`open` gives them): their
            digests are the content, and a change to one fails the next read.
        cache_dir: where the files' digests are kept (default ``$BATCHSTASH_CACHE_DIR`` or
            ``~/.cache/batchstash``).

    Raises:
        BatchError: no arrays, arrays of different lengths, a missing name, a bad split rule,
            or a value that cannot be fingerprinted.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        split_column: str | None = "split",
        *,
        splits: Mapping[str, Sequence[Any]] | None = None,
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
        files: Sequence[FileVersion] = (),
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._arrays = {str(k): v if _indexable(v) else np.asarray(v) for k, v in arrays.items()}
        if not self._arrays:
            raise BatchError("ArraySplitStashContainer needs at least one array")
        lengths = {k: len(v) for k, v in self._arrays.items()}
        if len(set(lengths.values())) != 1:
            raise BatchError(f"arrays must have the same length on dim 0: {lengths}")
        self._files = tuple(files)
        self._cache_root = cache_dir_of(cache_dir)
        self.columns = picked_columns(list(self._arrays), columns, "arrays")
        self._index(
            next(iter(lengths.values())),
            lambda c: self._arrays[c].tolist(),
            split_column=split_column,
            id_column=id_column,
            splits=splits,
            ratios=ratios,
            seed=seed,
            available=list(self._arrays),
            where="arrays",
        )
        self._source_digest()

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], split_column: str | None = "split", **options: Any
    ) -> ArraySplitStashContainer:
        """Memory-map every ``NAME.npy`` of a directory as array ``NAME``.

        Nothing is loaded: rows are read when a batch needs them, so each priming worker reads
        only its batches' rows. The fingerprint is the files' content digests, read once per
        file version (see :mod:`~batchstash.service.dataset.files`), and a file that changes
        after it was opened fails the next read.

        Args:
            path: the directory.
            split_column: as for the constructor.
            **options: the constructor's other keywords (``cache_dir`` among them).
        """
        files = sorted(Path(path).glob("*.npy"))
        if not files:
            raise BatchError(f"{path}: no .npy files")
        versions = versions_of(files)
        try:
            arrays = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in files}
        except (OSError, ValueError) as exc:
            raise BatchError(f"{path}: cannot memory-map its arrays: {exc}") from None
        return cls(arrays, split_column, files=versions, **options)

    def _read_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        index = np.asarray(rows, dtype=np.int64)
        taken = [
            self._arrays[c][torch.from_numpy(index)]
            if isinstance(self._arrays[c], torch.Tensor)
            else self._arrays[c][index]
            for c in self.columns
        ]
        return [dict(zip(self.columns, row, strict=True)) for row in zip(*taken, strict=True)]

    def _source_digest(self) -> str:
        if self._files:
            digests = [file_digest(v, self._cache_root) for v in self._files]
            return content_digest(digests, "the array files")
        return content_digest(self._arrays, "the arrays")

    def _check_source(self) -> None:
        changed = changed_files(self._files)
        if changed:
            raise BatchError(f"{changed[0]} changed since the dataset was opened: {CHANGED_HINT}")

    def version(self) -> str:
        """The files' ``stat`` signatures and the index (opened from files).

        Without files, the fingerprint.
        """
        if not self._files:
            return self.fingerprint()
        return self._digest_with(content_digest([v.key() for v in self._files], "the array files"))


def _indexable(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))
