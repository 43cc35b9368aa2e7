"""Process trees on Linux (``/proc``): which processes a server started, and ending them.

Ray's local cluster is processes the driver starts (GCS, raylet, log monitor) that start more
(the dashboard and runtime-env agents, workers). Those further down are re-parented when their
parent exits, and some wait a long time to notice, so the tree is taken while it is whole and
its processes are then followed by pid *and* start time (a pid reused by another program is
never touched).

A process whose shutdown may end it abruptly (Ray's driver exits when its raylet goes) hands the
tree to a watchdog (:func:`watch`): this file run as a script, on the standard library alone, in
a session of its own; it ends what is left of the tree a few seconds after the process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

__all__ = ["end_processes", "process_tree", "start_time", "watch"]

logger = logging.getLogger(__name__)


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time in clock ticks)`` of a live process.

    ``None``: gone, a zombie (it has exited; only its parent has not collected it), or no /proc.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # after the command name, which may hold spaces
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of a running process (``None``: not running)."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def process_tree(root: int, include_root: bool = True) -> dict[int, int]:
    """Every process under ``root`` (children, theirs...): pid -> start time."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
            starts[pid] = stat[1]
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, ()):
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    if include_root and root in starts:
        found[root] = starts[root]
    return found


def _running(tree: dict[int, int]) -> dict[int, int]:
    return {pid: start for pid, start in tree.items() if start_time(pid) == start}


def end_processes(tree: dict[int, int], grace_s: float = 3.0, what: str = "processes") -> int:
    """Wait up to ``grace_s`` for the processes of ``tree`` to exit, then end the rest.

    ``SIGTERM`` first, ``SIGKILL`` a second later for any still there. Returns how many had to
    be ended.
    """
    deadline = time.monotonic() + grace_s
    while (left := _running(tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        while (left := _running(left)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            break
    ended = len(tree) - len(_running(tree))
    logger.info("ended %d %s still running %.0f s after shutdown", ended, what, grace_s)
    return ended


def watch(tree: dict[int, int], grace_s: float = 2.0, wait_s: float = 10.0) -> None:
    """Start a watchdog that ends ``tree``'s processes ``grace_s`` after this process exits.

    It waits at most ``wait_s`` for this process to exit first (one that outlives its
    shutdown ends the tree itself: :func:`end_processes`). Nothing is waited for here.
    """
    if not tree:
        return
    me = os.getpid()
    args = [str(me), str(start_time(me)), str(grace_s), str(wait_s)]
    args += [f"{pid}:{start}" for pid, start in tree.items()]
    subprocess.Popen(  # noqa: S603 (our own file, our own arguments)
        [sys.executable, "-I", "-S", os.path.abspath(__file__), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to this process's group does not stop it
        close_fds=True,
    )


def _watchdog(argv: list[str]) -> None:
    """The watchdog's body: ``parent_pid parent_start grace_s wait_s pid:start...``."""
    parent, parent_start = int(argv[0]), int(argv[1]) if argv[1].isdigit() else None
    grace_s, wait_s = float(argv[2]), float(argv[3])
    tree = {int(p): int(s) for p, s in (item.split(":") for item in argv[4:])}
    deadline = time.monotonic() + wait_s
    while start_time(parent) == parent_start and time.monotonic() < deadline:
        time.sleep(0.1)
    end_processes(tree, grace_s)


if __name__ == "__main__":
    _watchdog(sys.argv[1:])
