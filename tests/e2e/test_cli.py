"""The ``batchstash`` command against a real server, and its one-line errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import httpx
import pytest

from .conftest import CLI, TOKEN, Server

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"})


def test_prime_wait_status_clear(serve: Callable[..., Server]) -> None:
    server = serve("--workers", "1")
    auth = ("--url", server.url, "--token", TOKEN)
    status = run("status", *auth)
    assert status.returncode == 0, status.stderr
    assert "idle" in status.stdout and "train" in status.stdout
    primed = run("prime", "--wait", *auth)
    assert primed.returncode == 0, primed.stderr
    assert "prime done" in primed.stdout
    assert httpx.get(f"{server.url}/v1/splits").json()["primed"] is True
    status = run("status", *auth)
    assert "done" in status.stdout and "6" in status.stdout
    cleared = run("clear", *auth)
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    assert httpx.get(f"{server.url}/v1/splits").json()["splits"]["train"]["stored"] == 0


def test_operator_errors_are_one_line(serve: Callable[..., Server]) -> None:
    server = serve("--workers", "0")
    denied = run("clear", "--url", server.url, "--token", "wrong")
    assert denied.returncode == 1
    assert denied.stderr.strip().count("\n") == 0 and "bearer token" in denied.stderr
    unreachable = run("status", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "70000"), "port"),
        (("--dataset", "no_such_module:factory"), "cannot import dataset factory"),
        (("--dataset", "not-a-spec"), "package.module:function"),
        (("--config", "/nonexistent/batchstash.toml"), "does not exist"),
    ],
)
def test_serve_rejects_bad_settings_in_one_line(args: tuple[str, ...], message: str) -> None:
    result = run("serve", "--data-dir", "/tmp/batchstash-never-created", *args, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.strip().count("\n") == 0
