"""Status cost: admin status and split counts on a small and a large primed store, in process."""

from __future__ import annotations

import secrets
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from batchstash.client import wire
from batchstash.service.api.app import create_app
from batchstash.service.api.routes.admin import status_body
from batchstash.service.config import build_settings
from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.backend import open_backend
from batchstash.service.store.lease import JobLease, JobState
from batchstash.service.store.reader import StoreReader
from batchstash.service.store.records import Manifest, Plan, StoreInfo, write_record
from batchstash.service.store.writer import identity_metadata

__all__ = ["CALLED", "SIZES", "build_store", "measure", "timings", "walk_ms"]

SIZES = {"default": (100, 100_000), "quick": (100, 10_000)}
"""Batches of the small and the large store, per profile."""

SHARES = (("train", 0.7), ("dev", 0.1), ("test", 0.2))
CALLS, WARMUP = 200, 20
CALLED = ("status", "splits", "status_body", "split_counts")
"""What is timed: ``GET /v1/admin/status`` and ``GET /v1/splits`` (TestClient), and in process
``status_body`` (the status route without HTTP) and ``StoreReader.split_counts()``."""


def _split_sizes(batches: int) -> dict[str, int]:
    sizes = {s: int(batches * share) for s, share in SHARES[1:]}
    return {SHARES[0][0]: batches - sum(sizes.values()), **sizes}


def build_store(root: Path, batches: int) -> dict[str, Any]:
    """A primed iris-shaped store of ``batches`` one-flower batches: records and every object.

    The group objects are valid payloads written with a plain ``write`` (no fsync, no rename):
    only the status path is measured, and fsyncing 10^5 files would take minutes.
    """
    start = time.perf_counter()
    stash = iris(path=str(root / "iris"))  # its metadata and groups; nothing is primed
    fingerprint, generation = stash.config_hash, secrets.token_hex(8)
    groups = [layout.group_name(g) for g in stash.groups]
    store = root / "store"
    backend = open_backend(str(store))
    splits = _split_sizes(batches)
    id_sets, stored, point = [], 0, 0
    for split, count in splits.items():
        for batch_id in range(count):
            ids = [point]
            id_sets.append(
                {
                    "batch_id": batch_id,
                    "data_point_ids": ids,
                    "split_name": split,
                    "torch_seed_context": {},
                }
            )
            meta = identity_metadata(split, batch_id, fingerprint, ids)
            tensors = {"flower_dims": torch.rand(1, 4), "label": torch.tensor([point % 3])}
            directory = store / layout.batch_prefix(generation, split, batch_id)
            directory.mkdir(parents=True)
            for group in groups:
                payload = wire.encode({group: tensors[group]}, meta)
                with open(store / layout.group_key(generation, split, batch_id, group), "wb") as fh:
                    stored += fh.write(payload)
            point += 1
    write_record(backend, Plan(fingerprint, generation, id_sets))
    counts = {s: {"batches": n, "data_points": n} for s, n in splits.items()}
    write_record(
        backend, StoreInfo(fingerprint, generation, groups, counts, stash.batch_metadata.to_dict())
    )
    write_record(backend, Manifest(fingerprint, generation, splits, stored))
    progress = {s: [n, n] for s, n in splits.items()}
    lease = JobLease.acquire(backend, "prime", generation=generation, progress=progress)
    lease.finish(JobState.DONE, progress=progress, stored_bytes=stored)
    return {
        "batches": batches,
        "objects": batches * len(groups),
        "bytes": stored,
        "build_s": time.perf_counter() - start,
        "dir": str(store),
    }


def timings(
    calls: list[Callable[[], Any]], count: int = CALLS, warmup: int = WARMUP
) -> list[dict[str, float]]:
    """Median and p99 microseconds of each call, the calls interleaved (one load for all)."""
    samples: list[list[float]] = [[] for _ in calls]
    for i in range(warmup + count):
        for call, times in zip(calls, samples, strict=True):
            start = time.perf_counter_ns()
            call()
            if i >= warmup:
                times.append((time.perf_counter_ns() - start) / 1e3)
    return [
        {
            "p50_us": statistics.median(t),
            "p99_us": sorted(t)[round(0.99 * (count - 1))],
            "calls": count,
        }
        for t in samples
    ]


def _get(client: TestClient, path: str, batches: int) -> Callable[[], Any]:
    def call() -> Any:
        response = client.get(path)
        response.raise_for_status()
        return response.json()

    body = call()  # the store must really be primed and complete, or nothing is measured
    splits = body["splits"]
    total = sum(s["total"] if "total" in s else s["batches"] for s in splits.values())
    if not body["primed"] or total != batches:
        raise RuntimeError(f"{path} on the {batches} batch store answered {body}")
    return call


def walk_ms(store: str) -> float:
    """One walk of the batch objects with a ``stat`` of each (what status used to cost), in ms."""
    backend, start = open_backend(store), time.perf_counter()
    found = sum(backend.version(key) is not None for key in backend.list(layout.BATCHES))
    if not found:
        raise RuntimeError(f"no batch objects under {store}")
    return (time.perf_counter() - start) * 1e3


def _time_calls(dirs: list[str], sizes: tuple[int, int]) -> list[dict[str, Any]]:
    """Every call of :data:`CALLED`, timed on both stores: ``[small, large]``."""
    out: list[dict[str, Any]] = [{}, {}]
    apps = [create_app(build_settings(data_dir=d, role="serve")) for d in dirs]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        for key, path in (("status", "/v1/admin/status"), ("splits", "/v1/splits")):
            out[0][key], out[1][key] = timings(
                [_get(first, path, sizes[0]), _get(second, path, sizes[1])]
            )
    states = [app.state.batchstash for app in apps]
    out[0]["status_body"], out[1]["status_body"] = timings(
        [partial(status_body, s) for s in states]
    )
    readers = [StoreReader(open_backend(d)).split_counts for d in dirs]
    out[0]["split_counts"], out[1]["split_counts"] = timings(readers)
    return out


def measure(work: Path, sizes: tuple[int, int]) -> dict[str, Any]:
    """Build both stores, time every call on each, and the ratios large / small (p50)."""
    try:
        small, large = stores = [build_store(work / f"status-{n}", n) for n in sizes]
        dirs = [store.pop("dir") for store in stores]
        for store, directory, timed in zip(stores, dirs, _time_calls(dirs, sizes), strict=True):
            store.update(timed, walk_ms=walk_ms(directory))
    finally:  # 10^5 small files: freed now, not at the end of the run
        for n in sizes:
            shutil.rmtree(work / f"status-{n}", ignore_errors=True)
    ratios = {k: large[k]["p50_us"] / small[k]["p50_us"] for k in CALLED}
    return {"sizes": list(sizes), "small": small, "large": large, "ratios": ratios}
