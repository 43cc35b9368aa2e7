"""The README's bring-your-own-data tutorial, run verbatim: its files, a server per factory.

``digits_files.py`` writes the Parquet file and the ``datasets`` folder; ``my_digits.py`` is
served by ``batchstash serve --dataset my_digits:<factory> --prime`` (as the README's command
does, with 2 priming workers that rebuild the dataset from the factory); ``digits_train.py``
trains on the served batches and must learn the digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..test_readme import REPO, TUTORIAL_BLOCKS
from .conftest import start_server

pytestmark = pytest.mark.slow

FACTORIES = ("from_dataframe", "from_parquet", "from_huggingface")


def run(path: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env["BATCHSTASH_CACHE_DIR"] = str(cwd / "cache")
    return subprocess.run(
        [sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the tutorial's three files and the data ``digits_files.py`` made."""
    root = tmp_path_factory.mktemp("digits")
    for name, code in TUTORIAL_BLOCKS.items():
        (root / name).write_text(code)
    done = run(root / "digits_files.py", root)
    assert done.returncode == 0, done.stderr
    assert (root / "digits.parquet").is_file() and (root / "digits_hf" / "train").is_dir()
    yield root


def test_the_readme_serves_the_tutorial_as_the_tests_do() -> None:
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/batchstash serve --dataset my_digits:from_parquet --prime" in readme
    assert ".venv/bin/python digits_files.py" in readme
    factories = re.findall(r"^def (from_\w+)\(", TUTORIAL_BLOCKS["my_digits.py"], re.M)
    assert tuple(factories) == FACTORIES


@pytest.mark.parametrize("factory", FACTORIES)
def test_each_factory_is_served_primed_and_trained_on(project: Path, factory: str) -> None:
    data = project / f"data-{factory}"
    server = start_server(
        data,
        project / f"{factory}.log",
        "--dataset",
        f"my_digits:{factory}",
        "--prime",
        "--workers",
        "2",
        env={"BATCHSTASH_CACHE_DIR": str(project / "cache")},
    )
    try:
        script = project / f"train-{factory}.py"
        code = TUTORIAL_BLOCKS["digits_train.py"].replace("http://127.0.0.1:8000", server.url)
        script.write_text(code)
        done = run(script, project)
        assert done.returncode == 0, done.stderr + server.log.read_text()
        accuracy = float(done.stdout.split()[-1])
        assert accuracy >= 0.85, done.stdout  # 10 epochs of an MLP learn the digits
        splits = httpx.get(f"{server.url}/v1/splits").json()
        assert splits["primed"]
        points = {name: s["data_points"] for name, s in splits["splits"].items()}
        assert sum(points.values()) == 1797 and set(points) == {"train", "test"}
        assert 350 <= points["test"] <= 370  # a fifth of the digits
    finally:
        server.stop()
