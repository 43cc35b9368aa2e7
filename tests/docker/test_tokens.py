"""A token that starts with ``-`` through every command of the compose files, run as processes.

``secrets.token_urlsafe`` (the README's way to make the token) starts with ``-`` 1 time in 64.
The one-shot services pass it as ``--token="$(cat /run/secrets/…)"``: one word, so no parser can
take it for an option. Here their shell commands run as written, with only the secret's path and
the server's URL pointed at a real ``batchstash serve`` that requires the token for reads too.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batchstash.client import demo

from .test_deploy import (
    COMPOSE,
    GPU_OVERRIDE,
    REPO,
    VENV_BIN,
    command_argv,
    free_port,
    parse_cli,
    service,
)

DASH_TOKEN = "-Rk3_9token-that-starts-with-a-dash"
SECRET = "/run/secrets/stash_token"
IN_NETWORK_URL = "http://stash:8000"


def commands() -> dict[str, str]:
    """The shell command (``sh -c`` argument, ``$$`` unescaped) of every token-passing service."""
    found = {}
    for path in (COMPOSE, GPU_OVERRIDE):
        for name, svc in yaml.safe_load(path.read_text())["services"].items():
            cmd = [part.replace("$$", "$") for part in svc.get("command") or []]
            if cmd[:2] == ["sh", "-c"] and SECRET in cmd[2]:
                found[f"{path.name}:{name}"] = cmd[2]
    return found


def localize(command: str, secret: Path, url: str = IN_NETWORK_URL) -> str:
    return command.replace(SECRET, str(secret)).replace(IN_NETWORK_URL, url)


def argv_of(command: str, secret: Path, tmp_path: Path) -> list[str]:
    """What ``sh -c command`` runs: the programs are stubs that print their argv as JSON."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for program in ("python", "batchstash"):
        stub = stubs / program
        stub.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
            "'import json, sys; print(json.dumps(sys.argv[1:]))' " + program + ' "$@"\n'
        )
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", "-c", localize(command, secret)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    argv: list[str] = json.loads(result.stdout)
    return argv


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "stash_token"
    path.write_text(DASH_TOKEN + "\n")  # as the README writes it: print() adds the newline
    return path


def test_every_token_passing_command_is_found() -> None:
    assert set(commands()) == {
        "compose.yaml:prime",
        "compose.yaml:trainer",
        "compose.gpu.yaml:trainer",
    }


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_shell_hands_the_whole_token_to_the_parser(
    name: str, secret: Path, tmp_path: Path
) -> None:
    argv = argv_of(commands()[name], secret, tmp_path)
    assert f"--token={DASH_TOKEN}" in argv
    if argv[0] == "batchstash":
        assert parse_cli(argv).params["token"] == DASH_TOKEN
    else:
        assert argv[:3] == ["python", "-m", "batchstash.client.demo"]
        # the demo's own parser, without main()'s rewriting of a separate --token value
        assert demo._parser().parse_args(argv[3:]).token == DASH_TOKEN


@pytest.mark.parametrize("command", ["prime", "status", "clear", "cancel", "serve"])
def test_the_cli_takes_a_dash_token_in_every_form(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv in (["--token", DASH_TOKEN], [f"--token={DASH_TOKEN}"]):
        assert parse_cli(["batchstash", command, *argv]).params["token"] == DASH_TOKEN
    if command != "serve":  # serve reads BATCHSTASH_TOKEN through its settings
        monkeypatch.setenv("BATCHSTASH_TOKEN", DASH_TOKEN)
        assert parse_cli(["batchstash", command]).params["token"] == DASH_TOKEN


def test_compose_checks_see_the_joined_form() -> None:
    for name in ("prime", "trainer"):
        argv = command_argv(service(name))
        assert f"--token=$(cat {SECRET})" in argv, name


@pytest.fixture
def server(tmp_path: Path, secret: Path) -> Iterator[str]:
    """The image's CMD with the stash service's environment; reads need the token too."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env.update(
        BATCHSTASH_DATA_DIR=str(tmp_path / "data"),
        BATCHSTASH_PORT=str(port),
        BATCHSTASH_DATA_PORT=str(free_port()),
        BATCHSTASH_TOKEN_FILE=str(secret),
        BATCHSTASH_READ_REQUIRES_TOKEN="true",
        PATH=os.pathsep.join([VENV_BIN, env.get("PATH", "")]),
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(VENV_BIN) / "batchstash"), "serve"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_service(command: str, secret: Path, url: str, **kwargs: Any) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env["PATH"] = os.pathsep.join([VENV_BIN, env.get("PATH", "")])
    result = subprocess.run(
        ["sh", "-c", localize(command, secret, url)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
        **kwargs,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_prime_and_trainer_services_run_with_a_dash_token(server: str, secret: Path) -> None:
    assert httpx.get(f"{server}/v1/splits", timeout=5).status_code == 401
    run_service(commands()["compose.yaml:prime"], secret, server)
    trainer = commands()["compose.yaml:trainer"].replace("--epochs 30", "--epochs 3")
    out = run_service(trainer, secret, server)
    assert "epoch   3/3" in out and "final test accuracy" in out
