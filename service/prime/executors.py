"""Priming executors by name: where the encoding of id sets runs (``EXECUTORS``).

Each runs the same plain-data task (:mod:`.worker`): a chunk of id sets plus the prime's
:class:`~.work.Work`, so a worker rebuilds the dataset from its importable factory and writes
straight into the store. Nothing is pickled but plain data. Chunks are taken from their iterable
only when there is room for one (:func:`submit_bounded`: a few per worker in flight), so the
priming order can change while it runs (:class:`.schedule.WorkQueue`).
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from batchstash.client import BatchError, PrimeCancelledError
from batchstash.service.dataset.idset import DataPointIDSet

from ..logs import worker_log_config
from . import guard, worker
from .work import Work

__all__ = [
    "EXECUTORS",
    "Chunk",
    "Executor",
    "InlineExecutor",
    "OnDone",
    "ProcessExecutor",
    "make_executor",
    "submit_bounded",
]

logger = logging.getLogger(__name__)

Chunk = Sequence[DataPointIDSet]
"""The id sets of one task."""

OnDone = Callable[[DataPointIDSet, int], None]
"""Called in the priming process as ``on_done(id_set, bytes_written)`` per stored batch."""

Handle = TypeVar("Handle", bound=Hashable)

WAIT_S = 0.1
"""How long one wait for a finished task lasts: cancel is noticed this often."""


def submit_bounded(
    chunks: Iterable[Chunk],
    limit: int,
    submit: Callable[[Chunk], Handle],
    finished: Callable[[list[Handle]], Iterable[Handle]],
    result: Callable[[Handle], Sequence[int]],
    on_done: OnDone,
    cancel: threading.Event,
    abandon: Callable[[list[Handle]], None] | None = None,
) -> None:
    """Run every chunk as a task, at most ``limit`` submitted at once, to the end or first error.

    A chunk is taken from ``chunks`` only when a task slot frees: enough submitted to keep every
    worker busy, few enough that the next chunk is chosen late (a demanded batch waits for about
    one chunk a worker).

    Args:
        chunks: the id sets, one chunk per task.
        limit: tasks submitted and not finished at most.
        submit: starts a task; returns its handle.
        finished: the handles of those given that finished, waiting at most :data:`WAIT_S`.
        result: a finished task's bytes written per id set, or its error raised.
        on_done: called for each stored id set.
        cancel: set it to stop; raises :class:`PrimeCancelledError`.
        abandon: called with the tasks still in flight when this stops early.
    """
    todo = iter(chunks)
    flight: dict[Handle, Chunk] = {}
    try:
        while True:
            if cancel.is_set():
                raise PrimeCancelledError("prime cancelled")
            while len(flight) < limit:
                chunk = next(todo, None)
                if chunk is None:
                    break
                flight[submit(chunk)] = chunk
            if not flight:
                return
            for handle in finished(list(flight)):
                for id_set, size in zip(flight.pop(handle), result(handle), strict=True):
                    on_done(id_set, size)
    finally:
        if flight and abandon is not None:
            abandon(list(flight))


def plain(chunk: Chunk) -> list[dict[str, Any]]:
    """A chunk as the plain data a worker takes."""
    return [s.to_dict() for s in chunk]


class Executor(ABC):
    """Runs chunks of id sets to completion, cancellation or the first error.

    Args:
        workers: how many tasks run at once.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers

    @property
    def limit(self) -> int:
        """Tasks submitted at once: two a worker."""
        return 2 * max(self.workers, 1)

    @abstractmethod
    def run(
        self,
        chunks: Iterable[Chunk],
        work: Work,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Encode and store every chunk.

        Args:
            chunks: the id sets, one list per task, taken when there is room for a task.
            work: what workers rebuild the dataset from and write into.
            local: encodes and stores one id set in this process (returns bytes written).
            on_done: called here for each stored id set.
            cancel: set it to stop; raises :class:`PrimeCancelledError`.

        Raises:
            PrimeCancelledError: ``cancel`` was set.
            BatchError: a worker died; VectorizerError: a vectorizer failed.
        """


class InlineExecutor(Executor):
    """Encodes in the priming process itself, one id set after the other."""

    def run(
        self,
        chunks: Iterable[Chunk],
        work: Work,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Call ``local`` for each id set, checking ``cancel`` between them."""
        for chunk in chunks:
            for id_set in chunk:
                if cancel.is_set():
                    raise PrimeCancelledError("prime cancelled")
                on_done(id_set, local(id_set))


class ProcessExecutor(Executor):
    """A spawn-started process pool on this machine; its workers die with the priming process."""

    def run(
        self,
        chunks: Iterable[Chunk],
        work: Work,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Run the chunks on ``workers`` spawned processes, at most ``2 * workers`` submitted.

        Stops at cancel or the first error.
        """
        work.required_recipe(
            f"workers={self.workers}", "; or set workers=0 to encode in this process"
        )
        ctx = multiprocessing.get_context("spawn")  # not fork: torch and threads stay safe
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=guard.init_worker,
            initargs=(os.getpid(), worker_log_config()),
        )

        def finished(futures: list[Future[list[int]]]) -> set[Future[list[int]]]:
            return wait(futures, timeout=WAIT_S, return_when=FIRST_COMPLETED)[0]

        try:
            submit_bounded(
                chunks,
                self.limit,
                lambda chunk: pool.submit(worker.encode_chunk, work, plain(chunk)),
                finished,
                lambda future: future.result(),
                on_done,
                cancel,
            )
        except BrokenProcessPool as exc:
            raise BatchError(f"a priming worker died: {exc}{_main_guard_hint()}") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ray(workers: int, address: str = "") -> Executor:
    from .ray_executor import RayExecutor  # imported only when chosen: the ray extra

    return RayExecutor(workers, address=address)


def _main_guard_hint() -> str:
    """Why workers die at once when a script primes at import time, if that is the case."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(main, "__spec__", None) is not None or not path:
        return ""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""
    if "__name__" in source:
        return ""
    return (
        f" (spawned workers import {Path(path).name}, which primes at import time: put the "
        'priming under `if __name__ == "__main__":`)'
    )


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "inline": InlineExecutor,
    "process": ProcessExecutor,
    "ray": _ray,
}
"""Priming executors by name (the ``executor`` setting), each called as ``(workers, **options)``."""


def make_executor(name: str, workers: int, **options: Any) -> Executor:
    """The executor ``name`` with ``workers`` (``workers=0`` always encodes inline).

    Args:
        name: a key of :data:`EXECUTORS`.
        workers: processes (``process``), or tasks in flight (``ray``).
        **options: the chosen executor's own options, by name: ``ray`` takes ``address``
            (``""`` starts a local Ray for this process; ``auto`` or ``ray://host:port`` joins a
            running cluster). Options the chosen executor does not take are ignored, so a
            caller passes every executor's settings alike.

    Raises:
        BatchError: no executor has that name.
    """
    if workers == 0:
        name = "inline"
    try:
        make = EXECUTORS[name]
    except KeyError:
        raise BatchError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}") from None
    taken = inspect.signature(make).parameters
    return make(workers, **{k: v for k, v in options.items() if k in taken})
