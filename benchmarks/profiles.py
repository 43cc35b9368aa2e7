"""Run sizes: ``default`` (the issue's standard workload) and ``quick`` (a CI smoke test)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    """How much a run does; every load test stops at ``max_batches`` or ``max_seconds``.

    Attributes:
        name: ``default`` or ``quick``.
        rows: data points a batch.
        large_dims: float values a row of a large batch (1,024: 1,050,624 bytes a batch).
        small_dims: float values a row of a small batch (64: 67,584 bytes a batch).
        large_batches: batches of the large store.
        small_batches: batches of the small-batch store.
        prime_batches: batches primed with 1 and with 2 workers; this store is also the small
            store of the memory test, against the large store (``large_batches``, 5x as many).
        breakdown_sample: batches timed step by step for the priming breakdown.
        max_batches: the most batches one load run fetches.
        max_seconds: the longest one load run lasts.
        ceiling_messages: 1 MiB messages one ceiling run receives (all its pairs), at most.
        baseline_files: distinct batches written as ``torch.save`` and pickle files.
        memory_reads: batches read from each store in the server memory test.
        prefetch_depths: prefetch values of the client memory test.
        prime_timeout: seconds a prime may take before the run fails.
        s3_batches: large batches primed into S3 (moto) and into a directory, then served.
        ray_batches: large batches primed on Ray and on the process pool (2 workers each).
        parquet_rows: rows of the own-data section's Parquet file.
        parquet_dims: float32 values a row of it (2,048 x 262,144 rows: 2.1 GB).
        reference_points: data points of the reference-shaped priming workload (64 floats and
            a label each, batches of 256).
        reference_repeats: interleaved runs of its prime and of its baseline (medians).
        link_seconds: each run of the link section (a raw stream, a store read).
        link_loss: the link section also measures the lossy links (their delay helper is slow
            to set up and costs CPU a packet).
        compression_batches: 1 MiB float batches of the compression section's float stores
            (its Zipf token stores hold 4 x as many 256 KiB batches), each primed three ways.
        compression_link: run the compression section's link part (root and netlab only).
        placement_windows: windows of 16 stored batches the rebatch section's placement
            measurement receives each way (:mod:`benchmarks.placement`) and its building
            measurement re-deals a round (:mod:`benchmarks.dealcost`).
    """

    name: str
    rows: int = 256
    large_dims: int = 1024
    small_dims: int = 64
    large_batches: int = 2000
    small_batches: int = 2000
    prime_batches: int = 400
    breakdown_sample: int = 40
    max_batches: int = 2000
    max_seconds: float = 10.0
    ceiling_messages: int = 4000
    baseline_files: int = 500
    memory_reads: int = 300
    prefetch_depths: tuple[int, ...] = (1, 4, 8)
    prime_timeout: float = 600.0
    s3_batches: int = 200
    ray_batches: int = 200
    parquet_rows: int = 262144
    parquet_dims: int = 2048
    reference_points: int = 100_000
    reference_repeats: int = 3
    link_seconds: float = 4.0
    link_loss: bool = True
    compression_batches: int = 400
    compression_link: bool = True
    placement_windows: int = 16


PROFILES = {
    "default": Profile("default"),
    "quick": Profile(
        "quick",
        large_batches=50,
        small_batches=50,
        prime_batches=10,
        breakdown_sample=4,
        max_batches=100,
        max_seconds=2.0,
        ceiling_messages=300,
        baseline_files=30,
        memory_reads=20,
        prefetch_depths=(1, 4),
        prime_timeout=120.0,
        s3_batches=10,
        ray_batches=8,
        parquet_rows=3000,
        parquet_dims=64,
        reference_points=2560,
        link_seconds=1.0,
        link_loss=False,
        compression_batches=12,
        compression_link=False,
        placement_windows=2,
    ),
}
