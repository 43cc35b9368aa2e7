"""Priming executors by name: where the encoding of id sets runs (``EXECUTORS``).

Each runs the same plain-data task (:mod:`.worker`): a chunk of id sets plus a
:class:`WorkSpec` naming the importable dataset factory and the store, so a worker rebuilds
everything itself and writes straight into the store. Nothing is pickled but plain data. Chunks
are taken from their iterable only when there is room for one (a few per worker in flight), so
the priming order can change while it runs (:class:`.schedule.WorkQueue`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchstash.client import BatchError, PrimeCancelledError
from batchstash.service.dataset.idset import DataPointIDSet

from ..logs import worker_log_config
from . import guard, worker

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "OnDone",
    "ProcessExecutor",
    "WorkSpec",
    "make_executor",
]

logger = logging.getLogger(__name__)

OnDone = Callable[[DataPointIDSet, int], None]
"""Called in the priming process as ``on_done(id_set, bytes_written)`` per stored batch."""


@dataclass(frozen=True)
class WorkSpec:
    """What a worker needs to encode and store id sets, as plain data.

    Attributes:
        store_url: the store to write into.
        factory: the ``module:function`` that builds the stash (``None``: in-process only).
        factory_kwargs: its JSON-able keyword arguments.
        fingerprint: the plan's fingerprint (workers never recompute it).
        generation: the plan's generation.
        groups: the attribute groups, as sorted lists.
    """

    store_url: str
    factory: str | None
    factory_kwargs: dict[str, Any]
    fingerprint: str
    generation: str
    groups: list[list[str]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


class Executor(ABC):
    """Runs chunks of id sets to completion, cancellation or the first error.

    Args:
        workers: how many tasks run at once.
        ray_address: the Ray cluster to join (``ray`` only; ``""`` starts a local one).
    """

    def __init__(self, workers: int, ray_address: str = "") -> None:
        self.workers = workers
        self.ray_address = ray_address

    @abstractmethod
    def run(
        self,
        chunks: Iterable[Sequence[DataPointIDSet]],
        spec: WorkSpec,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Encode and store every chunk.

        Args:
            chunks: the id sets, one list per task, taken when there is room for a task.
            spec: the plain-data description workers rebuild from.
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
        chunks: Iterable[Sequence[DataPointIDSet]],
        spec: WorkSpec,
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
        chunks: Iterable[Sequence[DataPointIDSet]],
        spec: WorkSpec,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Run the chunks on ``workers`` spawned processes, at most ``2 * workers`` submitted.

        Stops at cancel or the first error.
        """
        if spec.factory is None:
            raise BatchError(
                f"workers={self.workers} needs a stash built with "
                "BatchStash.from_factory('package.module:function'); "
                "or set workers=0 to encode in this process"
            )
        ctx = multiprocessing.get_context("spawn")  # not fork: torch and threads stay safe
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=guard.init_worker,
            initargs=(os.getpid(), worker_log_config()),
        )
        task = spec.to_dict()
        todo: Iterator[Sequence[DataPointIDSet]] = iter(chunks)
        futures: dict[Future[list[int]], Sequence[DataPointIDSet]] = {}
        try:
            while True:
                if cancel.is_set():
                    raise PrimeCancelledError("prime cancelled")
                # enough submitted to keep every worker busy, few enough that the next chunk
                # is chosen late (a demanded batch waits for about one chunk a worker)
                while len(futures) < 2 * max(self.workers, 1):
                    chunk = next(todo, None)
                    if chunk is None:
                        break
                    payload = [s.to_dict() for s in chunk]
                    futures[pool.submit(worker.encode_chunk, task, payload)] = chunk
                if not futures:
                    break
                done, _ = wait(futures, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in done:
                    for id_set, size in zip(futures.pop(future), future.result(), strict=True):
                        on_done(id_set, size)
        except BrokenProcessPool as exc:
            raise BatchError(f"a priming worker died: {exc}{_main_guard_hint()}") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ray(workers: int, ray_address: str = "") -> Executor:
    from .ray_executor import RayExecutor  # imported only when chosen: the ray extra

    return RayExecutor(workers, ray_address)


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
        "priming under `if __name__ == \"__main__\":`)"
    )


EXECUTORS: dict[str, Callable[[int, str], Executor]] = {
    "inline": InlineExecutor,
    "process": ProcessExecutor,
    "ray": _ray,
}
"""Priming executors by name (the ``executor`` setting)."""


def make_executor(name: str, workers: int, ray_address: str = "") -> Executor:
    """The executor ``name`` with ``workers`` (``workers=0`` always encodes inline).

    Args:
        name: a key of :data:`EXECUTORS`.
        workers: processes (``process``), or tasks in flight (``ray``).
        ray_address: ``""`` starts a local Ray for this process; ``auto`` or
            ``ray://host:port`` joins a running cluster.

    Raises:
        BatchError: no executor has that name.
    """
    if workers == 0:
        name = "inline"
    try:
        make = EXECUTORS[name]
    except KeyError:
        raise BatchError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}") from None
    return make(workers, ray_address)
