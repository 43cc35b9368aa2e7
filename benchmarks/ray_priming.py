"""Priming on Ray (a local Ray started by the executor) vs the process pool, and Ray's start-up."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from batchstash.service import BatchStash

from .servers import DATASET

__all__ = ["WORKERS", "measure", "prime_in_process"]

WORKERS = 2
BURST_S = 0.01
"""Stored batches reported within this long of the first belong to the first finished task."""

Step = Callable[[str, Callable[[], Any]], Any]


def prime_in_process(path: Path, options: dict[str, Any], executor: str) -> dict[str, Any]:
    """Prime a new store in this process with ``executor`` and :data:`WORKERS` workers.

    Returns:
        ``batches`` encoded, ``wall_s`` (the ``prime()`` call), ``rate`` over it,
        ``steady_rate`` (batches/s after the first finished task: start-up left out; a task's
        batches are reported together when it ends), ``first_batch_s`` (the call's
        start to the first stored batch) and ``first_at`` (that moment, ``perf_counter``).
    """
    stash = BatchStash.from_factory(
        DATASET, path=str(path), workers=WORKERS, executor=executor, **options
    )
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    encoded = stash.prime(lambda _split, done, _total: marks.append((time.perf_counter(), done)))
    wall = time.perf_counter() - start
    initial = marks[0][1] if marks else 0  # the first call reports what was stored already
    stored = [(t, d) for t, d in marks if d > initial]
    if not encoded or not stored:
        raise RuntimeError(f"{executor}: nothing was primed into {path}")
    first, (last, done_last) = stored[0][0], stored[-1]
    burst = max(d for t, d in stored if t - first < BURST_S)  # the first task's batches
    steady = (done_last - burst) / (last - first) if last > first else None
    return {
        "executor": executor,
        "workers": WORKERS,
        "batches": encoded,
        "wall_s": wall,
        "rate": encoded / wall,
        "steady_rate": steady,
        "first_batch_s": first - start,
        "first_at": first,
    }


def measure(work: Path, options: dict[str, Any], step: Step) -> dict[str, Any]:
    """The process pool, then Ray (the executor's own ``ray.init``, timed), on new stores.

    Ray primes twice: the first prime starts it, the second finds it running (what a server
    that primes again pays). ``ray.init`` is wrapped with a timer meanwhile, so the executor
    starts Ray as it always does; Ray is shut down at the end (``ray.shutdown()``, never
    ``ray stop``).
    """
    start = time.perf_counter()
    import ray

    import_s = time.perf_counter() - start
    if ray.is_initialized():
        raise RuntimeError("Ray is already running in this process: start-up cannot be timed")
    count = options["batches"]
    pool = step(
        f"prime {count} large batches, process pool, {WORKERS} workers",
        lambda: prime_in_process(work / "ray-pool-store", options, "process"),
    )
    original = ray.init
    calls: list[tuple[float, float]] = []

    def timed_init(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            calls.append((began, time.perf_counter()))

    ray.init = timed_init
    try:
        on_ray = step(
            f"prime {count} large batches, Ray (local, started by the executor), {WORKERS} workers",
            lambda: prime_in_process(work / "ray-store", options, "ray"),
        )
        warm = step(
            f"prime {count} large batches, Ray already running, {WORKERS} workers",
            lambda: prime_in_process(work / "ray-store-2", options, "ray"),
        )
    finally:
        ray.init = original
        began = time.perf_counter()
        if ray.is_initialized():
            ray.shutdown()
        shutdown_s = time.perf_counter() - began
        for name in ("ray-pool-store", "ray-store", "ray-store-2"):
            shutil.rmtree(work / name, ignore_errors=True)
    if len(calls) != 1:
        raise RuntimeError(f"the Ray executor called ray.init {len(calls)} times, not once")
    init_start, init_end = calls[0]
    startup = {
        "import_s": import_s,
        "init_s": init_end - init_start,
        "init_to_first_batch_s": on_ray["first_at"] - init_start,
        "shutdown_s": shutdown_s,
    }
    for run in (pool, on_ray, warm):
        run.pop("first_at")
    steady = (
        on_ray["steady_rate"] / pool["steady_rate"]
        if on_ray["steady_rate"] and pool["steady_rate"]
        else None
    )
    return {
        "version": metadata.version("ray"),
        "batches": count,
        "process": pool,
        "ray": on_ray,
        "ray_warm": warm,
        "startup": startup,
        "ratio": on_ray["rate"] / pool["rate"],
        "steady_ratio": steady,
        "warm_ratio": warm["rate"] / pool["rate"],
    }
