"""One prime's execution: per-split progress, then encoding in this process or in the pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from batchstash.client import BatchError, PrimeCancelledError
from batchstash.service.stash.idset import DataPointIDSet

from .pool import chunked, run_pool

__all__ = ["ProgressCallback", "run_prime"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(split, done, total)`` each time a batch of ``split`` is stored."""


def run_prime(
    todo: Sequence[DataPointIDSet],
    totals: Mapping[str, int],
    encode: Callable[[DataPointIDSet], Any],
    *,
    workers: int,
    chunk_size: int,
    factory: str | None,
    factory_kwargs: dict[str, Any],
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Encode ``todo``, reporting progress per split against ``totals`` (batches per split).

    Args:
        todo: the id sets not stored yet.
        totals: the number of batches of each split (stored or not).
        encode: encodes and stores one id set in this process (``workers=0``).
        workers: priming processes; ``0`` calls ``encode`` here.
        chunk_size: id sets per worker task (``0``: about four tasks a worker).
        factory: the importable stash factory the workers rebuild the stash from.
        factory_kwargs: its JSON-able keyword arguments.
        progress: called once per split at the start, then after every stored batch.
        cancel: set it to stop (raises :class:`PrimeCancelledError`).
    """
    done = dict(totals)
    for id_set in todo:
        done[id_set.split_name] -= 1
    if progress:
        for split, total in totals.items():
            progress(split, done[split], total)

    def on_done(id_set: DataPointIDSet) -> None:
        done[id_set.split_name] += 1
        if progress:
            progress(id_set.split_name, done[id_set.split_name], totals[id_set.split_name])

    if todo and workers > 0:
        if factory is None:
            raise BatchError(
                f"workers={workers} needs a stash built with "
                "BatchStash.from_factory('package.module:function'); "
                "or set workers=0 to encode in this process"
            )
        size = chunk_size or max(1, len(todo) // (workers * 4))
        run_pool(chunked(todo, size), workers, factory, factory_kwargs, on_done, cancel)
        return
    for id_set in todo:
        if cancel is not None and cancel.is_set():
            raise PrimeCancelledError("prime cancelled")
        encode(id_set)
        on_done(id_set)
