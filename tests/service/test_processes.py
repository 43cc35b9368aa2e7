"""Process trees: found under a root, followed by pid and start time, ended; the watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from batchstash.service.prime.processes import end_processes, process_tree, start_time


def _wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_tree_is_found_and_ended() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        assert _wait_for(lambda: len(process_tree(shell.pid, include_root=False)) == 2)
        tree = process_tree(shell.pid)
        assert shell.pid in tree and len(tree) == 3
        assert all(start_time(pid) == start for pid, start in tree.items())
        assert end_processes(tree, grace_s=0.2) == 3
        shell.wait(timeout=5)
        assert all(start_time(pid) != start for pid, start in tree.items())
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def test_processes_that_exit_by_themselves_are_not_signalled() -> None:
    child = subprocess.Popen(["sleep", "0.2"])
    tree = {child.pid: start_time(child.pid) or 0}
    assert end_processes(tree, grace_s=3.0) == 0  # it exited within the grace
    child.wait(timeout=5)


def test_a_zombie_is_not_running() -> None:
    child = subprocess.Popen(["true"])
    assert _wait_for(lambda: start_time(child.pid) is None)  # exited, not collected yet
    child.wait(timeout=5)


def test_the_watchdog_ends_the_tree_after_its_parent_is_gone() -> None:
    # a parent that starts a long sleep, hands it to a watchdog and exits at once
    code = (
        "import subprocess, sys\n"
        "from batchstash.service.prime.processes import process_tree, start_time, watch\n"
        "sleeper = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "watch({sleeper.pid: start_time(sleeper.pid)}, grace_s=0.2)\n"
        "print(sleeper.pid, start_time(sleeper.pid), flush=True)\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert parent.returncode == 0, parent.stderr
    pid, start = map(int, parent.stdout.split())
    try:
        assert _wait_for(lambda: start_time(pid) != start, timeout=10)
    finally:
        if start_time(pid) == start:  # the sleep this test's child started
            os.kill(pid, signal.SIGKILL)
