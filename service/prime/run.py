"""One prime's execution: per-split progress, then encoding in this process or in the pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from batchstash.client import BatchError, PrimeCancelledError
from batchstash.service.stash.idset import DataPointIDSet

from .pool import chunked, run_pool

__all__ = ["ProgressCallback", "auto_chunk_size", "run_prime"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(split, done, total)`` each time a batch of ``split`` is stored."""


MAX_AUTO_CHUNK = 8


def auto_chunk_size(batches: int, workers: int) -> int:
    """Id sets per task: at least four tasks a worker, and at most :data:`MAX_AUTO_CHUNK`.

    Small tasks keep the workers busy to the end (the last task is short, so no worker idles
    long while another finishes) and make progress move smoothly; a task costs one small
    message each way.
    """
    return max(1, min(MAX_AUTO_CHUNK, batches // (workers * 4)))


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
        chunk_size: id sets per worker task (``0``: :func:`auto_chunk_size`).
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
        size = chunk_size or auto_chunk_size(len(todo), workers)
        run_pool(chunked(todo, size), workers, factory, factory_kwargs, on_done, cancel)
        return
    for id_set in todo:
        if cancel is not None and cancel.is_set():
            raise PrimeCancelledError("prime cancelled")
        encode(id_set)
        on_done(id_set)
