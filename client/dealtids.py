"""The data point ids of a window's stored batches and of the new batches dealt from them.

Parsed only when asked for: a stored batch carries its ids as the payload's JSON text, and most
trainers never ask for them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy

from .errors import BatchError

__all__ = ["DealtIds", "WindowIds"]


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
