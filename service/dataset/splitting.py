"""Which split each data point is in: by a column, by given id lists or by seeded ratios."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from batchstash.client import BatchError

from .fingerprint import type_name

__all__ = ["assign_splits", "plain_id", "ratio_splits"]


def plain_id(value: Any, where: str) -> int | str:
    """``value`` as a Python ``int`` or ``str`` id (numpy's integers and strings included).

    Raises:
        BatchError: any other type (a float, a ``None``, a bool...).
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, np.str_)):
        return str(value)
    text = repr(value)[:40]
    raise BatchError(f"{where}: ids must be integers or strings, not {type_name(value)} ({text})")


def assign_splits(
    ids: Sequence[Any],
    column: Callable[[str], Sequence[Any]],
    columns: Sequence[str],
    *,
    split_column: str | None,
    splits: Mapping[str, Sequence[Any]] | None,
    ratios: Mapping[str, float] | None,
    seed: int,
    source_splits: Mapping[str, Sequence[Any]] | None = None,
    where: str = "the data",
) -> dict[str, list[Any]]:
    """The ids of each split, by the one rule given (see the module's docstring).

    Args:
        ids: every id, in row order.
        column: reads one whole column, in row order.
        columns: the column names (for the error when ``split_column`` is not one).
        split_column: the column naming each row's split.
        splits: the ids of each split.
        ratios: fractions of a seeded shuffle.
        seed: the shuffle's seed.
        source_splits: the ids of each of the source's own splits.
        where: the source, as error messages name it.

    Raises:
        BatchError: both ``splits`` and ``ratios``, an id listed twice or unknown, a missing or
            non-string split column, or no rule at all.
    """
    if splits is not None and ratios is not None:
        raise BatchError(f"{where}: give splits= or ratios=, not both")
    if splits is not None:
        known, seen, result = set(ids), set(), {}
        for name, listed in splits.items():
            result[str(name)] = chosen = [plain_id(i, f"{where}, split {name!r}") for i in listed]
            for i in chosen:
                if i not in known:
                    raise BatchError(f"{where}: split {name!r} names id {i!r}, which no row has")
                if i in seen:
                    raise BatchError(f"{where}: id {i!r} is listed in more than one split")
                seen.add(i)
        return result
    if ratios is not None:
        return ratio_splits(list(ids), ratios, seed)
    if split_column is None:
        if source_splits is None:
            raise BatchError(f"{where}: give split_column=, splits= or ratios=")
        return {name: list(listed) for name, listed in source_splits.items()}
    if split_column not in columns:
        raise BatchError(
            f"{where}: no split column {split_column!r} (columns: {', '.join(columns)}); "
            "give split_column=, splits= or ratios="
        )
    result = {}
    for i, name in zip(ids, column(split_column), strict=True):
        if not isinstance(name, (str, np.str_)):
            raise BatchError(
                f"{where}: split column {split_column!r} holds {type_name(name)} "
                f"({repr(name)[:40]}) at id {i!r}: split names are strings"
            )
        result.setdefault(str(name), []).append(i)
    return result


def ratio_splits(ids: list[Any], ratios: Mapping[str, float], seed: int) -> dict[str, list[Any]]:
    """Cut ``ids``, shuffled by ``seed``, into splits of the given fractions (in their order).

    Raises:
        BatchError: ratios that are negative or do not sum to 1.
    """
    if not ratios or any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise BatchError(f"split ratios must be non-negative and sum to 1, got {dict(ratios)}")
    random.Random(seed).shuffle(ids)
    splits, start = {}, 0
    names = list(ratios)
    for i, name in enumerate(names):
        end = len(ids) if i == len(names) - 1 else start + round(ratios[name] * len(ids))
        splits[name] = ids[start:end]
        start = end
    return splits
