"""A container over Parquet files, read row by row without loading them.

Opening reads the files' metadata and the id and split columns only. Batches take rows from
all over a file (``train`` is shuffled), which Parquet cannot read one by one (a row group is
decoded whole), so the first read of a batch copies the chosen columns into an uncompressed
Arrow IPC file in the cache directory, once per version of the source files (what Hugging Face
``datasets`` does with Parquet too), built under a file lock by whichever process reads first.
Every process memory-maps it, takes the rows of one batch, and hands those pages back to the
page cache after each batch: a priming worker's memory holds its current batch, never the
dataset.

The source files are the content: their digests are the fingerprint (read once per file
version, see :mod:`~batchstash.service.dataset.files`). A local file that changes after the
container was opened fails the next read with an error (nothing of it is encoded), and priming
workers refuse a source whose version is not the priming process's.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from batchstash.client import BatchError

from .files import CHANGED_HINT, FileVersion, changed_files, file_digest
from .files import cache_dir as cache_dir_of
from .tables import TableSplitStashContainer, picked_columns

__all__ = ["ParquetSplitStashContainer", "arrow_rows"]

CACHE_FORMAT = "batchstash.parquet-rows.v1"
"""Part of every cache file's name: a new layout never reads an old one."""

BATCH_ROWS = 8192
"""Rows a record batch of the cache holds at most (a batch's rows are taken per record batch).

Building the cache streams a local file page by page and a remote one a row group at a time
(pyarrow's ``iter_batches`` over a whole pre-buffered file keeps every range it read until the
end: the file's size in memory).
"""


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 (the parquet module is loaded on import only)
    except ImportError:
        raise BatchError("Parquet data needs pyarrow: pip install 'batchstash[parquet]'") from None
    return pa


