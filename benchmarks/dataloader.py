"""The DataLoader path: ``BatchDataset`` in a ``DataLoader`` against ``iter_batches``, one process.

Each run reads one epoch's batches of the large store in this process (DataLoader workers are
its children, which the daemonic consumer processes cannot have), the three ways interleaved,
``repeats`` times; a way's result is its median run by MB/s. Worker start-up is not timed: the
loader's persistent workers start on an untimed first batch, as they do once per training.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from batchstash.client import Batch, BatchClient, BatchDataset

__all__ = ["WAYS", "compare"]

WAYS = ("iter", "dataset_0", "dataset_2")
"""``iter_batches``; ``DataLoader(BatchDataset)`` with ``num_workers`` 0 and 2."""


def _timed(batches: Iterator[Batch], max_batches: int, max_seconds: float) -> dict[str, Any]:
    count = size = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    for batch in batches:
        size += sum(int(t.nbytes) for t in batch.attributes.values())
        count += 1
        if count >= max_batches or time.perf_counter() >= deadline:
            break
    seconds = time.perf_counter() - start
    return {"batches": count, "bytes": size, "seconds": seconds, "mb_s": size / seconds / 1e6}


class _Ways:
    """The three readers of one server, each set up once (clients, warm workers)."""

    def __init__(self, url: str, prefetch: int) -> None:
        self.client = BatchClient(url, timeout=60.0)
        self.prefetch = prefetch
        self.loaders = {
            workers: DataLoader(
                BatchDataset(url, "train", prefetch=prefetch),
                batch_size=None,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            for workers in (0, 2)
        }
        for loader in self.loaders.values():  # workers started, first connections made
            next(iter(loader))

    def reader(self, way: str, epoch: int) -> Iterator[Batch]:
        batches: Iterator[Batch]
        if way == "iter":
            batches = self.client.iter_batches("train", epoch=epoch, prefetch=self.prefetch)
        else:
            batches = iter(self.loaders[int(way.rsplit("_", 1)[1])])
        return batches

    def close(self) -> None:
        self.loaders.clear()  # stops the workers
        self.client.close()


def compare(
    url: str,
    prefetch: int,
    max_batches: int,
    max_seconds: float,
    repeats: int = 5,
    step: Callable[[str, Callable[[], Any]], Any] = lambda _, action: action(),
) -> dict[str, Any]:
    """Read ``url``'s ``train`` split each way, interleaved ``repeats`` times.

    Returns:
        Per way the median run (by MB/s) with every run's MB/s in ``runs_mb_s``; ``prefetch``
        and ``repeats``; ``dataset_0_vs_iter`` and ``dataset_2_vs_iter``, the medians' ratios.
    """
    ways = _Ways(url, prefetch)
    series: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    try:
        for repeat in range(repeats):
            for way in WAYS:

                def run(w: str = way, r: int = repeat) -> dict[str, Any]:
                    return _timed(ways.reader(w, r), max_batches, max_seconds)

                name = f"DataLoader path: {way}, run {repeat + 1} of {repeats}"
                series[way].append(step(name, run))
    finally:
        ways.close()
    out: dict[str, Any] = {"prefetch": prefetch, "repeats": repeats}
    for way, runs in series.items():
        rates = [run["mb_s"] for run in runs]
        median = statistics.median_low(rates)
        out[way] = {**next(r for r in runs if r["mb_s"] == median), "runs_mb_s": rates}
    for way in ("dataset_0", "dataset_2"):
        out[f"{way}_vs_iter"] = out[way]["mb_s"] / out["iter"]["mb_s"]
    return out
