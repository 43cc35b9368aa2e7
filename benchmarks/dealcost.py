"""The re-deal's own CPU, and the ratios it leaves where client and server share the cores.

``shuffle_window`` reads the same stored batches as ``W=0`` and then builds the new batches, so
its client and server CPU per GB is at least the stored path's (``S``) plus the building's
(``B``). Two ceilings of the re-dealt over the stored rate follow, for a client and server on
one machine:

- at the stored run's CPU use: ``S / (S + B)``, if re-dealing keeps the CPUs as busy as the
  stored path does (its threads wait on each other as much);
- with every CPU busy: ``cpus / (S + B)`` over the stored rate, with a perfect pipeline and no
  lock. A target above it cannot be met on that machine, however the client is built.

The building is measured alone: a window's stored batches, read once from the server and
held, are re-dealt by the client's own :class:`~batchstash.client.dealt.DealtWindow` (with its
buffer pool, as an iterator does) without a reader, a socket or a second thread;
``time.thread_time`` per GB of new batches, windows taken in turn from :data:`HELD` windows'
worth of batches so that most are not in cache (as in an epoch), medians of ``repeats``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from batchstash.client import BatchClient
from batchstash.client.buffers import BufferPool
from batchstash.client.dealt import DealtWindow
from batchstash.client.redeal import field_rules

from .cpu import usable_cpus

__all__ = ["HELD", "ceiling", "measure"]

HELD = 8
"""Windows' worth of stored batches held and dealt in turn."""


def measure(url: str, window: int, windows: int = 32, repeats: int = 5) -> dict[str, Any]:
    """The building's CPU per GB: ``windows`` windows of ``window`` stored batches, ``repeats`` x.

    Returns the median ``cpu_s_gb`` (and every run's), the batch bytes, the window and the
    usable CPUs.
    """
    with BatchClient(url, timeout=60.0) as client:
        it = client.iter_batches("train", epoch=0, shuffle_window=0, prefetch=8)
        held = [batch for _, batch in zip(range(HELD * window), it, strict=False)]
        it.close()
    if len(held) < window:
        raise RuntimeError(f"the store has {len(held)} train batches, fewer than a window")
    rules = field_rules(held[0].metadata, held[0].attributes)
    pool = BufferPool()
    runs = []
    for repeat in range(repeats + 1):  # the first round warms the pool, untimed
        cpu, size = time.thread_time(), 0
        for w in range(windows if repeat else 2):
            start = (w * window) % (len(held) - window + 1)
            dealt = DealtWindow(rules, lambda i: i, pool)
            for batch in held[start : start + window]:
                dealt.add(batch)
            dealt.deal(f"{repeat:08x}{w:08x}" * 4)
            for index in range(len(dealt)):
                size += sum(t.nbytes for t in dealt.batch(index).attributes.values())
            del dealt
        if repeat:
            runs.append((time.thread_time() - cpu) / (size / 1e9))
    return {
        "cpu_s_gb": statistics.median(runs),
        "runs": runs,
        "window": window,
        "batch_bytes": sum(t.nbytes for t in held[0].attributes.values()),
        "cpus": usable_cpus(),
    }


def ceiling(stored: dict[str, Any], building: dict[str, Any]) -> dict[str, Any] | None:
    """The two ceilings of the re-dealt over the stored rate (see above) from a ``W=0`` run.

    ``building``: a :func:`measure` result; ``stored``: the load run's ``mb_s``,
    ``client_s_gb``, ``server_s_gb``, ``client_cores`` and ``server_cores``. Returns ``same``
    (at the stored run's CPU use), ``ratio`` (every CPU busy) and its MB/s, ``S`` and the share
    of the CPUs the stored run kept busy; ``None`` where the run's CPU was not measured.
    """
    figures = ("mb_s", "client_s_gb", "server_s_gb", "client_cores", "server_cores")
    if any(stored.get(key) is None for key in figures) or not stored["mb_s"]:
        return None
    cpus, per_gb = building["cpus"], stored["client_s_gb"] + stored["server_s_gb"]
    if per_gb <= 0:  # a run too short for the CPU clock
        return None
    fastest = cpus / (per_gb + building["cpu_s_gb"]) * 1e3
    return {
        "same": per_gb / (per_gb + building["cpu_s_gb"]),
        "ratio": fastest / stored["mb_s"],
        "mb_s": fastest,
        "stored_s_gb": per_gb,
        "busy": (stored["client_cores"] + stored["server_cores"]) / cpus,
        "cpus": cpus,
    }
