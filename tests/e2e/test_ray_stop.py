"""A server priming with ``executor=ray`` leaves nothing of Ray behind when it is stopped."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from batchstash.service.prime.processes import process_tree, start_time

from .conftest import Server, prime_and_wait

pytestmark = pytest.mark.slow

AFTER_S = 5.0
"""How long Ray's processes may outlive the server that started them."""


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        return ""


def _alive(tree: dict[int, int]) -> dict[int, int]:
    """The processes of ``tree`` (pid -> start time) still running as themselves."""
    return {pid: start for pid, start in tree.items() if start_time(pid) == start}


@pytest.mark.parametrize("when", ["priming", "primed"])
def test_stopping_a_ray_server_stops_every_ray_process(
    serve: Callable[..., Server], when: str
) -> None:
    pytest.importorskip("ray")
    batches = 3000 if when == "priming" else 20
    env = {
        "BATCHSTASH_DATASET": "benchmarks.synthetic:factory",
        "BATCHSTASH_DATASET_OPTIONS": f'{{"batches": {batches}, "rows": 64, "dims": 512}}',
    }
    server = serve("--executor", "ray", "--workers", "1", env=env)
    response = httpx.post(f"{server.url}/v1/admin/prime", headers=server.admin(), timeout=10)
    assert response.status_code == 202, response.text
    tree: dict[int, int] = {}  # every process the server started, seen while under it
    names: dict[int, str] = {}  # as each last called itself (agents set their titles late)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen = process_tree(server.process.pid, include_root=False)
        tree.update(seen)
        names.update((pid, name) for pid in tree if (name := _name(pid)))
        state = httpx.get(f"{server.url}/v1/admin/status", headers=server.admin()).json()
        if state["state"] != "running" or (
            when == "priming" and state["splits"]["train"]["done"] >= 10
        ):
            break
        time.sleep(0.2)
    assert state["state"] == ("running" if when == "priming" else "done"), state
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(names.values()), names
    try:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        stopped = time.monotonic()
        while _alive(tree) and time.monotonic() - stopped < 30:
            time.sleep(0.2)
        lingered = time.monotonic() - stopped
        assert not _alive(tree), f"{len(_alive(tree))} Ray processes outlived the server"
        assert lingered < AFTER_S, f"Ray's processes outlived the server by {lingered:.1f} s"
    finally:
        for pid in _alive(tree):  # only processes the server this test started made
            os.kill(pid, signal.SIGKILL)


def _prime(server: Server) -> dict[str, object]:
    return prime_and_wait(server, timeout=180)


def test_the_servers_ray_outlives_a_prime_and_runs_the_next(serve: Callable[..., Server]) -> None:
    pytest.importorskip("ray")
    env = {
        "BATCHSTASH_DATASET": "benchmarks.synthetic:factory",
        "BATCHSTASH_DATASET_OPTIONS": '{"batches": 12, "rows": 64, "dims": 512}',
    }
    server = serve("--executor", "ray", "--workers", "1", env=env)
    assert _prime(server)["state"] == "done"
    time.sleep(1)
    ray = process_tree(server.process.pid, include_root=False)
    assert len(_alive(ray)) >= 3  # the prime's thread ended, its Ray did not
    response = httpx.post(f"{server.url}/v1/admin/clear", headers=server.admin(), timeout=30)
    assert response.status_code == 200, response.text
    assert _prime(server)["state"] == "done"  # on the same Ray
    assert set(_alive(ray)) == set(ray)
