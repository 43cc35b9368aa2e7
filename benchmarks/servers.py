"""Real servers on loopback: start ``batchstash serve`` (or another app) as a subprocess, prime it.

Every server binds 127.0.0.1 on a free port, is waited for on ``/healthz`` and is always
terminated by its PID when its ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .procstat import memory

__all__ = [
    "REPO_ROOT",
    "Server",
    "batchstash_server",
    "free_port",
    "prime",
    "stop",
    "subprocess_server",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DATASET = "benchmarks.synthetic:factory"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable (for ``benchmarks.*`` factories)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class Server:
    """A running server subprocess."""

    url: str
    pid: int
    log: Path

    def memory(self) -> dict[str, int]:
        """The server process's current and peak RSS in bytes."""
        return memory(self.pid)


def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path | None,
    timeout: float,
    probe: str = "/healthz",
) -> None:
    """Wait until the server ``proc`` answers ``probe`` with 200 (its log's tail if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "" if log is None else log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}{probe}", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not answering {probe} after {timeout}s (log: {log})")


@contextmanager
def subprocess_server(
    argv: Sequence[str], port: int, log: Path, env: dict[str, str], timeout: float = 60.0
) -> Iterator[Server]:
    """Run ``argv`` (a server on ``127.0.0.1:port``) until the block ends, then stop its PID."""
    url = f"http://{HOST}:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    try:
        wait_healthy(url, proc, log, timeout)
        yield Server(url, proc.pid, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process this suite started, by its PID; kill it if it does not stop."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def batchstash_server(
    data_dir: Path, options: dict[str, Any], log: Path, workers: int = 1, **env_extra: str
) -> Iterator[Server]:
    """Serve the synthetic dataset (factory keyword arguments ``options``) from ``data_dir``.

    ``env_extra``: more environment variables (settings such as ``BATCHSTASH_DATA_SENDFILE``).
    """
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "from batchstash.service.cli import main; main()",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--dataset",
        DATASET,
        "--workers",
        str(workers),
        "--no-prime",
    ]
    # a free data port of its own: ``port + 1`` (the default) may be a client's ephemeral port
    data_port = free_port()
    while data_port == port:
        data_port = free_port()
    env = child_env(
        BATCHSTASH_DATASET_OPTIONS=json.dumps(options),
        BATCHSTASH_LOG_LEVEL="warning",
        BATCHSTASH_DATA_PORT=str(data_port),
        **env_extra,
    )
    with subprocess_server(argv, port, log, env) as server:
        yield server


def auto_way(url: str) -> str:
    """How a server under ``data_sendfile=auto`` sends stored files now."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('batchstash_data_sendfile{setting="auto"}'):
            return {1: "sendfile", 0: "mapped pages"}.get(
                int(float(line.split()[-1])), "still measuring"
            )
    return "no choice (data_sendfile is not auto)"


def prime(url: str, timeout: float) -> dict[str, Any]:
    """Prime through ``POST /v1/admin/prime`` and poll the status until the job ends.

    The status (its progress moves with the job's heartbeat, every 0.5 s) is polled every
    0.5 s; until then, train batch 0 (the first a prime encodes) is asked for every 10 ms, so
    ``first_batch_s`` is when a trainer could first read a batch.

    Returns:
        ``batches`` encoded, ``wall_s`` (the job's own start to finish), ``rate`` (batches/s over
        that), ``steady_rate`` (batches/s from the first stored batch on: worker start-up left
        out), ``first_batch_s`` (from the request to a status showing a stored batch) and
        ``already`` (batches found stored).
    """
    with httpx.Client(base_url=url, timeout=30.0) as http:
        before = http.get("/v1/admin/status").json()
        initial = sum(s["done"] for s in before["splits"].values())
        requested = time.monotonic()
        http.post("/v1/admin/prime").raise_for_status()
        first_batch_s = None
        while first_batch_s is None and time.monotonic() - requested < timeout:
            code = http.get("/v1/splits/train/batches/0").status_code
            if code == 200:
                first_batch_s = time.monotonic() - requested
            elif code != 503:  # no such batch: not measured
                break
            else:
                time.sleep(0.01)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            body = http.get("/v1/admin/status").json()
            done = sum(s["done"] for s in body["splits"].values())
            samples.append((time.monotonic(), done))
            if body["state"] != "running":
                break
            if time.monotonic() > deadline:
                http.delete("/v1/admin/prime")
                raise RuntimeError(f"prime not done after {timeout}s: {body}")
            time.sleep(0.5)  # a status call walks the store: poll gently
    if body["state"] != "done":
        raise RuntimeError(f"prime ended {body['state']}: {body.get('error')}")
    total = sum(s["total"] for s in body["splits"].values())
    wall = float(body["finished_at"] - body["started_at"])
    encoded = total - initial
    first = next(((t, d) for t, d in samples if d > initial), None)
    steady = None
    if first is not None and samples[-1][0] > first[0] and samples[-1][1] > first[1]:
        steady = (samples[-1][1] - first[1]) / (samples[-1][0] - first[0])
    return {
        "batches": encoded,
        "already": initial,
        "wall_s": wall,
        "rate": encoded / wall if wall > 0 and encoded else None,
        "steady_rate": steady,
        "first_batch_s": first_batch_s,
    }
