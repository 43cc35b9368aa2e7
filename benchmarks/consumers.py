"""Consumer processes: fetch batches over HTTP and decode them to tensors, timed per batch.

A :class:`ConsumerPool` keeps spawned processes alive across runs (Python and torch start once).
Each run sets its consumers up (client, batch ids, one warm-up batch), starts them together and
stops each at its share of ``max_batches`` or at ``max_seconds``, whichever comes first.

Kinds of consumer:

* ``iter``: ``BatchClient.iter_batches`` (shuffled epoch, this consumer's rank, ``prefetch``);
  the latency is the time blocked in ``next()`` (the trainer's data wait).
* ``seq``: ``BatchClient.batch`` one id after another; the latency is request to tensors.
* ``naive``: ``httpx`` GET from the minimal baseline server, then ``wire.decode`` (same checks).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from dataclasses import asdict, dataclass
from typing import Any

from .procstat import memory, reset_peak

__all__ = ["ConsumerPool", "LoadTask", "summarize"]


@dataclass(frozen=True)
class LoadTask:
    """One load run.

    Attributes:
        url: the server, on 127.0.0.1.
        kind: ``iter``, ``seq`` or ``naive``.
        consumers: concurrent consumer processes.
        max_batches: batches fetched by all consumers together, at most.
        max_seconds: the run stops after this long, whatever the count.
        prefetch: batches fetched ahead (``iter``).
        split: the split (batchstash) or the key prefix (naive server).
        batch_ids: the naive server's batch ids (batchstash asks the server).
    """

    url: str
    kind: str
    consumers: int
    max_batches: int
    max_seconds: float
    prefetch: int = 4
    split: str = "train"
    batch_ids: tuple[int, ...] = ()


def _tensor_bytes(tensors: Any) -> int:
    return sum(int(t.nbytes) for t in tensors.values())


class _Fetcher:
    """Set up for one task in a consumer process; :meth:`run` fetches until quota or deadline."""

    def __init__(self, task: LoadTask, rank: int) -> None:
        import httpx

        from batchstash.client import wire
        from batchstash.client.http import BatchClient

        self.task, self.rank, self.wire = task, rank, wire
        if task.kind == "naive":
            self.http = httpx.Client(base_url=task.url, timeout=60.0)
            self.ids = list(task.batch_ids)
            self.fetch_naive(self.ids[0])
        else:
            self.client = BatchClient(task.url, timeout=60.0, retries=0)
            self.ids = self.client.batch_ids(task.split)
            self.client.batch(task.split, self.ids[0])

    def fetch_naive(self, batch_id: int) -> int:
        response = self.http.get(f"/batches/{self.task.split}/{batch_id}")
        response.raise_for_status()
        return _tensor_bytes(self.wire.decode(bytearray(response.content)).tensors)

    def run(self, quota: int, deadline: float) -> tuple[int, int, list[float]]:
        task, latencies, total = self.task, [], 0
        if task.kind == "iter":
            it = self.client.iter_batches(task.split, epoch=0, shuffle=True, rank=self.rank,
                                          world_size=task.consumers, prefetch=task.prefetch)
            try:
                while len(latencies) < quota and time.perf_counter() < deadline:
                    start = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    latencies.append(time.perf_counter() - start)
                    total += _tensor_bytes(batch.attributes)
                    del batch
            finally:
                it.close()
            return len(latencies), total, latencies
        mine = self.ids[self.rank :: task.consumers]
        for i in range(quota):
            if time.perf_counter() >= deadline:
                break
            batch_id = mine[i % len(mine)]
            start = time.perf_counter()
            if task.kind == "naive":
                size = self.fetch_naive(batch_id)
            else:
                size = _tensor_bytes(self.client.batch(task.split, batch_id).attributes)
            latencies.append(time.perf_counter() - start)
            total += size
        return len(latencies), total, latencies

    def close(self) -> None:
        if self.task.kind == "naive":
            self.http.close()
        else:
            self.client.close()


def _consumer_main(rank: int, tasks: Any, results: Any) -> None:
    """A consumer process: set up, report ready, wait for go, fetch, report; until ``None``."""
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            fetcher = _Fetcher(LoadTask(**task), rank)
        except Exception as exc:  # reported to the parent, which fails the run
            results.put({"rank": rank, "error": f"setup: {type(exc).__name__}: {exc}"})
            continue
        results.put({"rank": rank, "ready": True})
        go = tasks.get()
        try:
            reset_peak()
            before = memory()
            start = time.perf_counter()
            count, size, latencies = fetcher.run(go["quota"], start + go["seconds"])
            end = time.perf_counter()
            after = memory()
            results.put({"rank": rank, "start": start, "end": end, "batches": count,
                         "bytes": size, "latencies": latencies, "rss_before": before["rss"],
                         "peak": after["peak"]})
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
            ctx.Process(target=_consumer_main, args=(rank, self.tasks[rank], self.results),
                        name=f"bench-consumer-{rank}", daemon=True)
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

    def run(self, task: LoadTask) -> dict[str, Any]:
        """Run ``task`` on its first ``task.consumers`` processes; return :func:`summarize`'s."""
        if task.consumers > len(self.procs):
            raise ValueError(f"the pool has {len(self.procs)} consumers, not {task.consumers}")
        for rank in range(task.consumers):
            self.tasks[rank].put(asdict(task))
        self._collect(task.consumers, timeout=120)
        quota = max(1, task.max_batches // task.consumers)
        for rank in range(task.consumers):
            self.tasks[rank].put({"quota": quota, "seconds": task.max_seconds})
        return summarize(self._collect(task.consumers, timeout=task.max_seconds + 120))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Join consumer reports: MB/s (10^6 bytes) and batches/s over the common wall time."""
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
    }
