"""Shared fixtures: temporary store paths, example stashes, an environment for spawned workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _importable_tests() -> Iterator[None]:
    """Let spawned priming workers import ``tests.*`` factories, however pytest was started."""
    with pytest.MonkeyPatch.context() as mp:
        current = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), current) if p))
        mp.syspath_prepend(str(REPO_ROOT))
        yield


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A store directory that does not exist yet."""
    return tmp_path / "store"


@pytest.fixture
def make_iris(tmp_path: Path) -> Callable[..., Any]:
    """Build the iris example stash under ``tmp_path`` (``name`` picks a sub-directory)."""
    from batchstash.service.examples import iris

    def make(name: str = "iris", **kwargs: Any) -> Any:
        return iris(path=str(tmp_path / name), **kwargs)

    return make


@pytest.fixture
def make_text(tmp_path: Path) -> Callable[..., Any]:
    """Build the text example stash under ``tmp_path`` (``name`` picks a sub-directory)."""
    from batchstash.service.examples import text

    def make(name: str = "text", **kwargs: Any) -> Any:
        return text(path=str(tmp_path / name), **kwargs)

    return make


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto in server mode) on loopback, for the whole session.

    The standard AWS variables point at it, in this process and in every process it starts
    (priming workers, servers), as they would at any S3-compatible store.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "batchstash-test",
            "AWS_SECRET_ACCESS_KEY": "batchstash-test",
            "AWS_REGION": "us-east-1",
        }.items():
            mp.setenv(key, value)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket for one test; returns its ``s3://`` URL."""
    import re
    import secrets

    import httpx

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{name}-{secrets.token_hex(3)}"
    httpx.put(f"{s3_endpoint}/{bucket}").raise_for_status()  # moto checks no signature here
    return f"s3://{bucket}"


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a directory, and a prefix in a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


OPT_IN = ("deploy", "netlab")
"""Markers whose tests run only when a ``-m`` expression names them (``pytest -m deploy``)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the opt-in suites unless asked for: they take minutes and a Docker engine or root.

    The README's plain ``pytest -q`` deselects them, even where an engine answers or it runs as
    root; ``pytest -m deploy`` or ``-m netlab`` selects them.
    """
    asked = config.option.markexpr or ""
    skipped = [name for name in OPT_IN if name not in asked]

    def left_out(item: pytest.Item) -> bool:
        return any(item.get_closest_marker(name) is not None for name in skipped)

    dropped = [item for item in items if left_out(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not left_out(item)]
