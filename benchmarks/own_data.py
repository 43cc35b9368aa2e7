"""Priming a Parquet dataset: workers reading only their rows against loading it in every process.

The dataset is one Parquet file of ``rows`` rows: ``x`` a fixed-size list of ``dims`` float32,
``label`` an int64 class in [0, 10), ``split`` (``train`` 90 %, ``test`` 10 %). Two ways to
prime it with ``workers`` processes, each run in a fresh process from start to the last batch:

- ``parquet``: :class:`~batchstash.service.ParquetSplitStashContainer` (the row cache is built
  in the run: its cache directory starts empty);
- ``memory``: the way without it, what the factory of a user did: read the whole table with
  pyarrow and hand its rows to a :class:`~batchstash.service.MemorySplitStashContainer` (each
  worker's factory reads it again);
- ``memory`` with ``workers=0`` too: one process holding the data, the memory bound's base.

The peak RSS of the process tree (the priming process and its workers, summed, sampled every
20 ms) and the wall time from start to primed are measured. ``python -m benchmarks.own_data
run --kind parquet --workers 2 --data F --store D`` is one run; the suite's ``own_data``
section makes the data and runs all three.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    ParquetSplitStashContainer,
    TensorFeatureVectorizer,
)

from .table import Row, div, fmt, times

__all__ = [
    "LABELS",
    "measure",
    "memory_stash",
    "parquet_stash",
    "rows",
    "targets",
    "tree_rss",
    "write_dataset",
]

MB = 1e6
LABELS = {
    "memory_0": "whole table in memory, in process (one process holding the data)",
    "memory_2": "whole table in memory, 2 workers (each reads it)",
    "parquet_2": "ParquetSplitStashContainer, 2 workers (each reads its rows)",
}

CLASSES = tuple(range(10))
MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "own",
            (FieldFeatureMapping("label", "label", is_label=True), FieldFeatureMapping("x", "x")),
        )
    ],
)


def write_dataset(path: Path, rows: int, dims: int, seed: int = 0) -> int:
    """Write the dataset in row groups of 16,384 rows (bounded memory); returns its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gen = np.random.default_rng(seed)
    schema = pa.schema(
        [("x", pa.list_(pa.float32(), dims)), ("label", pa.int64()), ("split", pa.string())]
    )
    step = 16384
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            x = gen.standard_normal((n, dims), dtype=np.float32)
            ids = np.arange(start, start + n)
            writer.write_table(
                pa.table(
                    {
                        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dims),
                        "label": gen.integers(0, 10, n),
                        "split": np.where(ids % 10 == 0, "test", "train"),
                    },
                    schema=schema,
                )
            )
    return path.stat().st_size


def _stash(path: str, container: Any, dims: int, workers: int) -> BatchStash:
    manager = FeatureVectorizerManager(
        "own",
        [
            CategoryEncodableFeatureVectorizer("label", categories=CLASSES),
            TensorFeatureVectorizer("x", shape=(dims,)),
        ],
    )
    return BatchStash(
        path,
        container,
        [manager],
        MAPPINGS,
        batch_size=256,
        workers=workers,
        groups=[{"x", "label"}],
    )


def parquet_stash(path: str, data: str, dims: int, workers: int = 0) -> BatchStash:
    """The dataset through :class:`ParquetSplitStashContainer`."""
    return _stash(path, ParquetSplitStashContainer(data), dims, workers)


def memory_stash(path: str, data: str, dims: int, workers: int = 0) -> BatchStash:
    """The dataset read whole, its rows in a :class:`MemorySplitStashContainer`."""
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    x = table.column("x").combine_chunks().flatten().to_numpy().reshape(len(table), dims)
    labels = table.column("label").to_numpy()
    names = table.column("split").to_pylist()
    records = {i: {"x": x[i], "label": int(labels[i])} for i in range(len(table))}
    splits: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        splits.setdefault(name, []).append(i)
    return _stash(path, MemorySplitStashContainer(records, splits), dims, workers)


