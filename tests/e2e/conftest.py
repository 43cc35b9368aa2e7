"""A real ``batchstash serve`` process on 127.0.0.1 with a temporary data dir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token"
CLI = str(Path(sys.executable).with_name("batchstash"))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def admin(self) -> dict[str, str]:
        """Headers with the admin token."""
        return {"Authorization": f"Bearer {TOKEN}"}

    def stop(self) -> None:
        """Terminate the server by its PID (kill it if it does not stop)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    data_dir: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    port: int | None = None,
) -> Server:
    """Start ``batchstash serve`` (on ``port``, else a free one); wait for ``/healthz``."""
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")])
    )
    environ.update(env or {})
    command = [
        CLI,
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--token",
        TOKEN,
        *args,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=data_dir.parent
        )
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start within {timeout}s:\n{log.read_text()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (each with its own data dir); all are stopped after the test."""
    servers: list[Server] = []

    def start(*args: str, name: str = "data", **kwargs: Any) -> Server:
        server = start_server(tmp_path / name, tmp_path / f"{name}.log", *args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def prime_and_wait(server: Server, timeout: float = 120) -> dict[str, Any]:
    """Start a prime through the admin API; the status once it is no longer running."""
    response = httpx.post(f"{server.url}/v1/admin/prime", headers=server.admin(), timeout=10)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/v1/admin/status", headers=server.admin()).json()
        if state["state"] != "running":
            return dict(state)
        time.sleep(0.2)
    raise AssertionError(f"the prime did not end in {timeout:.0f} s")


@pytest.fixture(scope="module")
def primed_iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One iris server per module, primed with two workers."""
    root = tmp_path_factory.mktemp("iris")
    server = start_server(root / "data", root / "server.log", "--workers", "2")
    try:
        state = prime_and_wait(server)
        assert state["state"] == "done", state
        yield server
    finally:
        server.stop()
