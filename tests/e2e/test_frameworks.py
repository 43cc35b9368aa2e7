"""The README's training-framework scripts, run verbatim under their launchers on the CPU.

Each script trains on a real server (iris in batches of 6: 18 train batches, 3 dev batches).
A ``sitecustomize`` on the scripts' path records every batch each rank reads, so the tests
check what the frameworks were given: every rank its own share, every epoch covered exactly
once, a new epoch (a new shuffle) each pass, and no silent half epochs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..test_readme import FRAMEWORK_BLOCKS
from .conftest import REPO_ROOT, Server, free_port, start_server

pytestmark = pytest.mark.slow

RECORDER = Path(__file__).with_name("recorder")
TRAIN_BATCHES, DEV_EXAMPLES = 18, 15


@pytest.fixture(scope="module")
def iris6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An iris server in batches of 6, primed."""
    root = tmp_path_factory.mktemp("iris6")
    env = {"BATCHSTASH_DATASET_OPTIONS": json.dumps({"batch_size": 6})}
    server = start_server(root / "data", root / "server.log", "--workers", "0", "--prime", env=env)
    try:
        deadline = time.monotonic() + 120
        while not httpx.get(f"{server.url}/v1/splits").json()["primed"]:
            assert time.monotonic() < deadline, "the server did not prime"
            time.sleep(0.2)
        splits = httpx.get(f"{server.url}/v1/splits").json()["splits"]
        assert splits["train"]["batches"] == TRAIN_BATCHES
        assert splits["dev"]["data_points"] == DEV_EXAMPLES and splits["dev"]["batches"] == 3
        yield server
    finally:
        server.stop()


