"""The data point: one example whose properties the vectorizers turn into tensors."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["DataPoint"]


@dataclass
class DataPoint:
    """Base of the user's data points: an ``id`` plus feature properties the mappings name.

    The stash builds each one as ``data_point_type(id, batch_stash, raw)`` where ``raw`` is what the
    split container holds for that id, so a subclass adds one field for it::

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
