"""The ``batchstash`` command against a real server, and its one-line errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import httpx
import pytest

from .conftest import CLI, REPO_ROOT, TOKEN, Server

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )


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


def run_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", **env},
    )


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"BATCHSTASH_DATASET_OPTIONS": "{bad"}, (), "dataset_options"),
        ({"BATCHSTASH_DATASET_OPTIONS": '{"nope": 1}'}, (), "does not take these options (nope"),
        ({"BATCHSTASH_LOG_LEVEL": "loud"}, (), "log_level"),
        ({}, ("--dataset", "tests.e2e.factories:no_such_factory"), "cannot import dataset factory"),
    ],
    ids=["options-not-json", "unknown-option", "log-level", "no-such-factory"],
)
def test_config_mistakes_are_one_line(env, args, message, tmp_path) -> None:
    result = run_env(
        {"PYTHONPATH": str(REPO_ROOT), **env}, "serve", "--data-dir", str(tmp_path / "d"), *args
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_a_bad_toml_file_and_a_data_dir_that_is_a_file_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    result = run_env({}, "serve", "--config", str(bad))
    assert result.returncode == 1 and "is not valid TOML" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_env({}, "serve", "--data-dir", str(blocker))
    assert result.returncode == 1 and "exists and is not a directory" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_a_factory_in_the_working_directory_imports_without_pythonpath(tmp_path) -> None:
    (tmp_path / "my_data.py").write_text(
        "from batchstash.service.examples import iris\n"
        "def factory(path):\n    return iris(path=path, batch_size=50)\n"
    )
    result = subprocess.run(
        [
            CLI,
            "serve",
            "--role",
            "prime",
            "--workers",
            "0",
            "--dataset",
            "my_data:factory",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "prime done: 5 batches encoded" in result.stderr


def test_the_cli_basics(tmp_path) -> None:
    version = run_env({}, "--version")
    assert version.returncode == 0 and version.stdout.startswith("batchstash ")
    no_scheme = run_env({}, "status", "--url", "127.0.0.1:8000")
    assert no_scheme.returncode == 1 and "must look like http://host:port" in no_scheme.stderr
