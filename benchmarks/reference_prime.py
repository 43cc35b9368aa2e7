"""In-process priming on the reference library's own workload against an encode-and-write floor.

The workload has the shape of zensols.deeplearn's synthetic benchmark: ``points`` data points of
``dims`` float32 values and an int label in ``[0, classes)``, held in memory, batches of
``batch_size`` (100,000 x 64 and 256: 391 batches, the last one short; the issue's measurement
of the reference counted 393). The baseline does only what any priming must: the same data points
stacked into the same tensors (``torch.stack``) and each batch written to one file with a plain
write (``torch.save``), no checksums, no fsync, no store. Runs are interleaved (baseline, prime,
baseline, ...) and the medians compared, so a busy machine slows both alike.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    DataPoint,
    FeatureVectorizerManager,
    SplitStashContainer,
    TensorFeatureVectorizer,
)

from .table import Row, div, fmt, times

__all__ = ["ReferenceContainer", "baseline", "compare", "rows", "stash", "targets"]

MANAGER = "reference_vectorizer_manager"
MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            MANAGER,
            (
                FieldFeatureMapping("label", "rlabel", is_label=True),
                FieldFeatureMapping("x", "rvector"),
            ),
        )
    ],
)


class ReferenceContainer(SplitStashContainer):
    """One ``train`` split over a ``points x dims`` float32 matrix and its int labels.

    Args:
        points: data points.
        dims: float values a data point.
        classes: label classes (``0 .. classes - 1``).
        seed: seeds the data.
    """

    def __init__(self, points: int, dims: int, classes: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.params = {"points": points, "dims": dims, "classes": classes, "seed": seed}
        self.x = torch.randn(points, dims, generator=gen)
        self.labels = torch.randint(0, classes, (points,), generator=gen).tolist()
        self._keys: dict[str, Sequence[Any]] = {"train": range(points)}

    @property
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        """The ids of the single ``train`` split."""
        return self._keys

    def __getitem__(self, data_point_id: Any) -> tuple[torch.Tensor, int]:
        """``(vector, label)`` of one id."""
        point = int(data_point_id)
        return self.x[point], self.labels[point]

    def fingerprint(self) -> str:
        """Hash of the generator parameters (the data is a pure function of them)."""
        doc = repr(sorted(self.params.items())) + "torch.randn+randint/v1"
        return str(xxhash.xxh3_128_hexdigest(doc.encode()))


@dataclass
class ReferenceDataPoint(DataPoint):
    """One row: ``raw`` is ``(vector, label)``."""

    raw: tuple[torch.Tensor, int]

    @property
    def x(self) -> torch.Tensor:
        """The feature vector."""
        return self.raw[0]

    @property
    def label(self) -> int:
        """The class index."""
        return self.raw[1]


def stash(path: Path, container: ReferenceContainer, batch_size: int) -> BatchStash:
    """The in-process stash over ``container`` (one stored object a batch)."""
    classes, dims = container.params["classes"], container.params["dims"]
    manager = FeatureVectorizerManager(
        MANAGER,
        [
            CategoryEncodableFeatureVectorizer("rlabel", categories=range(classes)),
            TensorFeatureVectorizer("rvector", shape=(dims,)),
        ],
    )
    return BatchStash(
        str(path),
        container,
        [manager],
        MAPPINGS,
        ReferenceDataPoint,
        batch_size=batch_size,
        workers=0,
        groups=[{"x", "label"}],
    )


def baseline(path: Path, container: ReferenceContainer, batch_size: int) -> int:
    """Stack each batch's rows and labels and write them to one file; returns the batches."""
    path.mkdir(parents=True, exist_ok=True)
    ids = list(container.keys_by_split["train"])
    count = 0
    for start in range(0, len(ids), batch_size):
        rows = [container[i] for i in ids[start : start + batch_size]]
        x = torch.stack([r[0] for r in rows])
        label = torch.stack([torch.tensor(r[1], dtype=torch.int64) for r in rows])
        torch.save({"x": x, "label": label}, path / f"{count}.pt")
        count += 1
    return count


def _timed_prime(path: Path, container: ReferenceContainer, batch_size: int) -> float:
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    stash(path, container, batch_size).prime()
    return time.perf_counter() - t0


def _timed_baseline(path: Path, container: ReferenceContainer, batch_size: int) -> float:
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    baseline(path, container, batch_size)
    return time.perf_counter() - t0


def compare(
    work: Path, points: int = 100_000, dims: int = 64, batch_size: int = 256, repeats: int = 3
) -> dict[str, Any]:
    """Prime and baseline, interleaved ``repeats`` times each; medians and their ratio.

    Returns:
        ``prime_s`` and ``baseline_s`` (medians), every run, the batches, and ``ratio``: the
        baseline's seconds over the prime's (above 1: priming is the faster).
    """
    container = ReferenceContainer(points, dims, 10)
    batches = -(-points // batch_size)
    primes, floors = [], []
    for _ in range(repeats):
        floors.append(_timed_baseline(work / "floor", container, batch_size))
        primes.append(_timed_prime(work / "prime", container, batch_size))
    shutil.rmtree(work / "floor", ignore_errors=True)
    shutil.rmtree(work / "prime", ignore_errors=True)
    prime_s, floor_s = statistics.median(primes), statistics.median(floors)
    return {
        "points": points,
        "dims": dims,
        "batch_size": batch_size,
        "batches": batches,
        "prime_s": prime_s,
        "baseline_s": floor_s,
        "prime_runs": primes,
        "baseline_runs": floors,
        "ratio": floor_s / prime_s if prime_s else None,
    }


SECTION = "priming on the reference's workload"


def rows(result: dict[str, Any]) -> list[Row]:
    """The two medians: the in-process prime and the encode-and-write baseline."""
    shape = f"{result['points']:,} x {result['dims']} float32 + label, batch {result['batch_size']}"
    runs = len(result["prime_runs"])
    return [
        Row(
            SECTION,
            f"BatchStash(workers=0).prime(), {shape}: {result['batches']} batches, median of "
            f"{runs} interleaved",
            f"{fmt(result['prime_s'], 2)} s",
        ),
        Row(
            SECTION,
            "baseline: torch.stack of the same tensors and torch.save, one file a batch",
            f"{fmt(result['baseline_s'], 2)} s",
        ),
    ]


def targets(result: dict[str, Any] | None) -> list[Row]:
    """In-process priming at least as fast as the encode-and-write baseline."""
    prime = None if result is None else result["prime_s"]
    floor = None if result is None else result["baseline_s"]
    ratio = div(floor, prime)
    return [
        Row(
            SECTION,
            "in-process prime vs the encode-and-write baseline: rate (baseline s / prime s)",
            f"{times(ratio)} ({fmt(prime, 2)} vs {fmt(floor, 2)} s)",
            ">= 1.00 x",
            None if ratio is None else ratio >= 1.0,
        )
    ]
