"""Runs priming work in a spawn-started process pool, with progress and cancellation."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from batchstash.client import BatchError, PrimeCancelledError
from batchstash.service.stash.idset import DataPointIDSet

from .worker import encode_chunk

__all__ = ["chunked", "run_pool"]

logger = logging.getLogger(__name__)


def chunked(id_sets: Sequence[DataPointIDSet], size: int) -> list[list[DataPointIDSet]]:
    """Cut ``id_sets`` into chunks of ``size``."""
    return [list(id_sets[i : i + size]) for i in range(0, len(id_sets), size)]


def run_pool(
    chunks: Sequence[Sequence[DataPointIDSet]],
    workers: int,
    factory: str,
    factory_kwargs: dict[str, Any],
    on_done: Callable[[DataPointIDSet], None],
    cancel: threading.Event | None = None,
) -> None:
    """Encode ``chunks`` in ``workers`` spawned processes that rebuild the stash from ``factory``.

    Spawn (not fork) keeps torch and threads safe; only plain data crosses to the workers.

    Args:
        chunks: the id sets, one list per task.
        workers: the number of processes.
        factory: the ``module:function`` that builds the stash in each worker.
        factory_kwargs: JSON-able keyword arguments of the factory.
        on_done: called in this process with each id set once its batch is stored.
        cancel: set it to stop: pending chunks are dropped, running ones finish.

    Raises:
        PrimeCancelledError: ``cancel`` was set.
        VectorizerError: a vectorizer failed in a worker.
    """
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures: dict[Future[int], Sequence[DataPointIDSet]] = {
            pool.submit(encode_chunk, factory, factory_kwargs, [s.to_dict() for s in chunk]): chunk
            for chunk in chunks
        }
        pending = set(futures)
        try:
            while pending:
                if cancel is not None and cancel.is_set():
                    raise PrimeCancelledError("prime cancelled")
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    for id_set in futures[future]:
                        on_done(id_set)
        except BrokenProcessPool as exc:
            raise BatchError(f"a priming worker died: {exc}") from exc
        except BaseException:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
