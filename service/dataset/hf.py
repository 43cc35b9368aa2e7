"""A container over a Hugging Face ``datasets.Dataset`` or ``DatasetDict``.

A ``datasets`` dataset keeps its rows in Arrow files it memory-maps (``load_dataset``,
``load_from_disk``) or in memory (``Dataset.from_dict``, ``from_pandas``). A batch's rows are
read with one ``dataset[rows]`` in ``numpy`` format, so each priming worker, which rebuilds the
dataset with the factory, reads only its batches' rows of a memory-mapped dataset. Features
are decoded as ``datasets`` decodes them (an ``Image`` feature as an array, a ``ClassLabel`` as
its integer).

The fingerprint is the content of each split's rows as the dataset shows them (after a
``select``, ``shuffle`` or ``filter`` too), streamed through the hash as Arrow IPC. It is also
the data version each priming worker checks, so each worker reads the whole dataset once per
prime (for data of many GB, a Parquet file and :class:`ParquetSplitStashContainer`, whose
version is its files' ``stat`` signatures, start faster).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from batchstash.client import BatchError

from .fingerprint import type_name
from .tables import TableSplitStashContainer, picked_columns

__all__ = ["HuggingFaceSplitStashContainer"]


class HuggingFaceSplitStashContainer(TableSplitStashContainer):
    """A container over a ``datasets.Dataset`` or ``datasets.DatasetDict``.

    A ``DatasetDict``'s splits are the container's (``train``, ``validation``...), unless
    ``split_column``, ``splits`` or ``ratios`` say otherwise; a ``Dataset`` needs one of
    those. Ids are row numbers counted across the dict's splits in its order (``train``'s
    first), or the values of ``id_column``, unique across splits.

    Args:
        dataset: a ``datasets.Dataset`` or ``datasets.DatasetDict``.
        split_column: the column naming each row's split.
        splits: the ids of each split, given.
        ratios: split name to fraction of a seeded shuffle.
        seed: the shuffle seed for ``ratios``.
        id_column: the column of ids (default: the row numbers).
        columns: the columns a row holds (default: all).

    Raises:
        BatchError: not a dataset, a dict whose splits have different columns, a missing
            column, ids that are not unique, or a bad split rule.
    """

    def __init__(
        self,
        dataset: Any,
        split_column: str | None = None,
        *,
        splits: Mapping[str, Sequence[Any]] | None = None,
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        import datasets  # the huggingface extra: imported only by its users

        if isinstance(dataset, datasets.DatasetDict):
            parts = dict(dataset)
        elif isinstance(dataset, datasets.Dataset):
            parts = {"": dataset}
        else:
            raise BatchError(
                f"expected a datasets.Dataset or DatasetDict, got {type_name(dataset)}"
            )
        if not parts:
            raise BatchError("the DatasetDict has no splits")
        names = list(next(iter(parts.values())).column_names)
        for name, part in parts.items():
            if part.column_names != names:
                raise BatchError(f"split {name!r} has other columns than the first split")
        self.columns = picked_columns(names, columns, "the dataset")
        self._parts = [(name, part.with_format("numpy")) for name, part in parts.items()]
        self._starts, total, source = [], 0, {}
        for name, part in self._parts:
            self._starts.append(total)
            source[name] = list(range(total, total + len(part)))
            total += len(part)
        self._index(
            total,
            self._read_column,
            split_column=split_column,
            id_column=id_column,
            splits=splits,
            ratios=ratios,
            seed=seed,
            source_splits=source if isinstance(dataset, datasets.DatasetDict) else None,
            available=names,
            where="the dataset",
        )

    def _read_column(self, name: str) -> list[Any]:
        values: list[Any] = []
        for _, part in self._parts:
            # the rows as the dataset shows them: ``part.data`` is the table under a
            # ``select``, ``shuffle`` or ``filter``, whose indices say which rows and in what order
            shown = part.select_columns([name]).with_format("arrow")[:]
            values.extend(shown.column(name).to_pylist())
        return values

    def _read_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        by_part: dict[int, list[tuple[int, int]]] = {}
        for at, row in enumerate(rows):
            index = _part_of(self._starts, row)
            by_part.setdefault(index, []).append((at, row - self._starts[index]))
        out: list[dict[str, Any]] = [{} for _ in rows]
        for index, wanted in by_part.items():
            part = self._parts[index][1]
            got = part.select_columns(list(self.columns))[[local for _, local in wanted]]
            for k, (at, _) in enumerate(wanted):
                out[at] = {c: got[c][k] for c in self.columns}
        return out

    def _source_digest(self) -> str:
        import pyarrow as pa

        sink = _HashSink()
        for name, part in self._parts:
            sink.write(name.encode() + b"\0")
            sink.write(json.dumps(part.features.to_dict(), sort_keys=True).encode() + b"\0")
            rows = part.with_format("arrow")  # the rows as the dataset shows them, in order
            writer: Any = None
            for table in rows.iter(batch_size=65536):
                # one record batch per 65,536 rows, whatever the chunks: equal content, equal hash
                batch = table.replace_schema_metadata(None).combine_chunks().to_batches()
                if not batch:
                    continue
                if writer is None:
                    writer = pa.ipc.new_stream(sink, batch[0].schema)
                for one in batch:
                    writer.write_batch(one)
            if writer is not None:
                writer.close()
        return sink.hexdigest()


def _part_of(starts: Sequence[int], row: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # the last part starting at or before ``row``
        mid = (lo + hi + 1) // 2
        if starts[mid] <= row:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _HashSink:
    """A write-only file object that hashes what is written (an Arrow IPC sink)."""

    closed = False

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_128()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        return view.nbytes

    def flush(self) -> None:
        """Nothing is buffered."""

    def hexdigest(self) -> str:
        """The digest of everything written."""
        return str(self._hash.hexdigest())
