"""``log_format=json`` on a real server: every line it writes is one JSON object."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import CLI, Server, start_server

pytestmark = pytest.mark.slow

WARNING = "tests.e2e.factories:warning_iris"
JSON_ENV = {"BATCHSTASH_LOG_FORMAT": "json"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as JSON, checking the fields every line has."""
    lines = text.splitlines()
    assert lines
    records = []
    for line in lines:
        body = json.loads(line)  # a line that is not JSON fails here
        assert isinstance(body, dict), line
        assert {"time", "level", "logger", "message"} <= set(body), line
        assert datetime.fromisoformat(body["time"]).utcoffset() == timedelta(0), line
        records.append(body)
    return records


def wait_primed(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not httpx.get(f"{server.url}/v1/splits").json()["primed"]:
        assert time.monotonic() < deadline, "the server did not prime"
        time.sleep(0.2)


def test_a_json_server_writes_json_lines_only_uvicorns_and_its_workers_too(
    serve: Callable[..., Server],
) -> None:
    server = serve(
        "--dataset",
        WARNING,
        "--workers",
        "1",
        "--prime",
        env={**JSON_ENV, "BATCHSTASH_ACCESS_LOG": "true"},
    )
    wait_primed(server)
    assert httpx.get(f"{server.url}/v1/splits/train/batches/0").status_code == 200
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")  # uvicorn logs the refused request
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    server.stop()
    records = json_lines(server.log.read_text())

    summary = [r for r in records if r["logger"] == "batchstash.service.api.app"]
    assert len(summary) == 1 and summary[0]["message"].startswith("batchstash 127.0.0.1:")
    fields = summary[0]
    assert fields["address"] == f"127.0.0.1:{address.port}" and fields["role"] == "all"
    assert fields["store"] == str(server.data_dir) and len(fields["fingerprint"]) == 12
    assert fields["dataset"] == WARNING and fields["token"] is True and fields["workers"] == 1
    assert fields["primed"] is False and fields["executor"] == "process"

    done = [r for r in records if r["message"].startswith("prime done")]
    assert [(r["encoded"], r["stored"]) for r in done] == [(9, 9)]
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(
        r["path"] == "/v1/splits/train/batches/0" and r["status"] == 200 and r["method"] == "GET"
        for r in access
    )
    uvicorn = {r["message"] for r in records if r["logger"] == "uvicorn.error"}
    assert {"Application startup complete.", "Invalid HTTP request received."} <= uvicorn
    # a warning of the dataset's code, in the spawned priming worker, is a JSON line too
    warned = [r for r in records if r["logger"] == "py.warnings"]
    assert warned and "flower dims look odd" in warned[0]["message"]


def test_a_json_prime_job_logs_progress_fields_and_fails_in_json(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **JSON_ENV}
    primed = subprocess.run(
        [CLI, "serve", "--role", "prime", "--data-dir", str(tmp_path / "store"), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert primed.returncode == 0, primed.stderr
    assert primed.stdout == ""
    records = json_lines(primed.stderr)
    progress = [(r["split"], r["done"], r["total"]) for r in records if "split" in r]
    assert progress == [("train", 6, 6), ("dev", 1, 1), ("test", 2, 2)]
    assert records[-1]["message"].startswith("prime done") and records[-1]["encoded"] == 9

    (tmp_path / "a-file").write_text("")
    failed = subprocess.run(
        [CLI, "serve", "--role", "prime", "--data-dir", str(tmp_path / "a-file")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert failed.returncode == 1
    [error] = json_lines(failed.stderr)
    assert error["level"] == "ERROR" and error["code"] == "store_error"
    assert "is not a directory" in error["message"]


def test_the_text_format_is_the_default(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", tmp_path / "server.log", "--workers", "0")
    server.stop()
    lines = server.log.read_text().splitlines()
    assert any(" INFO batchstash.service.api.app: batchstash 127.0.0.1:" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