def tree_rss(pid: int) -> int:
    """The summed RSS of ``pid`` and its descendants, in bytes (Linux ``/proc``)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # a worker that just exited
    return total


def _one(kind: str, workers: int, data: Path, store: Path, dims: int, timeout: float) -> dict:
    """Run one prime in a fresh process; its wall time and the peak RSS of its tree."""
    env = {**os.environ, "BATCHSTASH_CACHE_DIR": str(store / "cache")}
    cmd = [sys.executable, "-m", "benchmarks.own_data", "run", "--kind", kind]
    cmd += ["--workers", str(workers), "--data", str(data), "--store", str(store / "store")]
    cmd += ["--dims", str(dims)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} prime with {workers} workers failed ({proc.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    return {"kind": kind, "workers": workers, "wall_s": wall, "peak_rss": peak, **report}


def measure(work: Path, rows: int, dims: int, timeout: float) -> dict[str, Any]:
    """Write the dataset under ``work``, then run the three primes; their results by name."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.parquet"
    size = write_dataset(data, rows, dims)
    runs = {}
    for kind, workers in (("memory", 0), ("memory", 2), ("parquet", 2)):
        name = f"{kind}_{workers}"
        runs[name] = _one(kind, workers, data, work / name, dims, timeout)
        _remove(work / name)
    return {"rows": rows, "dims": dims, "data_bytes": size, "runs": runs}


def _rate(run: dict[str, Any]) -> float:
    return float(run["batches"] / run["wall_s"])


def rows(result: dict[str, Any]) -> list[Row]:
    """One row per run: peak RSS of its processes, batches/s from start to primed."""
    sec = f"own data ({result['data_bytes'] / 1e9:.2f} GB Parquet, {result['rows']:,} rows)"
    return [
        Row(
            sec,
            f"{LABELS[name]}: peak RSS of all its processes; batches/s from start to primed",
            f"{fmt(run['peak_rss'] / MB)} MB; {fmt(_rate(run), 1)} batches/s "
            f"({fmt(run['wall_s'], 1)} s, of which loading {fmt(run['build_s'], 1)} s)",
        )
        for name, run in result["runs"].items()
    ]


def targets(result: dict[str, Any] | None) -> list[Row]:
    """Parquet with 2 workers: memory against one process's, speed against reading it whole."""
    runs = None if result is None else result["runs"]
    sec = "own data"
    peak = None if runs is None else runs["parquet_2"]["peak_rss"] / MB
    base = None if runs is None else runs["memory_0"]["peak_rss"] / MB
    fast = None if runs is None else _rate(runs["parquet_2"])
    slow = None if runs is None else _rate(runs["memory_2"])
    ratio, speed = div(peak, base), div(fast, slow)
    return [
        Row(
            sec,
            "Parquet, 2 workers: peak RSS of all processes vs one process holding the data",
            f"{times(ratio)} ({fmt(peak)} / {fmt(base)} MB)",
            "<= 1.50 x",
            None if ratio is None else ratio <= 1.5,
        ),
        Row(
            sec,
            "Parquet, 2 workers vs the whole table read by each, 2 workers: batches/s",
            f"{times(speed)} ({fmt(fast, 1)} / {fmt(slow, 1)} batches/s)",
            ">= 1.00 x",
            None if speed is None else speed >= 1.0,
        ),
    ]


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    factory = f"benchmarks.own_data:{args.kind}_stash"
    stash = BatchStash.from_factory(
        factory, path=args.store, data=args.data, dims=args.dims, workers=args.workers
    )
    built = time.perf_counter()
    batches = stash.prime()
    end = time.perf_counter()
    print(json.dumps({"batches": batches, "build_s": built - start, "prime_s": end - built}))


def main(argv: list[str] | None = None) -> None:
    """``run``: one prime (what :func:`measure` starts)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.own_data")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--kind", choices=("parquet", "memory"), required=True)
    one.add_argument("--workers", type=int, default=2)
    one.add_argument("--data", required=True)
    one.add_argument("--store", required=True)
    one.add_argument("--dims", type=int, required=True)
    _run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
