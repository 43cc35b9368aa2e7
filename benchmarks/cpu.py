"""CPU accounting of a load run: a process tree's CPU seconds from ``/proc``, a process's own.

* The server side (a server, or the ceiling's sender): the pid and all its descendants, found by
  walking ``/proc/*/stat`` for their parent pids; each contributes ``utime + stime`` (all its
  threads) plus ``cutime + cstime`` (its children that exited and were reaped, so a child that
  ends inside the run is neither lost nor counted twice). A delta of two samples is the run's.
* The consumer side: each consumer process's ``resource.getrusage(RUSAGE_SELF)`` user + system
  delta over its run (all its threads), summed over consumers.

:func:`usage` turns both into CPU seconds per GB moved and cores busy, and names the side that
limits the run.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["parse_stat", "self_cpu_seconds", "tree_cpu", "tree_delta", "usable_cpus", "usage"]

TICK = os.sysconf("SC_CLK_TCK")
MACHINE_SHARE = 0.9
"""A run whose two sides together keep this share of the usable CPUs busy is machine-bound."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; 1 where the platform cannot say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def parse_stat(text: str) -> tuple[int, float]:
    """Return ``(ppid, CPU seconds)`` of one ``/proc/<pid>/stat`` line.

    The command name (field 2) may hold spaces and parentheses: fields are counted after the
    last ``)``. CPU seconds are ``utime + stime + cutime + cstime`` (fields 14 to 17).
    """
    fields = text.rsplit(")", 1)[1].split()
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])
    return ppid, ticks / TICK


def _all_stats() -> dict[int, tuple[int, float]]:
    stats = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(path.parent.name)] = parse_stat(path.read_text())
        except (OSError, ValueError, IndexError):  # the process ended while we walked
            continue
    return stats


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each of its descendants now, by pid (empty if it is gone)."""
    stats = _all_stats()
    if pid not in stats:
        return {}
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(child)
    tree, todo = {}, [pid]
    while todo:
        current = todo.pop()
        tree[current] = stats[current][1]
        todo.extend(children.get(current, ()))
    return tree


def tree_delta(before: dict[int, float], after: dict[int, float]) -> tuple[float, int]:
    """CPU seconds between two :func:`tree_cpu` samples, and how many processes used any."""
    deltas = [cpu - before.get(pid, 0.0) for pid, cpu in after.items()]
    return sum(deltas), sum(1 for d in deltas if d > 0)


def self_cpu_seconds() -> float:
    """This process's user + system CPU seconds so far (every thread)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _per_gb(seconds: float | None, size: int) -> float | None:
    return None if seconds is None or size <= 0 else seconds / (size / 1e9)


def _cores(seconds: float | None, wall: float) -> float | None:
    return None if seconds is None or wall <= 0 else seconds / wall


def _limit(
    server: float | None, server_procs: int, client: float | None, consumers: int, usable: int
) -> str | None:
    """``machine``, ``server`` or ``client``: the side nearer to a full core per process."""
    if server is None or client is None:
        return None
    if server + client >= MACHINE_SHARE * usable:
        return "machine"
    return "server" if server / max(1, server_procs) >= client / max(1, consumers) else "client"


def usage(
    server: tuple[float, int] | None,
    client_seconds: Iterable[float],
    consumers: int,
    size: int,
    wall: float,
    usable: int | None = None,
) -> dict[str, Any]:
    """CPU columns of one run.

    Args:
        server: the server side's CPU seconds over the run and its busy processes
            (:func:`tree_delta`), ``None`` when not measured.
        client_seconds: each consumer's CPU seconds over its run.
        consumers: consumer processes.
        size: tensor bytes moved.
        wall: the run's wall time.
        usable: the CPUs this machine lets the run use (default: this process's affinity).

    Returns:
        ``server_cpu_s``, ``client_cpu_s``, CPU seconds per GB (10^9 bytes) of each side
        (``server_s_gb``, ``client_s_gb``), cores busy (``server_cores``, ``client_cores``) and
        ``limit``.
    """
    server_s, procs = server if server is not None else (None, 0)
    client_s = sum(client_seconds)
    server_cores, client_cores = _cores(server_s, wall), _cores(client_s, wall)
    if usable is None:
        usable = usable_cpus()
    return {
        "server_cpu_s": server_s,
        "client_cpu_s": client_s,
        "server_s_gb": _per_gb(server_s, size),
        "client_s_gb": _per_gb(client_s, size),
        "server_cores": server_cores,
        "client_cores": client_cores,
        "limit": _limit(server_cores, procs, client_cores, consumers, usable),
    }
