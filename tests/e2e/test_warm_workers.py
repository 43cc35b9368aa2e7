"""A server keeps its priming workers warm between primes, and they stop with it.

The workers are the server's spawned children (``multiprocessing.spawn``); the resource tracker,
also a child, is left out.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Server, start_server

pytestmark = pytest.mark.slow


def workers_of(pid: int) -> set[int]:
    """The priming workers among the children of ``pid`` (from ``/proc``)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                found.add(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def prime(server: Server) -> None:
    """Clear the store, prime it and wait until it is done."""
    httpx.post(f"{server.url}/v1/admin/clear", headers=server.admin(), timeout=30)
    response = httpx.post(f"{server.url}/v1/admin/prime", headers=server.admin(), timeout=30)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while True:
        status = httpx.get(f"{server.url}/v1/admin/status", headers=server.admin()).json()
        if status["state"] == "done":
            return
        assert status["state"] == "running" and time.monotonic() < deadline, status
        time.sleep(0.1)


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


def test_a_second_prime_reuses_the_workers_and_they_stop_with_the_server(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path / "data", tmp_path / "server.log", "--workers", "2")
    try:
        prime(server)
        first = workers_of(server.process.pid)
        assert len(first) == 2, first
        prime(server)  # a new plan and generation; the same dataset
        assert workers_of(server.process.pid) == first  # warm: not spawned again
    finally:
        server.stop()
    assert wait_gone(first, 10) == set(), "workers outlived a stopped server"


def test_warm_workers_die_with_a_killed_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", tmp_path / "server.log", "--workers", "2")
    try:
        prime(server)
        warm = workers_of(server.process.pid)
        assert len(warm) == 2
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        assert wait_gone(warm, 10) == set(), "idle workers outlived a killed server"
    finally:
        server.stop()
