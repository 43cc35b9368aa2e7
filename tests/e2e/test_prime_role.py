"""Role ``prime``: a one-shot job that primes the store (a directory or S3) and exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchstash.service.examples import iris

from .conftest import REPO_ROOT

CLI = str(Path(sys.executable).with_name("batchstash"))

pytestmark = pytest.mark.slow


def run_prime(
    store: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    environ["PYTHONPATH"] = str(REPO_ROOT)
    environ.update(env or {})
    return subprocess.run(
        [CLI, "serve", "--role", "prime", "--data-dir", store, "--workers", "0", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_the_prime_role_primes_once_and_exits(backend, tmp_path, request) -> None:
    store = (
        str(tmp_path / "store")
        if backend == "local"
        else request.getfixturevalue("s3_bucket") + "/p"
    )
    done = run_prime(store)
    assert done.returncode == 0, done.stderr
    assert "prime done: 9 batches encoded" in done.stderr
    stash = iris(path=store)
    assert stash.is_primed and stash.split_counts()["train"]["stored"] == 6

    again = run_prime(store)  # idempotent: everything verifies, nothing is encoded
    assert again.returncode == 0 and "prime done: 0 batches encoded" in again.stderr

    stale = run_prime(store, env={"BATCHSTASH_DATASET_OPTIONS": '{"batch_size": 7}'})
    assert stale.returncode == 1
    errors = [line for line in stale.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "store_stale" in errors[0]
    assert "Traceback" not in stale.stderr
