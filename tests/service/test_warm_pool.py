"""The process executor's kept pool: reused by the next run, stopped when idle or closed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from batchstash.service import BatchStash
from batchstash.service.prime.inputs import PrimeInputs
from batchstash.service.prime.run import prime_store

pytestmark = pytest.mark.slow

FACTORY = "batchstash.service.examples:iris"


def spawned_children() -> set[int]:
    """This process's ``multiprocessing.spawn`` children (from ``/proc``)."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:  # a thread, or a child, may end while it is read
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"spawn_main" in cmdline:
                found.add(int(child))
    return found


def reprime(inputs: PrimeInputs) -> int:
    BatchStash.from_factory(FACTORY, path=str(inputs.backend.url)).clear_all()
    return prime_store(inputs)


def test_a_kept_pool_serves_the_next_run_and_stops_when_idle(tmp_path: Path) -> None:
    before = spawned_children()
    inputs = PrimeInputs.from_factory(FACTORY, {"path": str(tmp_path)}, workers=2, keep_s=2.0)
    try:
        assert reprime(inputs) == 9
        warm = spawned_children() - before
        assert len(warm) == 2
        assert reprime(inputs) == 9  # a new plan: the same workers encode it
        assert spawned_children() - before == warm
        deadline = time.monotonic() + 15
        while spawned_children() & warm and time.monotonic() < deadline:
            time.sleep(0.2)  # idle for keep_s: stopped
        assert not spawned_children() & warm
        assert reprime(inputs) == 9  # and started again when needed
    finally:
        inputs.executor.close()
    assert spawned_children() - before == set()


def test_without_keep_each_run_stops_its_workers(tmp_path: Path) -> None:
    before = spawned_children()
    inputs = PrimeInputs.from_factory(FACTORY, {"path": str(tmp_path)}, workers=2)
    assert reprime(inputs) == 9
    assert spawned_children() - before == set()