def launch(
    name: str, server: Server, tmp_path: Path, launcher: list[str], code: str | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run README script ``name`` (or ``code``) under ``launcher``; return it and its records."""
    script = tmp_path / name
    script.write_text((code or FRAMEWORK_BLOCKS[name]).replace("http://127.0.0.1:8000", server.url))
    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "finished").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSTASH_", "ACCELERATE"))}
    for name_ in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name_, None)
    env["PYTHONPATH"] = os.pathsep.join([str(RECORDER), str(REPO_ROOT)])
    env["BATCHSTASH_TEST_RECORD"] = str(records)
    env["BATCHSTASH_TEST_FINISHED"] = str(tmp_path / "finished")
    env["ACCELERATE_USE_CPU"] = "true"  # accelerate's multi-CPU mode under torchrun (gloo)
    env["MASTER_PORT"] = str(free_port())  # Lightning's launcher: a free rendezvous port
    done = subprocess.run(
        [*launcher, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [json.loads(line) for f in records.iterdir() for line in f.read_text().splitlines()]
    return done, lines


def torchrun(port: int) -> list[str]:
    # ``torchrun`` run by this interpreter: an entry-point script's shebang may name another
    # environment's Python (a copied virtual environment), which would test that one's code
    run = [sys.executable, "-m", "torch.distributed.run"]
    return [*run, "--nproc_per_node", "2", "--master_port", str(port)]


# torch's gloo backend: a worker thread may free the last collective's work (and its tensors)
# while the interpreter is finalizing, after the script has ended; taking the GIL then aborts the
# process (pytorch/pytorch#190489, one run in about 20 here, with or without
# destroy_process_group). The plain DDP script shows it without batchstash.
GLOO_EXIT_ABORT = "terminate called without an active exception"


def assert_torchrun_scripts_ended(done: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    """Both ranks ran the script to its end; torchrun succeeded, or only torch's exit abort hit."""
    ended = sorted(p.name for p in (tmp_path / "finished").iterdir())
    assert [n for n in ended if n.startswith("rank-")] == ["rank-0", "rank-1"], done.stderr
    if done.returncode != 0:
        # tolerated only as torch's teardown abort (SIGABRT; torchrun then sends SIGTERM to the
        # other rank) after both scripts ran to the end
        codes = set(re.findall(r"exitcode\s*: (-?\d+)", done.stderr))
        assert GLOO_EXIT_ABORT in done.stderr and "-6" in codes <= {"-6", "-15"}, done.stderr


def by_rank(records: list[dict[str, Any]], split: str) -> dict[int, dict[int, list[int]]]:
    """``{rank process: {epoch: batch ids read}}`` of one split."""
    out: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["split"] == split:
            out[r["owner"]][r["epoch"]].append(r["batch"])
    return out


def assert_each_epoch_read_once_over_two_ranks(records: list[dict[str, Any]]) -> None:
    ranks = by_rank(records, "train")
    assert len(ranks) == 2, f"expected 2 rank processes, got {sorted(ranks)}"
    assert {r["world_size"] for r in records} == {2}
    assert sorted(r["rank"] for r in {r["owner"]: r for r in records}.values()) == [0, 1]
    for epochs in ranks.values():
        assert sorted(epochs) == [0, 1, 2]  # a new epoch each pass: reshuffled
    for epoch in range(3):
        shares = [set(epochs[epoch]) for epochs in ranks.values()]
        assert not shares[0] & shares[1]  # disjoint
        assert sorted(b for epochs in ranks.values() for b in epochs[epoch]) == list(
            range(TRAIN_BATCHES)
        )  # the whole epoch, each batch once
    rank0 = next(iter(ranks.values()))
    assert rank0[0] != rank0[1] != rank0[2]  # each epoch its own shuffle


def test_dataloader_script_reshuffles_every_pass(iris6: Server, tmp_path: Path) -> None:
    done, records = launch("train_dataloader.py", iris6, tmp_path, [sys.executable])
    assert done.returncode == 0, done.stderr
    ranks = by_rank(records, "train")
    assert len(ranks) == 1
    (epochs,) = ranks.values()
    assert sorted(epochs) == [0, 1, 2]
    for epoch in range(3):
        assert sorted(epochs[epoch]) == list(range(TRAIN_BATCHES))
    assert epochs[0] != epochs[1] != epochs[2]


def test_torchrun_ddp_script_shares_epochs_and_counts_dev_once(
    iris6: Server, tmp_path: Path
) -> None:
    done, records = launch("train_ddp.py", iris6, tmp_path, torchrun(free_port()))
    assert_torchrun_scripts_ended(done, tmp_path)
    assert_each_epoch_read_once_over_two_ranks(records)
    assert f"on {DEV_EXAMPLES} examples" in done.stdout  # no repeated dev example
    dev = [p for r in records if r["split"] == "dev" for p in r["points"]]
    assert len(dev) == DEV_EXAMPLES and len(set(dev)) == DEV_EXAMPLES
    dev_batches = Counter(r["owner"] for r in records if r["split"] == "dev")
    assert sorted(dev_batches.values()) == [1, 2]  # uneven ranks, no padding


def test_lightning_ddp_script_ranks_are_disjoint_and_reshuffle(
    iris6: Server, tmp_path: Path
) -> None:
    done, records = launch("train_lightning.py", iris6, tmp_path, [sys.executable])
    assert done.returncode == 0, done.stderr
    assert "max_epochs=3` reached" in done.stderr + done.stdout
    assert_each_epoch_read_once_over_two_ranks(records)


def test_accelerate_script_trains_on_whole_epochs(iris6: Server, tmp_path: Path) -> None:
    done, records = launch("train_accelerate.py", iris6, tmp_path, torchrun(free_port()))
    assert_torchrun_scripts_ended(done, tmp_path)
    assert_each_epoch_read_once_over_two_ranks(records)


def test_accelerate_prepared_loader_fails_loudly_on_every_process(
    iris6: Server, tmp_path: Path
) -> None:
    code = FRAMEWORK_BLOCKS["train_accelerate.py"]
    line = 'loader = DataLoader(BatchDataset("http://127.0.0.1:8000", "train"), batch_size=None)'
    assert line in code
    wrong = code.replace(line, line.replace("loader = ", "loader = accelerator.prepare(") + ")")
    done, records = launch("train_accelerate.py", iris6, tmp_path, torchrun(free_port()), wrong)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert out.count("was passed to accelerator.prepare()") >= 2  # both processes say why
    assert "keep the DataLoader out of prepare()" in out
    assert records == []  # refused before any batch was read
