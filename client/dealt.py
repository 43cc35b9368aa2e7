"""One window's rows: its stored batches held, permuted, and dealt out as new batches.

:meth:`DealtWindow.deal` permutes the window's rows (:func:`permutation`); new batch ``i`` is
the set of rows ``order[cuts[i]:cuts[i + 1]]``, where the cuts follow the stored batches'
sizes from largest to smallest. Its rows are listed in window order (stored batch by stored
batch), so each field of it is gathered with one copy per stored batch it draws from, straight
from the stored tensors: each byte is copied once. A padded field (a varying dimension) is
padded to the new batch's longest row, and trimmed to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy
import torch

from .batch import Batch
from .buffers import BufferPool
from .errors import BatchError

__all__ = ["DealtIds", "DealtWindow", "FieldRule", "WindowIds", "permutation"]


@dataclass(frozen=True)
class FieldRule:
    """How one attribute's rows are re-dealt.

    Attributes:
        name: the attribute.
        pad: the pad value of its varying dimensions (``None``: its shape is fixed).
    """

    name: str
    pad: float | int | None


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def permutation(count: int, key: str) -> numpy.ndarray:
    """``range(count)`` in the deterministic order of ``key`` (a hex digest), as int64.

    Row ``i`` is given the 64-bit SplitMix64 output of ``seed + (i + 1) * golden`` (``seed``:
    the key's first 16 hex digits), and rows are sorted by it: plain integer arithmetic, so
    every platform, process and library version computes the same order. SplitMix64's mix is a
    bijection and ``(i + 1) * golden`` is distinct for every row, so no two keys tie and any
    sorting algorithm gives this one order (numpy's fastest is used).
    """
    seed = numpy.uint64(int(key[:16], 16))
    z = seed + (numpy.arange(1, count + 1, dtype=numpy.uint64) * numpy.uint64(_GOLDEN))
    z = (z ^ (z >> numpy.uint64(30))) * numpy.uint64(_MIX1)
    z = (z ^ (z >> numpy.uint64(27))) * numpy.uint64(_MIX2)
    z ^= z >> numpy.uint64(31)
    return numpy.argsort(z).astype(numpy.int64)


_ALIGN = 64

BULK_BYTES = 4 << 20
"""A window whose fixed fields hold at most this many bytes is gathered in one go when dealt:
new batches are then views of it (a few microseconds each instead of a copy call per stored
batch), at the cost of one window's copy more, so only a small window is."""


def allocate(
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
    pool: BufferPool | None,
    pinned: bool = False,
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors of these shapes, carved from one buffer of ``pool`` when given.

    A pooled buffer is reused once no tensor views it any more (see :class:`BufferPool`), so
    a steady stream of batches does not touch fresh pages; ``pinned``: page-locked memory.
    """
    sizes = {n: math.prod(sh) * dt.itemsize for n, (sh, dt) in shapes.items()}
    total = sum(-(-size // _ALIGN) * _ALIGN for size in sizes.values())
    if pool is None or total < pool.min_bytes:  # a small one is cheap: the pool would not keep it
        return {n: torch.empty(sh, dtype=dt, pin_memory=pinned) for n, (sh, dt) in shapes.items()}
    raw = torch.from_numpy(pool.get(total, pinned))
    out, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        out[name] = raw[offset : offset + sizes[name]].view(dtype).view(shape)
        offset += -(-sizes[name] // _ALIGN) * _ALIGN
    return out


def _numpy(tensor: torch.Tensor) -> numpy.ndarray | None:
    """The tensor's memory as an array, when numpy has its dtype (``None``: bfloat16...)."""
    try:
        return tensor.numpy()  # a decoded tensor: no autograd to detach from
    except (RuntimeError, TypeError):
        pass
    try:
        return tensor.detach().numpy()
    except (RuntimeError, TypeError):  # a dtype numpy lacks (bfloat16), a view it cannot take
        return None


# The gathers go through numpy where it can: single-threaded, without the GIL, so they run
# beside the reader's thread at memory speed; torch's own copies of a MiB are split over its
# intra-op threads, and wait on each other when the cores are busy. ``take`` is told
# ``mode="clip"`` (the rows are in range by construction): with ``out`` and the default
# ``"raise"`` numpy buffers the result and copies it twice.


def _extents(tensor: torch.Tensor, pad: float | int) -> torch.Tensor:
    """``(rows, dims)``: each row's length along each dimension (after its last non-pad value)."""
    real = tensor != pad
    out = []
    for dim in range(1, tensor.dim()):
        others = tuple(d for d in range(1, tensor.dim()) if d != dim)
        along = real.any(dim=others) if others else real  # (rows, size)
        last = along.shape[1] - along.flip(1).int().argmax(dim=1)
        out.append(torch.where(along.any(dim=1), last, torch.zeros_like(last)))
    return torch.stack(out, dim=1) if out else torch.zeros(tensor.shape[0], 0, dtype=torch.long)


class WindowIds:
    """The data point ids of a window's stored batches, each list parsed once, when first asked.

    A stored batch carries its ids as the payload's JSON text until asked for (most trainers
    never ask); a re-dealt batch keeps that laziness through :class:`DealtIds`.
    """

    def __init__(self) -> None:
        self._raw: list[Any] = []
        self._sizes: list[int] = []
        self._where: list[str] = []
        self._parsed: dict[int, tuple[Any, ...]] = {}

    def add(self, raw: Any, size: int, where: str) -> None:
        """Hold stored batch ``where``'s ``size`` ids (a tuple, JSON text or a function)."""
        self._raw.append(raw)
        self._sizes.append(size)
        self._where.append(where)

    def source(self, index: int) -> tuple[Any, ...]:
        """The ids of stored batch ``index`` of the window.

        Raises:
            BatchError: it lists another number of ids than its tensors have rows.
        """
        ids = self._parsed.get(index)
        if ids is None:
            raw = self._raw[index]
            ids = tuple(
                json.loads(raw) if isinstance(raw, str) else raw() if callable(raw) else raw
            )
            if len(ids) != self._sizes[index]:
                raise BatchError(
                    f"{self._where[index]} lists {len(ids)} data point ids for "
                    f"{self._sizes[index]} rows"
                )
            self._parsed[index] = ids
        return ids


class DealtIds:
    """The data point ids of a re-dealt batch, looked up when first asked for.

    Calling it returns them as a tuple (see ``Batch.data_point_ids``); pickling it pickles that
    tuple, so a batch sent to another process carries its own ids and not the window's.
    """

    def __init__(self, window: WindowIds, rows: numpy.ndarray, starts: numpy.ndarray) -> None:
        self.window, self.rows, self.starts = window, rows, starts

    def __call__(self) -> tuple[Any, ...]:
        """The ids, in row order."""
        source = numpy.searchsorted(self.starts[1:], self.rows, side="right")
        local = self.rows - self.starts[source]
        pick = self.window.source
        return tuple(pick(s)[i] for s, i in zip(source.tolist(), local.tolist(), strict=True))

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (self(),)


class DealtWindow:
    """A window's rows; :meth:`add` its stored batches in order, :meth:`deal`, then :meth:`batch`.

    Args:
        rules: the rule of each attribute (see :func:`~.redeal.field_rules`); each stored
            batch must have exactly these attributes.
        ids: builds the id of new batch ``i``.
        pool: where the new batches' tensors are allocated (``None``: plain allocations).
        pin: allocate them in page-locked memory (for a CUDA copy).
    """

    def __init__(
        self,
        rules: dict[str, FieldRule],
        ids: Callable[[int], int],
        pool: BufferPool | None = None,
        pin: bool = False,
    ) -> None:
        self.rules, self._ids, self.pool, self.pin = rules, ids, pool, pin
        self.sizes: list[int] = []  # of the stored batches, in order
        self._first: Batch | None = None
        self._names = WindowIds()
        self._tensors: dict[str, list[torch.Tensor]] = {name: [] for name in rules}
        self._arrays: dict[str, list[numpy.ndarray | None]] = {name: [] for name in rules}
        self._like: dict[str, torch.Tensor] = {}
        # each field's (dtype, dimensions, shape after the rows) from the first batch
        self._specs: dict[str, tuple[torch.dtype, int, torch.Size]] = {}
        self._fixed_bytes = 0  # of the fixed fields' held rows
        self._extents: dict[tuple[int, str], torch.Tensor] = {}
        self._starts = numpy.zeros(1, dtype=numpy.int64)
        self._cuts = [0]
        self._sorted = numpy.empty(0, dtype=numpy.int64)
        self._bulk: dict[str, tuple[torch.Tensor, ...]] = {}  # each new batch's view, by field

    def add(self, batch: Batch) -> None:
        """Hold the window's next stored batch.

        Raises:
            BatchError: its attributes, dtypes or row counts do not fit the window's.
        """
        attributes = batch.attributes
        if attributes.keys() != self.rules.keys():
            raise BatchError(
                f"batch {batch.split_name}/{batch.id} has attributes {sorted(attributes)}, "
                f"not {sorted(self.rules)}"
            )
        size = -1
        for name, rule in self.rules.items():
            tensor = attributes[name]
            shape = tensor.shape
            spec = self._specs.get(name)
            if spec is None:  # the window's first batch: its fields are the others' pattern
                self._like[name] = tensor
                spec = self._specs[name] = (tensor.dtype, len(shape), shape[1:])
            if size < 0 and shape:
                size = shape[0]
            if (
                not shape
                or shape[0] != size
                or tensor.dtype != spec[0]
                or len(shape) != spec[1]
                or (rule.pad is None and shape[1:] != spec[2])
            ):
                self._refuse(batch, name, tensor, self._like[name], size)
            self._tensors[name].append(tensor)
            if rule.pad is None:
                array = _numpy(tensor)
                self._arrays[name].append(array)
                self._fixed_bytes += tensor.nbytes if array is None else array.nbytes
            else:
                self._arrays[name].append(None)
        if self._first is None:
            self._first = batch.with_rows(batch.id, {}, ())
        self._names.add(batch._data_point_ids, size, f"batch {batch.split_name}/{batch.id}")
        self.sizes.append(size)

    @staticmethod
    def _refuse(
        batch: Batch, name: str, tensor: torch.Tensor, like: torch.Tensor, size: int
    ) -> None:
        where = f"batch {batch.split_name}/{batch.id}"
        if tensor.dim() == 0 or tensor.shape[0] != size:
            raise BatchError(
                f"{where}: {name!r} has shape {tuple(tensor.shape)}, not one row for each of "
                f"its {size} rows of its other fields"
            )
        raise BatchError(
            f"{where}: {name!r} is {tuple(tensor.shape[1:])} {tensor.dtype}, not "
            f"{tuple(like.shape[1:])} {like.dtype} as the window's other batches"
        )

    def deal(self, key: str) -> None:
        """Permute the window's rows by ``key`` (after the last :meth:`add`)."""
        order = permutation(sum(self.sizes), key)
        self._starts = numpy.cumsum([0, *self.sizes], dtype=numpy.int64)
        cut = sorted(self.sizes, reverse=True)
        self._cuts = [0, *numpy.cumsum(cut).tolist()]
        if cut and cut[0] == cut[-1]:  # batches of one size: each new batch's rows sorted at once
            self._sorted = numpy.sort(order.reshape(len(cut), cut[0]), axis=1).reshape(-1)
        else:
            pairs = zip(self._cuts, self._cuts[1:], strict=False)
            self._sorted = numpy.concatenate([numpy.sort(order[a:b]) for a, b in pairs])
        sizes = numpy.diff(self._cuts).tolist()
        bulk = self._gather_all() if self._small() else {}
        self._bulk = {name: tensor.split_with_sizes(sizes) for name, tensor in bulk.items()}

    def _small(self) -> bool:
        """Whether the fixed fields are gathered for the whole window at once (see BULK_BYTES)."""
        if self._fixed_bytes > BULK_BYTES:
            return False
        return all(
            a is not None for n, r in self.rules.items() if r.pad is None for a in self._arrays[n]
        )

    def _gather_all(self) -> dict[str, torch.Tensor]:
        """Every fixed field's rows in dealt order, each copied once (a small window).

        Row ``r`` of the window goes to position ``inverse[r]``, so each stored batch's rows
        are scattered with one copy call.
        """
        rows = self._sorted
        inverse = numpy.empty_like(rows)
        inverse[rows] = numpy.arange(len(rows), dtype=rows.dtype)
        starts = self._starts.tolist()
        shapes = {
            name: ((len(rows), *self._like[name].shape[1:]), self._like[name].dtype)
            for name, rule in self.rules.items()
            if rule.pad is None
        }
        out = allocate(shapes, self.pool, self.pin)
        for name, tensor in out.items():
            target = tensor.numpy()
            for s, array in enumerate(self._arrays[name]):
                target[inverse[starts[s] : starts[s + 1]]] = array
            self._tensors[name], self._arrays[name] = [], []  # the stored rows are not needed
        return out

    def __len__(self) -> int:
        """The number of new batches (that of stored batches)."""
        return len(self.sizes)

    def batch(self, index: int) -> Batch:
        """New batch ``index``."""
        if self._first is None:
            raise BatchError("a window without batches deals none")
        lo, hi = self._cuts[index], self._cuts[index + 1]
        rows = self._sorted[lo:hi]
        tensors = {name: views[index] for name, views in self._bulk.items()}
        if len(tensors) < len(self.rules):
            rest = [name for name in self.rules if name not in tensors]
            tensors.update(self._gathered(rest, rows, self.pin))
        names = DealtIds(self._names, rows, self._starts)
        return self._first.with_rows(self._ids(index), {n: tensors[n] for n in self.rules}, names)

    def _gathered(
        self, names: list[str], rows: numpy.ndarray, pin: bool
    ) -> dict[str, torch.Tensor]:
        """Fields ``names`` of the new batch of ``rows``, gathered from the stored batches."""
        source = numpy.searchsorted(self._starts[1:], rows, side="right")
        local = rows - self._starts[source]
        bounds = numpy.searchsorted(source, numpy.arange(len(self.sizes) + 1)).tolist()
        parts = [  # (stored batch, its rows, where they go)
            (s, local[bounds[s] : bounds[s + 1]], slice(bounds[s], bounds[s + 1]))
            for s in range(len(self.sizes))
            if bounds[s + 1] > bounds[s]
        ]
        shapes = {name: self._shape(name, parts, len(rows)) for name in names}
        tensors = allocate(shapes, self.pool, pin)
        for name, out in tensors.items():
            held, pad = self._tensors[name], self.rules[name].pad
            if pad is None:
                target, arrays = _numpy(out), self._arrays[name]
                for s, picked, into in parts:
                    array = arrays[s]
                    if target is None or array is None:
                        torch.index_select(held[s], 0, torch.from_numpy(picked), out=out[into])
                    else:
                        array.take(picked, axis=0, out=target[into], mode="clip")
                continue
            out.fill_(pad)
            for s, picked, into in parts:
                src = held[s]
                sizes = zip(src.shape[1:], out.shape[1:], strict=True)
                region = (slice(None), *(slice(0, min(a, b)) for a, b in sizes))
                out[into][region] = src[region].index_select(0, torch.from_numpy(picked))
        return tensors

    def _shape(
        self, name: str, parts: list[tuple[int, numpy.ndarray, slice]], count: int
    ) -> tuple[tuple[int, ...], torch.dtype]:
        """A field's shape in a new batch: a padded one's is its rows' longest on each dimension."""
        held, pad = self._tensors[name], self.rules[name].pad
        like = held[0]
        if pad is None:
            return (count, *like.shape[1:]), like.dtype
        lengths = [self._extent(s, name, pad)[torch.from_numpy(picked)] for s, picked, _ in parts]
        dims = torch.cat(lengths).amax(dim=0).tolist() if lengths else [0] * (like.dim() - 1)
        return (count, *dims), like.dtype

    def _extent(self, source: int, name: str, pad: float | int) -> torch.Tensor:
        key = (source, name)
        if key not in self._extents:
            self._extents[key] = _extents(self._tensors[name][source], pad)
        return self._extents[key]
