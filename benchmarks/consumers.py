"""Consumer processes: fetch batches (or the ceiling's messages) into tensors, timed per step.

A :class:`ConsumerPool` keeps spawned processes alive across runs (Python and torch start once).
Each run sets its consumers up (client, batch ids, one warm-up batch), starts them together and
stops each at its share of ``max_batches`` or at ``max_seconds``, whichever comes first. What a
consumer does is its kind (:mod:`benchmarks.fetchers`).

CPU: each consumer reports its own CPU seconds over its run (``getrusage``); the pool samples the
server side's process trees (:mod:`benchmarks.cpu`) just before the start and after the last
report, so every run carries both sides' CPU seconds per GB.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .cpu import self_cpu_seconds, tree_cpu, tree_delta, usage
from .fetchers import FETCHERS, LoadTask, fetch
from .procstat import memory, reset_peak

__all__ = ["ConsumerPool", "LoadTask", "summarize"]


def _consumer_main(rank: int, tasks: Any, results: Any) -> None:
    """A consumer process: set up, report ready, wait for go, fetch, report; until ``None``."""
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            load = LoadTask(**task)
            fetcher = FETCHERS[load.kind](load, rank)
        except Exception as exc:  # reported to the parent, which fails the run
            results.put({"rank": rank, "error": f"setup: {type(exc).__name__}: {exc}"})
            continue
        results.put({"rank": rank, "ready": True})
        go = tasks.get()
        try:
            reset_peak()
            before, cpu = memory(), self_cpu_seconds()
            start = time.perf_counter()
            count, size, latencies = fetch(fetcher, go["quota"], start + go["seconds"])
            end = time.perf_counter()
            after, cpu = memory(), self_cpu_seconds() - cpu
            results.put(
                {
                    "rank": rank,
                    "start": start,
                    "end": end,
                    "batches": count,
                    "bytes": size,
                    "latencies": latencies,
                    "rss_before": before["rss"],
                    "peak": after["peak"],
                    "cpu_s": cpu,
                }
            )
        except Exception as exc:
            results.put({"rank": rank, "error": f"run: {type(exc).__name__}: {exc}"})
        finally:
            fetcher.close()


class ConsumerPool:
    """Spawned consumer processes reused across runs (``with`` stops them by PID).

    Args:
        size: the most consumers a run may use.
    """

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(size)]
        self.procs = [
            ctx.Process(
                target=_consumer_main,
                args=(rank, self.tasks[rank], self.results),
                name=f"bench-consumer-{rank}",
                daemon=True,
            )
            for rank in range(size)
        ]
        for proc in self.procs:
            proc.start()

    def __enter__(self) -> ConsumerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask every consumer to exit; terminate the ones that do not."""
        for tasks in self.tasks:
            tasks.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    def _collect(self, count: int, timeout: float) -> list[dict[str, Any]]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            try:
                item = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"consumers silent for {timeout}s") from None
            if "error" in item:
                raise RuntimeError(f"consumer {item['rank']}: {item['error']}")
            got.append(item)
        return got

    def run(self, task: LoadTask, server_pids: Sequence[int] = ()) -> dict[str, Any]:
        """Run ``task`` on its first ``task.consumers`` processes; return :func:`summarize`'s.

        Args:
            task: the run.
            server_pids: the roots of the server side's process trees, whose CPU the run
                accounts (none: the server columns are ``None``).
        """
        if task.consumers > len(self.procs):
            raise ValueError(f"the pool has {len(self.procs)} consumers, not {task.consumers}")
        for rank in range(task.consumers):
            self.tasks[rank].put(asdict(task))
        self._collect(task.consumers, timeout=120)
        quota = max(1, task.max_batches // task.consumers)
        before = [tree_cpu(pid) for pid in server_pids]
        for rank in range(task.consumers):
            self.tasks[rank].put({"quota": quota, "seconds": task.max_seconds})
        parts = self._collect(task.consumers, timeout=task.max_seconds + 120)
        deltas = [tree_delta(b, tree_cpu(pid)) for b, pid in zip(before, server_pids, strict=True)]
        server = (sum(d[0] for d in deltas), sum(d[1] for d in deltas)) if deltas else None
        return summarize(parts, server)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(
    parts: list[dict[str, Any]], server: tuple[float, int] | None = None
) -> dict[str, Any]:
    """Join consumer reports: MB/s (10^6 bytes) and batches/s over the common wall time.

    Args:
        parts: each consumer's report.
        server: the server side's CPU seconds over the run and its busy processes.

    Returns:
        The rates, latency percentiles, client memory and the CPU columns of
        :func:`benchmarks.cpu.usage`.
    """
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    batches, size = sum(p["batches"] for p in parts), sum(p["bytes"] for p in parts)
    latencies = [x for p in parts for x in p["latencies"]]
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    return {
        "consumers": len(parts),
        "batches": batches,
        "bytes": size,
        "seconds": wall,
        "mb_s": size / wall / 1e6 if wall > 0 else None,
        "batches_s": batches / wall if wall > 0 else None,
        "p50_ms": None if p50 is None else p50 * 1e3,
        "p99_ms": None if p99 is None else p99 * 1e3,
        "client_rss_before": max(p["rss_before"] for p in parts),
        "client_peak": max(p["peak"] for p in parts),
        "client_growth": max(p["peak"] - p["rss_before"] for p in parts),
        **usage(server, (p["cpu_s"] for p in parts), len(parts), size, wall),
    }