class ParquetSplitStashContainer(TableSplitStashContainer):
    """A container over one Parquet file, a list of them, or a directory of them.

    Ids are the row numbers across the files (in the order given; a directory's ``*.parquet``
    files, recursively, in sorted order), or the values of ``id_column``. A row is a dict of
    column values: numbers and strings as Python values, list columns as numpy arrays
    (``(n, m)`` for fixed-size lists of fixed-size lists), Arrow's fixed-shape tensors as
    n-d numpy arrays.

    Args:
        path_or_paths: a file, a directory or a list of files; a URL (``s3://bucket/key``)
            goes through pyarrow's filesystems (credentials as pyarrow reads them). A remote
            file's version is its size and modification time, which S3 keeps to the second:
            an object rewritten with the same size within one second goes unnoticed until its
            content digest is taken again (a restart).
        split_column: the column naming each row's split.
        splits: the ids of each split, given.
        ratios: split name to fraction of a seeded shuffle.
        seed: the shuffle seed for ``ratios``.
        id_column: the column of ids (default: the row numbers).
        columns: the columns a row holds (default: all). Fewer columns, a smaller cache.
        cache_dir: where the row cache goes (default ``$BATCHSTASH_CACHE_DIR`` or
            ``~/.cache/batchstash``).

    Raises:
        BatchError: pyarrow missing, no files, unreadable files, files whose columns differ,
            a missing column, ids that are not unique, or a bad split rule.
    """

    def __init__(
        self,
        path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        split_column: str | None = "split",
        *,
        splits: Mapping[str, Sequence[Any]] | None = None,
        ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        id_column: str | None = None,
        columns: Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        pa = _pyarrow()
        self._fs, self._paths, where = _resolve(pa, path_or_paths)
        self._source_url = "" if self._fs is None else where  # its endpoint, for the cache
        self._versions = tuple(self._version(p) for p in self._paths)
        self._cache_root = cache_dir_of(cache_dir)
        schema, counts = None, []
        for path in self._paths:
            meta = self._file(path)
            file_schema = meta.schema_arrow
            if schema is None:
                schema = file_schema
            elif not file_schema.equals(schema):
                raise BatchError(f"{path}: its columns differ from {self._paths[0]}'s")
            counts.append(meta.metadata.num_rows)
        assert schema is not None
        self.columns = picked_columns(schema.names, columns, where)
        self._schema = pa.schema([schema.field(c) for c in self.columns])
        self._batches: list[Any] | None = None
        self._starts: np.ndarray[Any, Any] | None = None
        self._map: mmap.mmap | None = None
        self._index(
            sum(counts),
            self._read_column,
            split_column=split_column,
            id_column=id_column,
            splits=splits,
            ratios=ratios,
            seed=seed,
            available=schema.names,
            where=where,
        )
        self._check_source()

    @property
    def paths(self) -> tuple[str, ...]:
        """The files, in row order."""
        return self._paths

    def version(self) -> str:
        """The files' ``stat`` signatures (size, times, inode) and the index."""
        keys = xxhash.xxh3_128_hexdigest("\n".join(v.key() for v in self._versions).encode())
        return self._digest_with(keys)

    # reading -------------------------------------------------------------------------------

    def _file(self, path: str, streaming: bool = False) -> Any:
        """One file; ``streaming``: read page by page (a local file), not a row group at once."""
        import pyarrow.parquet as pq

        try:
            if self._fs is None:
                return pq.ParquetFile(path, pre_buffer=not streaming)
            return pq.ParquetFile(self._fs.open_input_file(path))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise BatchError(f"{path}: not a readable Parquet file: {exc}") from None

    def _read_column(self, name: str) -> list[Any]:
        values: list[Any] = []
        for path in self._paths:
            values.extend(self._file(path).read(columns=[name]).column(name).to_pylist())
        return values

    def _read_rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        pa = _pyarrow()
        batches, starts = self._mapped()
        wanted = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(starts, wanted, side="right") - 1
        parts, placed = [], []
        try:
            # a take per record batch of the cache: a take over the whole (chunked) table
            # would first join every chunk, copying the dataset
            for index in np.unique(which):
                chosen = np.flatnonzero(which == index)
                local = wanted[chosen] - starts[index]
                parts.append(batches[index].take(pa.array(local)))
                placed.append(chosen)
            table = pa.Table.from_batches(parts, schema=self._schema).combine_chunks()
        finally:
            assert self._map is not None
            self._map.madvise(mmap.MADV_DONTNEED)  # the pages go back: memory holds one batch
        order = np.empty(len(wanted), dtype=np.int64)
        order[np.concatenate(placed) if placed else order[:0]] = np.arange(len(wanted))
        return arrow_rows(table.take(pa.array(order)))

    def _mapped(self) -> tuple[list[Any], np.ndarray[Any, Any]]:
        """The cache's record batches (memory-mapped) and the first row of each."""
        if self._batches is None:
            pa = _pyarrow()
            path = self._cached()
            try:
                with open(path, "rb") as fh:  # an empty file cannot be mapped: damaged too
                    self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                reader = pa.ipc.open_file(pa.py_buffer(self._map))
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            except (OSError, ValueError) as exc:
                raise BatchError(f"{path}: a damaged row cache ({exc}); delete it") from None
            starts = np.cumsum([0] + [b.num_rows for b in batches])
            if starts[-1] != len(self) or reader.schema.names != list(self.columns):
                raise BatchError(f"{path}: a row cache of another table; delete it")
            self._batches, self._starts = batches, starts
        assert self._starts is not None
        return self._batches, self._starts

    # the row cache -------------------------------------------------------------------------

    def _cached(self) -> Path:
        """The row cache of this version of the files, built if there is none."""
        sources = [os.path.abspath(p) if self._fs is None else p for p in self._paths]
        named = "\n".join([self._source_url, *sources, "", *self.columns])
        stem = xxhash.xxh3_64_hexdigest(named.encode())
        key = "\n".join([CACHE_FORMAT, *self.columns, *(v.key() for v in self._versions)])
        root = self._cache_root / "parquet"
        path = root / f"{stem}-{xxhash.xxh3_128_hexdigest(key.encode())}.arrow"
        if path.exists():
            return path
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{stem}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait and reuse
            if not path.exists():
                self._build(path)
                for old in root.glob(f"{stem}-*.arrow"):
                    if old != path:
                        old.unlink(missing_ok=True)
        return path

    def _build(self, path: Path) -> None:
        pa = _pyarrow()
        self._check_source()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink:
                with pa.ipc.new_file(sink, self._schema) as writer:
                    for file_path in self._paths:
                        source = self._file(file_path, streaming=True)
                        for group in range(source.num_row_groups):
                            for part in source.iter_batches(
                                BATCH_ROWS, row_groups=[group], columns=list(self.columns)
                            ):
                                writer.write_batch(part)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._check_source(remote=True)  # nothing read from a file that changed meanwhile
            os.replace(tmp, path)
            pa.default_memory_pool().release_unused()  # the decoded pages, back to the system
        finally:
            tmp.unlink(missing_ok=True)

    # the source files ----------------------------------------------------------------------

    def _version(self, path: str) -> FileVersion:
        if self._fs is None:
            return FileVersion.of(path)
        info = self._fs.get_file_info(path)
        if info.size is None:
            raise BatchError(f"{path}: no such file")
        return FileVersion(path, info.size, info.mtime_ns or 0, 0, 0, 0)

    def _check_source(self, remote: bool = False) -> None:
        """Fail if a file changed since it was opened (remote files: only when ``remote``)."""
        if self._fs is None:
            changed = changed_files(self._versions)
        elif remote:
            changed = [v.path for v in self._versions if self._version(v.path) != v]
        else:
            return
        if changed:
            raise BatchError(
                f"{changed[0]} changed since the dataset was opened: nothing of it is encoded; "
                f"{CHANGED_HINT}"
            )

    def _source_digest(self) -> str:
        digests = []
        for version in self._versions:
            if self._fs is None:
                digests.append(file_digest(version, self._cache_root))
            else:
                digests.append(self._remote_digest(version))
        return xxhash.xxh3_128_hexdigest("\n".join(digests).encode())

    def _remote_digest(self, version: FileVersion) -> str:
        digest = xxhash.xxh3_128()
        with self._fs.open_input_stream(version.path) as stream:
            while chunk := stream.read(8 << 20):
                digest.update(chunk)
        if self._version(version.path) != version:
            raise BatchError(f"{version.path} changed while it was read")
        return str(digest.hexdigest())


def arrow_rows(table: Any) -> list[dict[str, Any]]:
    """The rows of an Arrow table as dicts, each column's values converted at once.

    Numbers, booleans and strings become Python values; fixed-size lists (nested too) and
    fixed-shape tensors become n-d numpy arrays, other lists numpy arrays (object arrays when
    nested and ragged).
    """
    names = table.schema.names
    values = [_column_values(table.column(n)) for n in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _column_values(column: Any) -> Sequence[Any]:
    pa = _pyarrow()
    kind = column.type
    if column.null_count:  # nulls are None; the other values as a column without nulls gives them
        valid = column.is_valid()
        present = iter(_column_values(column.filter(valid)))
        return [next(present) if ok else None for ok in valid.to_pylist()]
    if isinstance(kind, pa.FixedShapeTensorType):
        return list(column.combine_chunks().to_numpy_ndarray())
    if pa.types.is_fixed_size_list(kind):
        shape = []
        while pa.types.is_fixed_size_list(kind):
            shape.append(kind.list_size)
            kind = kind.value_type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            flat = column.combine_chunks().flatten()
            for _ in shape[1:]:
                flat = flat.flatten()
            # booleans are bits in Arrow: copied, never zero-copy
            return list(flat.to_numpy(zero_copy_only=False).reshape(len(column), *shape))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return list(column.to_numpy(zero_copy_only=False))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return list(column.to_numpy().tolist())
    return list(column.to_pylist())


def _resolve(pa: Any, given: Any) -> tuple[Any, tuple[str, ...], str]:
    """``(filesystem or None for local files, the file paths, how errors name them)``."""
    items = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    if not items:
        raise BatchError("no Parquet files given")
    texts = [os.fspath(i) for i in items]
    if any("://" in t for t in texts):
        try:
            fs, first = pa.fs.FileSystem.from_uri(texts[0])
            paths = [first, *(pa.fs.FileSystem.from_uri(t)[1] for t in texts[1:])]
            found = []
            for path in paths:
                info = fs.get_file_info(path)
                if info.type == pa.fs.FileType.Directory:
                    selector = pa.fs.FileSelector(path, recursive=True)
                    listed = fs.get_file_info(selector)
                    found += sorted(i.path for i in listed if i.path.endswith(".parquet"))
                else:
                    found.append(path)
        except (OSError, ValueError) as exc:
            raise BatchError(f"{texts[0]}: cannot open: {exc}") from None
        return fs, _some(found, texts[0]), texts[0]
    found = []
    for text in texts:
        if os.path.isdir(text):
            found += sorted(str(p) for p in Path(text).rglob("*.parquet"))
        else:
            found.append(text)
    return None, _some(found, texts[0]), texts[0] if len(texts) == 1 else f"{texts[0]}, ..."


def _some(found: list[str], given: str) -> tuple[str, ...]:
    if not found:
        raise BatchError(f"{given}: no .parquet files")
    return tuple(found)
