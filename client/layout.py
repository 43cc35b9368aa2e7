"""Where a window's rows go: its permutation cut into new batches (pure numpy, no tensors).

A window's stored batches are numbered in order and their rows ``0..R-1`` as if concatenated.
:func:`permutation` orders the rows by the window's key; new batch ``i`` takes the rows
``order[cuts[i]:cuts[i + 1]]``, where the cuts follow the stored batches' sizes from largest to
smallest, and lists them in window order (stored batch by stored batch). So the rows a new
batch draws from one stored batch land in one contiguous run of it: each run is copied with one
call (:meth:`Layout.parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy

__all__ = ["Layout", "Part", "permutation"]

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


@dataclass(frozen=True)
class Part:
    """The rows one new batch takes from one stored batch.

    Attributes:
        stored: the stored batch's index in the window.
        local: the rows, numbered within the stored batch (ascending).
        into: where they go in the new batch (a contiguous run).
    """

    stored: int
    local: numpy.ndarray
    into: slice


@dataclass(frozen=True)
class Layout:
    """A window's rows, permuted by its key and cut into new batches.

    Attributes:
        sizes: the stored batches' sizes, in order.
        starts: the window row where each stored batch starts (and the total, last).
        cuts: new batch ``i`` is ``sorted[cuts[i]:cuts[i + 1]]``.
        sorted: each new batch's rows (window numbering), ascending within it.
    """

    sizes: tuple[int, ...]
    starts: numpy.ndarray
    cuts: list[int]
    sorted: numpy.ndarray

    @classmethod
    def create(cls, sizes: Sequence[int], key: str) -> Layout:
        """The layout of stored batches of ``sizes`` under ``key``."""
        order = permutation(sum(sizes), key)
        starts = numpy.cumsum([0, *sizes], dtype=numpy.int64)
        cut = sorted(sizes, reverse=True)
        cuts = [0, *numpy.cumsum(cut).tolist()]
        if cut and cut[0] == cut[-1]:  # batches of one size: each new batch's rows sorted at once
            rows = numpy.sort(order.reshape(len(cut), cut[0]), axis=1).reshape(-1)
        else:
            pairs = zip(cuts, cuts[1:], strict=False)
            rows = numpy.concatenate([numpy.sort(order[a:b]) for a, b in pairs])
        return cls(tuple(sizes), starts, cuts, rows)

    def rows(self, index: int) -> numpy.ndarray:
        """New batch ``index``'s rows (window numbering)."""
        return self.sorted[self.cuts[index] : self.cuts[index + 1]]

    def batch_sizes(self) -> list[int]:
        """Each new batch's number of rows."""
        return [b - a for a, b in zip(self.cuts, self.cuts[1:], strict=False)]

    def parts(self, index: int) -> list[Part]:
        """The rows new batch ``index`` takes from each stored batch it draws from, in order."""
        rows = self.rows(index)
        source = numpy.searchsorted(self.starts[1:], rows, side="right")
        local = rows - self.starts[source]
        bounds = numpy.searchsorted(source, numpy.arange(len(self.sizes) + 1)).tolist()
        return [
            Part(s, local[bounds[s] : bounds[s + 1]], slice(bounds[s], bounds[s + 1]))
            for s in range(len(self.sizes))
            if bounds[s + 1] > bounds[s]
        ]
