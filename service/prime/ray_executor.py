"""The Ray executor: the same plain-data priming task as the process pool, on a Ray cluster.

Each Ray task encodes a chunk of id sets from the importable dataset factory and writes straight
into the store (a shared directory or an object store), exactly as a pool worker does, so the
bytes are the same. Tasks in flight are bounded (:func:`.executors.submit_bounded`); Ray retries
a task whose worker or node was lost. ``ray`` is imported only when this executor is chosen (the
``ray`` extra).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from batchstash.client import BatchError, BatchstashError
from batchstash.service.dataset.idset import DataPointIDSet

from . import worker
from .executors import WAIT_S, Chunk, Executor, OnDone, plain, submit_bounded
from .processes import end_processes, process_tree, start_time, watch
from .work import Work

__all__ = ["RayExecutor", "encode_chunk_task"]

logger = logging.getLogger(__name__)

TASK_RETRIES = 3
SHUTDOWN_GRACE_S = 1.0
"""How long a local Ray's processes get to exit by themselves after ``ray.shutdown``."""


def encode_chunk_task(work: Work, id_sets: list[dict[str, Any]]) -> list[int]:
    """A Ray task: one intra-op thread (one task a CPU), then the pool worker's own function."""
    import torch

    torch.set_num_threads(1)
    return worker.encode_chunk(work, id_sets)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BatchError(
            "the ray executor needs the ray extra: pip install 'batchstash[ray]'"
        ) from None
    return ray


class RayExecutor(Executor):
    """Runs priming tasks on Ray: a local Ray started for this process, or a running cluster.

    Args:
        workers: tasks in flight at most (and the CPUs of a local Ray).
        address: ``""`` starts a local Ray; ``auto`` or ``ray://host:port`` joins a cluster.
    """

    def __init__(self, workers: int, *, address: str = "") -> None:
        super().__init__(workers)
        self.address = address
        self._connected = False  # this executor called ray.init (else a caller's Ray is used)
        self._local: dict[int, int] = {}  # every process of the local Ray seen (pid -> start)
        self._release = threading.Event()  # lets the thread that started Ray end

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "ignore_reinit_error": True,
            # workers import the dataset factory the way this process does
            "runtime_env": {
                "env_vars": {
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p
                    )
                }
            },
        }
        if self.address:
            options["address"] = self.address
        else:
            options["num_cpus"] = self.workers
        logger.info("connecting to Ray (%s)", self.address or f"local, {self.workers} CPUs")
        before = process_tree(os.getpid(), include_root=False)
        self._init_in_own_thread(ray, options)
        self._connected = True
        if not self.address:  # a local Ray: the processes ray.init started are this one's
            after = process_tree(os.getpid(), include_root=False)
            self._local = {pid: t for pid, t in after.items() if before.get(pid) != t}
            self._remember()

    def _init_in_own_thread(self, ray: Any, options: dict[str, Any]) -> None:
        """``ray.init`` in a thread that lives until :meth:`close`.

        Ray starts its local daemons (GCS, raylet) with ``PR_SET_PDEATHSIG``, which Linux fires
        when the *thread* that started them exits: initialized from a prime's thread, the local
        Ray was killed as that prime ended (its agents and workers orphaned, running on) and
        the next prime hung until the driver gave up on the GCS and exited the process.
        """
        started = threading.Event()
        failed: list[BaseException] = []
        self._release.clear()

        def own() -> None:
            try:
                ray.init(**options)
            except BaseException as exc:  # raised in the caller's thread below
                failed.append(exc)
                return
            finally:
                started.set()
            self._release.wait()

        threading.Thread(target=own, name="batchstash-ray", daemon=True).start()
        started.wait()
        if failed:
            raise failed[0]

    def _remember(self) -> None:
        """Add the processes the local Ray's processes started since (agents, workers).

        Taken while they are still under their parents: one whose parent died is re-parented
        and no longer found from this process.
        """
        for pid, start in list(self._local.items()):
            if start_time(pid) == start:
                self._local.update(process_tree(pid, include_root=False))

    def close(self) -> None:
        """Shut down the Ray this executor connected to; a local Ray's processes do not outlive it.

        ``ray.shutdown`` ends the processes the driver started, but those they started (the
        dashboard and runtime-env agents, workers) outlive a raylet that is gone by tens of
        seconds: every process of the local Ray seen since it started (:meth:`_remember`) is
        ended within a few seconds, here or, where the driver itself does not survive the
        shutdown (it exits when its raylet goes), by a watchdog (:func:`~.processes.watch`).
        """
        ray = sys.modules.get("ray")
        if not self._connected or ray is None or not ray.is_initialized():
            return  # a Ray this executor did not start is its owner's to stop
        self._connected = False
        self._remember()
        tree = {pid: t for pid, t in self._local.items() if start_time(pid) == t}
        self._local = {}
        watch(tree, grace_s=SHUTDOWN_GRACE_S)  # the driver may not survive ray.shutdown
        try:
            ray.shutdown()
        finally:
            self._release.set()  # only now may the thread that started Ray end
        if tree:
            end_processes(tree, grace_s=SHUTDOWN_GRACE_S, what="Ray processes")

    def run(
        self,
        chunks: Iterable[Chunk],
        work: Work,
        local: Callable[[DataPointIDSet], int],
        on_done: OnDone,
        cancel: threading.Event,
    ) -> None:
        """Submit chunks as Ray tasks, at most ``2 * workers`` in flight; stop at cancel."""
        work.required_recipe("the ray executor")
        ray = _ray()
        self._connect(ray)
        task = ray.remote(encode_chunk_task).options(num_cpus=1, max_retries=TASK_RETRIES)

        def finished(refs: list[Any]) -> list[Any]:
            return list(ray.wait(refs, num_returns=1, timeout=WAIT_S)[0])

        def abandon(refs: list[Any]) -> None:
            for ref in refs:
                ray.cancel(ref)

        try:
            submit_bounded(
                chunks,
                self.limit,
                lambda chunk: task.remote(work, plain(chunk)),
                finished,
                lambda ref: self._result(ray, ref),
                on_done,
                cancel,
                abandon,
            )
        finally:
            self._remember()  # the workers the run started

    @staticmethod
    def _result(ray: Any, ref: Any) -> list[int]:
        try:
            return list(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BatchstashError):
                raise cause from None
            raise BatchError(
                f"a Ray priming task failed: {type(cause).__name__}: {cause}"
            ) from None
        except ray.exceptions.RayError as exc:  # a worker or node lost beyond the retries
            raise BatchError(f"a Ray priming task was lost: {type(exc).__name__}: {exc}") from None
