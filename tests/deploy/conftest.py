"""The deployment suite's engine: ``docker build`` and ``docker compose`` against a real engine.

Every test here is marked ``deploy`` and runs only when asked for (``pytest -m deploy``, see
tests/conftest.py); where no Docker engine with Compose v2 answers, the whole directory is skipped
with one line. Stacks run under project names of their own, with their secrets in a temporary
directory (an override file points the compose secrets there), so a checkout's own
``docker/secrets`` and stacks are never touched. Both stacks publish 8000 and 8001 on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HOST_PORTS = (8000, 8001)
# the stand-in engines of ../shared/tools/docker-sandbox.sh reach their wheel server only from
# the host's network; compose then reuses that build's layers with the classic builder
ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def run(
    argv: list[str], timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


@cache
def engine_problem() -> str | None:
    """Why the suite cannot run here (None: an engine and Compose v2 answer)."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        if run(["docker", "info", "--format", "{{.ServerVersion}}"], 30, False).returncode != 0:
            return "no Docker engine reachable (docker info failed)"
        version = run(["docker", "compose", "version", "--short"], 30, False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2"):
        return "no Compose v2 (docker compose)"
    for port in HOST_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return f"host port {port} is in use (the stacks publish 8000 and 8001)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = [item for item in items if Path(str(item.path)).is_relative_to(HERE)]
    if here and (problem := engine_problem()) is not None:
        for item in here:
            item.add_marker(pytest.mark.skip(reason=f"deploy suite: {problem}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """One summary line for the whole skipped suite: every skip is told at this file."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and isinstance(report.longrepr, tuple)
        and Path(str(item.path)).is_relative_to(HERE)
    ):
        _, _, reason = report.longrepr
        if reason.startswith("Skipped: deploy suite: "):
            report.longrepr = (str(Path(__file__).relative_to(REPO)), None, reason)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Build the images both compose files name (their build args), on the host's network."""
    built: dict[str, str] = {}
    for path in ("compose.yaml", "compose.scale.yaml"):
        for svc in yaml.safe_load((REPO / path).read_text())["services"].values():
            build, tag = svc.get("build"), svc.get("image")
            if not build or tag in built:
                continue
            args = [f"--build-arg={k}={v}" for k, v in (build.get("args") or {}).items()]
            dockerfile = build["dockerfile"]
            run(
                [
                    "docker",
                    "build",
                    "--network",
                    "host",
                    "-q",
                    "-f",
                    dockerfile,
                    *args,
                    "-t",
                    tag,
                    ".",
                ],
                1800,
            )
            built[tag] = dockerfile
    return built


@dataclass
class Stack:
    """One compose project: ``docker compose -p NAME -f FILE -f OVERRIDE ...``."""

    name: str
    files: list[Path]
    profiles: list[str] = field(default_factory=list)
    token: str = ""

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.name]
        argv += [a for f in self.files for a in ("-f", str(f))]
        argv += [a for p in self.profiles for a in ("--profile", p)]
        return run([*argv, *args], timeout, check)

    def container(self, service: str, index: int = 1) -> str:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        assert ids, f"no container of {service}"
        names = [self.inspect(i)["Name"].lstrip("/") for i in ids]
        (chosen,) = [n for n in names if n.endswith(f"-{index}")]
        return chosen

    def inspect(self, container: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(run(["docker", "inspect", container]).stdout)[0]
        return info

    def logs(self, container: str) -> str:
        result = run(["docker", "logs", container], 60)
        return result.stdout + result.stderr

    def wait_exit(self, container: str, timeout: float) -> int:
        return int(run(["docker", "wait", container], timeout).stdout.strip())

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)

    def healthy(self, container: str) -> bool:
        state = self.inspect(container)["State"]
        return bool(state.get("Health", {}).get("Status") == "healthy")

    def resources(self, kind: str) -> set[str]:
        """The containers, volumes or networks of this project, by the label compose gives them."""
        label = f"label=com.docker.compose.project={self.name}"
        command = {
            "container": ["ps", "-a"],
            "volume": ["volume", "ls"],
            "network": ["network", "ls"],
        }
        return set(run(["docker", *command[kind], "-q", "--filter", label]).stdout.split())


def make_secrets(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    """Secret files as the README makes them (with a final newline), readable by uid 10001."""
    paths = {}
    for name, value in names.items():
        path = folder / f"{name}.txt"
        path.write_text(value + "\n")
        path.chmod(0o644)
        paths[name] = path
    return paths


def override(folder: Path, secret_files: dict[str, Path], services: dict[str, Any]) -> Path:
    path = folder / "override.yaml"
    body = {
        "secrets": {name: {"file": str(p)} for name, p in secret_files.items()},
        "services": services,
    }
    path.write_text(yaml.safe_dump(body))
    return path


def dash_token() -> str:
    """A URL-safe token that starts with "-", as secrets.token_urlsafe gives 1 time in 64."""
    return "-" + secrets.token_urlsafe(32)[1:]


def all_volumes() -> set[str]:
    return set(run(["docker", "volume", "ls", "-q"]).stdout.split())


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client
