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

    def close(self) -> None:  # noqa: B027 (only executors that keep workers have to stop them)
        """Stop what the executor keeps between runs (warm workers); a later run starts anew."""

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
    """A spawn-started process pool on this machine; its workers die with the priming process.

    With ``keep_s``, the pool outlives a run by that many seconds, so the next prime finds its
    workers warm: torch imported, the dataset built (a worker rebuilds it only when the data
    version or the factory changes). :meth:`close` stops it at once (the server does when it
    stops). Without it, each run starts its workers and stops them at its end.

    Args:
        workers: processes.
        keep_s: seconds an idle pool is kept (``0``: not kept).
    """

    def __init__(self, workers: int, keep_s: float = 0.0) -> None:
        super().__init__(workers)
        self.keep_s = keep_s
        self._pool: ProcessPoolExecutor | None = None
        self._keeper: _Keeper | None = None
        self._timer: threading.Timer | None = None
        self._active = 0  # runs using the pool now
        self._lock = threading.Lock()

    def run(
        self,
        chunks: Iterable[Chunk],
        work: Work,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Run the chunks on ``workers`` spawned processes, at most ``2 * workers`` submitted.

        Stops at cancel or the first error, once the tasks already running have ended.
        """
        work.required_recipe(
            f"workers={self.workers}", "; or set workers=0 to encode in this process"
        )
        pool = self._take()

        def finished(futures: list[Future[list[int]]]) -> set[Future[list[int]]]:
            return wait(futures, timeout=WAIT_S, return_when=FIRST_COMPLETED)[0]

        def settle(futures: list[Future[list[int]]]) -> None:
            for future in futures:  # those not started never start; the others end first
                future.cancel()
            wait(futures)

        broken = False
        try:
            submit_bounded(
                chunks,
                self.limit,
                lambda chunk: pool.submit(worker.encode_chunk, work, plain(chunk)),
                finished,
                lambda future: future.result(),
                on_done,
                cancel,
                settle,
            )
        except BrokenProcessPool as exc:
            broken = True
            raise BatchError(f"a priming worker died: {exc}{_main_guard_hint()}") from exc
        finally:
            self._give_back(pool, broken)

    def close(self) -> None:
        """Stop the pool now, waiting for its workers to exit."""
        with self._lock:
            pool, self._pool = self._pool, None
            keeper, self._keeper = self._keeper, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if keeper is not None:
            keeper.stop()
        elif pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _take(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._active += 1
            if self._pool is None:
                if self.keep_s > 0:
                    self._keeper = _Keeper(self._new_pool, self.workers)
                    self._pool = self._keeper.pool
                else:
                    self._pool = self._new_pool()
            return self._pool

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # not fork: torch, threads stay safe
            initializer=guard.init_worker,
            initargs=(os.getpid(), worker_log_config()),
        )

    def _give_back(self, pool: ProcessPoolExecutor, broken: bool) -> None:
        with self._lock:
            keep = not broken and self.keep_s > 0 and self._pool is pool
            if keep:
                self._timer = threading.Timer(self.keep_s, self._expire)
                self._timer.daemon = True
                self._timer.start()
            self._active -= 1
        if keep:
            return
        if self._pool is pool:
            self.close()
        else:
            pool.shutdown(wait=True, cancel_futures=True)

    def _expire(self) -> None:
        """The idle timer: stop the pool unless a run took it meanwhile."""
        with self._lock:
            if self._active:
                return
        self.close()


class _Keeper:
    """A pool whose workers are started by a thread that lives as long as the pool.

    Linux sends a worker its parent-death signal (:mod:`.guard`) when the *thread* that started
    it ends: workers started by one prime's thread would die with that thread, so a pool kept
    between primes starts every worker from this thread, which waits until the pool stops.

    Args:
        make: builds the pool.
        workers: its processes, all started here before it is used.
    """

    def __init__(self, make: Callable[[], ProcessPoolExecutor], workers: int) -> None:
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._make, self._workers = make, workers
        self._thread = threading.Thread(target=self._keep, name="batchstash-workers", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise BatchError(f"priming workers did not start: {self._error}") from self._error

    def _keep(self) -> None:
        self.pool = self._make()
        try:
            for future in [self.pool.submit(os.getpid) for _ in range(self._workers)]:
                future.result()  # each submit while none is idle starts a worker, here
        except BaseException as exc:  # a worker that cannot start: the caller raises it
            self._error = exc
        self._ready.set()
        self._stopping.wait()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        """Stop the pool and wait for its workers and this thread to end."""
        self._stopping.set()
        self._thread.join()


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
            running cluster), ``process`` takes ``keep_s`` (seconds its idle workers are kept
            warm). Options the chosen executor does not take are ignored, so a
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
