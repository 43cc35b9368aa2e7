"""The targets table: each target a ratio (or a bound) of numbers from the same run.

A target whose inputs this run did not measure (``--only``) reads ``n/a``, never met.
"""

from __future__ import annotations

from typing import Any

from . import compression, link, own_data, rebatch, reference_prime
from .rows import ceiling_run
from .table import Row, div, fmt, latency, times

__all__ = ["targets"]

MB = 1e6


def _get(run: dict[str, Any] | None, key: str) -> float | None:
    """A run's value; ``None`` for a run not measured or skipped."""
    return None if run is None else run.get(key)


def _bound(
    section: str,
    measurement: str,
    a: float | None,
    b: float | None,
    bound: float,
    at_least: bool,
    unit: str,
    digits: int = 0,
) -> Row:
    """``a / b`` against ``bound`` (``>=`` or ``<=``), both numbers shown."""
    value = div(a, b)
    met = None if value is None else (value >= bound if at_least else value <= bound)
    return Row(
        section,
        measurement,
        f"{times(value)} ({fmt(a, digits)} / {fmt(b, digits)} {unit})",
        f"{'>=' if at_least else '<='} {bound:.2f} x",
        met,
    )


def _wire(results: dict[str, Any]) -> list[Row]:
    """End to end against the distinct-buffer ceiling, CPU per GB against the raw pair's."""
    large = results.get("batchstash_large", {})
    one, four, top = large.get("iter_1"), large.get("iter_4"), ceiling_run(results, 1)
    sec = "large batches"
    return [
        _bound(
            sec,
            "BatchClient.iter_batches, 1 consumer, vs ceiling distinct (1 pair): MB/s",
            _get(one, "mb_s"),
            _get(top, "mb_s"),
            0.85,
            True,
            "MB/s",
        ),
        _bound(
            sec,
            "BatchClient.iter_batches, 4 consumers, vs ceiling distinct (4 pairs): MB/s",
            _get(four, "mb_s"),
            _get(ceiling_run(results, 4), "mb_s"),
            0.9,
            True,
            "MB/s",
        ),
        _bound(
            sec,
            "server CPU per GB: batchstash (iter_batches, 1 consumer) vs the raw sender "
            "(ceiling distinct, 1 pair)",
            _get(one, "server_s_gb"),
            _get(top, "server_s_gb"),
            1.5,
            False,
            "s/GB",
            2,
        ),
        _bound(
            sec,
            "client CPU per GB: BatchClient (checksums verified, 1 consumer) vs the raw "
            "receiver (ceiling distinct, 1 pair)",
            _get(one, "client_s_gb"),
            _get(top, "client_s_gb"),
            1.5,
            False,
            "s/GB",
            2,
        ),
    ]


def _local(results: dict[str, Any]) -> Row:
    base = results.get("baselines")
    best = None if base is None else max(base["dataloader_0"]["mb_s"], base["dataloader_2"]["mb_s"])
    one = results.get("batchstash_large", {}).get("iter_1")
    return _bound(
        "large batches",
        "BatchClient.iter_batches, 1 consumer, vs the best local "
        "DataLoader over torch.save files: MB/s",
        _get(one, "mb_s"),
        best,
        0.9,
        True,
        "MB/s",
    )


def _dataloader(results: dict[str, Any]) -> Row:
    dl = results.get("dataloader")
    return _bound(
        "DataLoader path",
        "DataLoader(BatchDataset), num_workers=0, vs BatchClient.iter_batches (same prefetch, "
        "same process, interleaved medians): MB/s",
        None if dl is None else dl["dataset_0"]["mb_s"],
        None if dl is None else dl["iter"]["mb_s"],
        0.9,
        True,
        "MB/s",
    )


def _small(results: dict[str, Any]) -> list[Row]:
    small = results.get("batchstash_small", {})
    one, seq = small.get("iter_1"), small.get("seq_1")
    rate = _get(one, "batches_s")
    return [
        Row(
            "small batches",
            "BatchClient.iter_batches, 1 consumer: batches/s",
            f"{fmt(rate)} batches/s",
            ">= 6,000 batches/s",
            None if rate is None else rate >= 6000,
        ),
        Row(
            "small batches",
            "one client.batch() call, 1 consumer: latency (info)",
            "n/a" if seq is None else latency(seq),
        ),
    ]


def _memory(results: dict[str, Any]) -> list[Row]:
    mem = results.get("memory")
    if mem is None:
        return [
            Row("memory", bound, "not measured (memory section)", target)
            for bound, target in (
                ("client peak RSS growth", "<= 3 x prefetch x batch"),
                ("server peak RSS, 5x store vs 1x", "<= 1.10 x"),
            )
        ]
    out = [
        Row(
            "memory",
            f"client peak RSS growth, prefetch {c['prefetch']}",
            f"{fmt(c['growth'] / MB)} MB = {fmt(c['ratio'], 2)} x prefetch x batch",
            "<= 3 x prefetch x batch",
            c["ratio"] <= 3,
        )
        for c in mem["client"]
    ]
    small, large = mem["server_small_store"], mem["server_large_store"]
    out.append(
        _bound(
            "memory",
            f"server peak RSS, {large['store_batches']} vs "
            f"{small['store_batches']} batch store (flat in store size)",
            large["peak"] / MB,
            small["peak"] / MB,
            1.10,
            False,
            "MB",
        )
    )
    return out


def targets(results: dict[str, Any]) -> list[Row]:
    """Every target, in table order.

    The wire, the local baseline, the DataLoader path, small batches, memory, own data,
    priming on the reference's workload, the link, compression over a link, re-dealt epochs
    and length bucketing.
    """
    return [
        *_wire(results),
        _local(results),
        _dataloader(results),
        *_small(results),
        *_memory(results),
        *own_data.targets(results.get("own_data")),
        *reference_prime.targets(results.get("reference_prime")),
        *link.targets(results.get("link")),
        *compression.targets(results.get("compression")),
        *rebatch.targets(results.get("rebatch")),
    ]
