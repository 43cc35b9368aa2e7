"""The serving section's runs as data, and the I/O floor server beside the real one.

Every run is ``key: (consumer kind, consumers, extra LoadTask fields)``; the same table is run for
the large and the small batches, each kind with the prefetch and ids a request of that size.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .servers import Server, child_env, free_port, subprocess_server

__all__ = [
    "BATCHSTASH_RUNS",
    "FLOOR_RUNS",
    "FORCED_RUNS",
    "MMAP_RUNS",
    "PER_REQUEST",
    "PREFETCH",
    "SENDFILE_RUNS",
    "Run",
    "floor_server",
]

Run = tuple[str, int, dict[str, Any]]

BATCHSTASH_RUNS: dict[str, Run] = {
    "raw_1": ("raw", 1, {}),
    "raw_data_1": ("raw_data", 1, {}),
    "iter_1": ("iter", 1, {}),
    "iter_threads_1": ("iter", 1, {"pipelined": False}),
    "iter_cpu_1": ("iter", 1, {"device": "cpu"}),
    "iter_4": ("iter", 4, {}),
    "seq_1": ("seq", 1, {}),
    "seq_4": ("seq", 4, {}),
}
"""Against ``batchstash serve``: the raw client (API port, data port), ``iter_batches``
(``device`` None and ``"cpu"``; pipelined, and a thread a request), ``batch()`` one by one."""

MMAP_RUNS: dict[str, Run] = {
    "raw_data_mmap_1": ("raw_data", 1, {}),
    "iter_mmap_1": ("iter", 1, {}),
}
"""Against ``batchstash serve`` with ``data_sendfile=false`` (the data listener sends the mapped
pages with ``sendmsg`` instead of the files with ``sendfile``): the A/B of that setting."""

SENDFILE_RUNS: dict[str, Run] = {
    "raw_data_sendfile_1": ("raw_data", 1, {}),
    "iter_sendfile_1": ("iter", 1, {}),
}
"""Against ``batchstash serve`` with ``data_sendfile=true``: the other side of that A/B (the
default, ``auto``, measures both ways and keeps the cheaper)."""

FORCED_RUNS: dict[str, tuple[str, dict[str, Run]]] = {
    "mmap": ("false", MMAP_RUNS),
    "sendfile": ("true", SENDFILE_RUNS),
}
"""The servers with ``data_sendfile`` forced: log name -> (setting, their runs)."""

FLOOR_RUNS: dict[str, Run] = {
    "floor_raw_1": ("raw", 1, {}),
    "floor_1": ("iter", 1, {}),
    "floor_4": ("iter", 4, {}),
}
"""Against the I/O floor server: the raw client, ``iter_batches``."""

PREFETCH = {"large": 24, "small": 96}
"""``iter_batches`` prefetch per batch size, chosen by measurement. Pipelined (the default, on
the data listener) it asks for ``prefetch // 6`` batches a request with five requests in flight
(4 and 16); with threads (``pipelined=False``, and against the floor server, which has no data
listener) ``prefetch // 3`` with two in flight (8 and 32). Small batches need deep requests to
amortize the per-request cost."""

PER_REQUEST = {size: prefetch // 3 for size, prefetch in PREFETCH.items()}
"""Batch ids a request of the raw client: ``iter_batches``' threaded default (one request at a
time, so the deeper request is its best)."""


@contextmanager
def floor_server(store: Path, from_url: str, log: Path) -> Iterator[Server]:
    """Run ``benchmarks.floor_server`` on ``store`` (JSON answers captured from ``from_url``)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.floor_server",
        "--port",
        str(port),
        "--store",
        str(store),
        "--from-url",
        from_url,
    ]
    with subprocess_server(argv, port, log, child_env()) as server:
        yield server
