"""The data point: one example whose properties the vectorizers turn into tensors."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["DataPoint", "RowDataPoint"]


@dataclass
class DataPoint:
    """Base of the user's data points: an ``id`` plus feature properties the mappings name.

    The stash builds each one as ``data_point_type(id, batch_stash, raw)`` where ``raw`` is what the
    split container holds for that id, so a subclass adds one field for it (or use
    :class:`RowDataPoint`, which reads a row's columns as attributes, with no subclass)::

        @dataclass
        class IrisDataPoint(DataPoint):
            row: dict

            @property
            def label(self):
                return self.row["species"]

            @property
            def flower_dims(self):
                return [self.row[c] for c in ("sepal_length", "sepal_width")]

    Attributes:
        id: the id of the data point in the split container.
        batch_stash: the stash, available while encoding only.
    """

    id: Any
    batch_stash: Any = field(repr=False, compare=False)

    def write(self, depth: int = 0, writer: TextIO | None = None) -> None:
        """Write the data point to ``writer`` (stdout by default)."""
        (writer or sys.stdout).write(f"{'  ' * depth}{self!r}\n")


@dataclass
class RowDataPoint(DataPoint):
    """A data point whose attributes are the columns of its row: no subclass needed.

    A stash's default ``data_point_type``: built as ``RowDataPoint(id, batch_stash, row)`` with
    the mapping (column -> value) the split container holds for ``id``, ``point.pixels`` is
    ``row["pixels"]``, so a field mapping names a column as its attribute. A missing column
    raises :class:`AttributeError` (``getattr(point, name, None)`` is ``None``).

    The data point's own names win over a column of the same name (``id``, ``batch_stash``,
    ``row``, ``write``: read those columns as ``point.row["id"]``), and so does anything a
    subclass defines: subclass it for computed attributes::

        @dataclass
        class IrisPoint(RowDataPoint):
            @property
            def flower_dims(self):
                return [self.sepal_length, self.sepal_width]

    Attributes:
        row: the data point's columns, by name (a ``dict``, a pandas ``Series``...).
    """

    row: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        # called only when the ordinary lookup failed: fields, properties and methods win
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # copy and pickle probe dunders before __dict__ is set
        if any(name in vars(klass) for klass in type(self).__mro__):
            # a property of the class raised AttributeError: raise its own error, not ours
            return object.__getattribute__(self, name)
        row = self.__dict__.get("row")
        if row is None:
            raise AttributeError(name)
        try:
            return row[name]
        except (KeyError, IndexError):
            pass
        raise AttributeError(
            f"data point {self.__dict__.get('id')!r} has no column {name!r}; "
            f"its columns: {_columns(row)}"
        )


def _columns(row: Any) -> str:
    """The first column names of a row, for an error message."""
    try:
        names = [str(k) for k in row.keys()]  # a pandas Series iterates values, not names
    except (AttributeError, TypeError):
        return f"(a {type(row).__name__}, not a mapping)"
    shown = ", ".join(repr(n) for n in names[:30])
    return f"{shown}{f', ... ({len(names)} in all)' if len(names) > 30 else ''}" or "none"
