"""Every runnable Python snippet of the README runs verbatim (a newcomer pastes them).

The docs under ``docs/`` hold no ``python`` blocks (their code is ``text`` or ``bash``), so every
``python`` block a reader meets is run here or in tests/e2e/test_frameworks.py, or is a listed
fragment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .e2e.conftest import start_server

REPO = Path(__file__).resolve().parents[1]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
ALL_BLOCKS = PYTHON_BLOCK.findall((REPO / "README.md").read_text())
# the training-framework scripts (first line "# train_*.py: how to run it") run in
# tests/e2e/test_frameworks.py, under their launchers
FRAMEWORK_BLOCKS = {
    b.split(":", 1)[0].removeprefix("# "): b for b in ALL_BLOCKS if b.startswith("# train_")
}
# the bring-your-own-data tutorial's files (first line "# digits_*.py: ..." or "# my_digits.py")
# run in tests/e2e/test_tutorial.py, against servers of each of its factories
TUTORIAL_BLOCKS = {
    b.split(":", 1)[0].removeprefix("# "): b
    for b in ALL_BLOCKS
    if b.startswith(("# digits_", "# my_digits"))
}
BLOCKS = [
    b for b in ALL_BLOCKS if not b.startswith("# train_") and b not in TUTORIAL_BLOCKS.values()
]
FRAGMENTS = {1}  # a loop body that continues the client snippet (it, checkpoint): not a program

pytestmark = pytest.mark.slow


def run(code: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_readme_has_the_snippets_this_test_knows() -> None:
    assert len(BLOCKS) == 4 and FRAGMENTS == {1}
    assert sorted(FRAMEWORK_BLOCKS) == [
        "train_accelerate.py",
        "train_dataloader.py",
        "train_ddp.py",
        "train_lightning.py",
    ]
    assert sorted(TUTORIAL_BLOCKS) == ["digits_files.py", "digits_train.py", "my_digits.py"]
    assert "BatchClient(" in BLOCKS[0] and "load_state_dict" in BLOCKS[1]
    assert "class IrisDataPoint" in BLOCKS[2] and "from_factory" in BLOCKS[3]
    for index in FRAGMENTS:  # not run, but valid Python
        compile(BLOCKS[index], f"README fragment {index}", "exec")


def test_the_docs_have_no_python_block_that_no_test_runs() -> None:
    docs = sorted((REPO / "docs").glob("*.md"))
    assert docs, "docs/*.md not found"
    found = {d.name: PYTHON_BLOCK.findall(d.read_text()) for d in docs}
    assert {name: blocks for name, blocks in found.items() if blocks} == {}


def test_the_configuration_table_names_every_setting() -> None:
    from batchstash.service.config import Settings

    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    assert named == set(Settings.model_fields)


def test_the_dataset_snippet_defines_a_stash_that_primes(tmp_path: Path) -> None:
    (tmp_path / "my_dataset.py").write_text(BLOCKS[2])
    done = run(
        "import my_dataset; s = my_dataset.iris(path='store'); print(s.prime(), "
        "s.is_primed, s.load('train', 0)['flower_dims'].shape)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "True", "torch.Size([20,", "4])"]


def test_the_prime_and_load_snippet_runs_as_a_script(tmp_path: Path) -> None:
    script = tmp_path / "prime_and_load.py"
    script.write_text(BLOCKS[3])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "train 6 6" in done.stdout and "torch.Size([20, 4])" in done.stdout
    assert "Batch: id=0, split=train" in done.stdout


def test_the_quick_start_trains_against_a_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", tmp_path / "server.log", "--workers", "0", "--prime")
    try:
        deadline = time.monotonic() + 60
        while not httpx.get(f"{server.url}/v1/splits").json()["primed"]:
            assert time.monotonic() < deadline, "the server did not prime"
            time.sleep(0.2)
        code = BLOCKS[0].replace("http://127.0.0.1:8000", server.url)
        code += "\nprint('loss', float(loss))\n"
        done = run(code, tmp_path)
        assert done.returncode == 0, done.stderr
        assert float(done.stdout.split()[-1]) < 1.0  # 30 epochs of iris: it learned something
    finally:
        server.stop()
