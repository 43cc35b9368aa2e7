"""One window's rows: its stored batches' rows permuted and dealt out as new batches.

Where each row goes is the window's :class:`~.layout.Layout`: its rows are permuted
(:func:`~.layout.permutation`) and cut into new batches, each listing its rows in window order,
so each field of a new batch is copied with one call per stored batch it draws from: each byte
is copied once. A padded field (a varying dimension) is padded to the new batch's longest row,
and trimmed to it, once every stored batch of the window is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy
import torch

from .batch import Batch
from .buffers import BufferPool
from .dealtids import DealtIds, WindowIds
from .errors import BatchError
from .layout import Layout, Part, permutation
from .rowcopy import allocate, extents, numpy_view

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


BULK_BYTES = 4 << 20
"""A fixed field whose rows in a window hold at most this many bytes is gathered in one go when
the window is dealt: its new batches are then views of it (a few microseconds each instead of a
copy call per stored batch), at the cost of the field's window copy more, so only a small one
is (a window of small batches whole; a large batch's small fields such as labels)."""


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
        # each field's (dtype, dimensions, shape after the rows) from the first batch, and a
        # tensor of no rows like it (holding no stored batch's memory)
        self._specs: dict[str, tuple[torch.dtype, int, torch.Size]] = {}
        self._like: dict[str, torch.Tensor] = {}
        self._bytes: dict[str, int] = dict.fromkeys(rules, 0)  # each fixed field's held rows
        self._extents: dict[tuple[int, str], torch.Tensor] = {}
        self._layout: Layout | None = None
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
        size = self._check(batch, attributes)
        if self._first is None:
            self._first = batch.with_rows(batch.id, {}, ())
        for name, rule in self.rules.items():
            tensor = attributes[name]
            if rule.pad is not None:
                self._tensors[name].append(tensor)
                self._arrays[name].append(None)
            else:
                array = numpy_view(tensor)
                self._tensors[name].append(tensor)
                self._arrays[name].append(array)
                self._bytes[name] += tensor.nbytes if array is None else array.nbytes
        self._names.add(batch._data_point_ids, size, f"batch {batch.split_name}/{batch.id}")
        self.sizes.append(size)

    def _check(self, batch: Batch, attributes: dict[str, torch.Tensor]) -> int:
        """The batch's rows, once each field is shown to fit the window's first batch's."""
        size = -1
        for name, rule in self.rules.items():
            tensor = attributes[name]
            shape = tensor.shape
            spec = self._specs.get(name)
            if spec is None:  # the window's first batch: its fields are the others' pattern
                self._like[name] = torch.empty((0, *shape[1:]), dtype=tensor.dtype)
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
        return size

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

    def _fixed(self) -> list[str]:
        return [name for name, rule in self.rules.items() if rule.pad is None]

    def deal(self, key: str) -> None:
        """Permute the window's rows by ``key`` (after the last :meth:`add`)."""
        self._layout = Layout.create(self.sizes, key)
        bulk = self._gather_all(self._small())
        sizes = self._dealt().batch_sizes()
        self._bulk = {name: tensor.split_with_sizes(sizes) for name, tensor in bulk.items()}

    def _dealt(self) -> Layout:
        if self._layout is None:
            raise BatchError("a window deals its batches once dealt (DealtWindow.deal)")
        return self._layout

    def _small(self) -> list[str]:
        """The fixed fields gathered for the whole window at once (see :data:`BULK_BYTES`).

        The smallest first, while they hold at most ``BULK_BYTES`` together (each one numpy
        can view).
        """
        names, total = [], 0
        for name in sorted(self._fixed(), key=self._bytes.__getitem__):
            total += self._bytes[name]
            if total > BULK_BYTES:
                break
            if all(a is not None for a in self._arrays[name]):
                names.append(name)
        return names

    def _gather_all(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Fixed fields ``names``' rows in dealt order, each copied once (small ones).

        Row ``r`` of the window goes to position ``inverse[r]``, so each stored batch's rows
        are scattered with one copy call.
        """
        if not names:
            return {}
        layout = self._dealt()
        rows = layout.sorted
        inverse = numpy.empty_like(rows)
        inverse[rows] = numpy.arange(len(rows), dtype=rows.dtype)
        starts = layout.starts.tolist()
        shapes = {
            name: ((len(rows), *self._like[name].shape[1:]), self._like[name].dtype)
            for name in names
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
        layout = self._dealt()
        tensors = {name: views[index] for name, views in self._bulk.items()}
        if len(tensors) < len(self.rules):
            rest = [name for name in self.rules if name not in tensors]
            tensors.update(self._gathered(rest, layout.parts(index), len(layout.rows(index))))
        names = DealtIds(self._names, layout.rows(index), layout.starts)
        return self._first.with_rows(self._ids(index), {n: tensors[n] for n in self.rules}, names)

    def _gathered(self, names: list[str], parts: list[Part], count: int) -> dict[str, torch.Tensor]:
        """Fields ``names`` of the new batch of ``count`` rows, gathered from the stored ones."""
        shapes = {name: self._shape(name, parts, count) for name in names}
        tensors = allocate(shapes, self.pool, self.pin)
        for name, out in tensors.items():
            held, pad = self._tensors[name], self.rules[name].pad
            if pad is None:
                target, arrays = numpy_view(out), self._arrays[name]
                for part in parts:
                    array = arrays[part.stored]
                    if target is None or array is None:
                        picked = torch.from_numpy(part.local)
                        torch.index_select(held[part.stored], 0, picked, out=out[part.into])
                    else:
                        array.take(part.local, axis=0, out=target[part.into], mode="clip")
                continue
            out.fill_(pad)
            for part in parts:
                src = held[part.stored]
                sizes = zip(src.shape[1:], out.shape[1:], strict=True)
                region = (slice(None), *(slice(0, min(a, b)) for a, b in sizes))
                picked = torch.from_numpy(part.local)
                out[part.into][region] = src[region].index_select(0, picked)
        return tensors

    def _shape(
        self, name: str, parts: list[Part], count: int
    ) -> tuple[tuple[int, ...], torch.dtype]:
        """A field's shape in a new batch: a padded one's is its rows' longest on each dimension."""
        like, pad = self._like[name], self.rules[name].pad
        if pad is None:
            return (count, *like.shape[1:]), like.dtype
        local = [self._extent(p.stored, name, pad)[torch.from_numpy(p.local)] for p in parts]
        dims = torch.cat(local).amax(dim=0).tolist() if local else [0] * (like.dim() - 1)
        return (count, *dims), like.dtype

    def _extent(self, source: int, name: str, pad: float | int) -> torch.Tensor:
        key = (source, name)
        if key not in self._extents:
            self._extents[key] = extents(self._tensors[name][source], pad)
        return self._extents[key]
