"""The CPU accounting of the benchmarks: ``/proc`` stat lines, a real process tree, the columns."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks import cpu

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
# the root spins, runs a child that spins and exits (reaped: its CPU lands in the root's
# cutime + cstime), starts a child that spins and stays, then waits for stdin to close
TREE = (
    SPIN
    + f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", {SPIN!r}], check=True)
live = subprocess.Popen([sys.executable, "-c", {SPIN!r} + "print('ready', flush=True)\\n"
                         "import sys\\nsys.stdin.read()\\n"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
live.stdout.readline()
print(live.pid, flush=True)
sys.stdin.read()
live.stdin.close()
live.wait(timeout=30)
"""
)


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    tick = cpu.TICK
    # name "a) (b c" as the kernel shows it, then state, ppid, ... utime stime cutime cstime
    line = (
        f"4242 (a) (b c) S 17 4242 4242 0 -1 4194560 100 0 0 0 {3 * tick} {tick} "
        f"{2 * tick} {tick // 2} 20 0 3 0 123 456 789"
    )
    ppid, seconds = cpu.parse_stat(line)
    assert ppid == 17
    assert seconds == pytest.approx(3 + 1 + 2 + (tick // 2) / tick)


def test_tree_cpu_counts_descendants_and_reaped_children() -> None:
    root = subprocess.Popen(
        [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout is not None and root.stdin is not None
        grandchild = int(root.stdout.readline())
        tree = cpu.tree_cpu(root.pid)
        own = cpu.tree_cpu(grandchild)
    finally:
        if root.stdin is not None:
            root.stdin.close()
        root.wait(timeout=30)
    assert set(tree) == {root.pid, grandchild}
    assert own == {grandchild: tree[grandchild]}
    assert tree[grandchild] >= 0.29  # its own spin
    assert tree[root.pid] >= 0.58  # its spin and the reaped child's
    seconds, busy = cpu.tree_delta({}, tree)
    assert seconds == pytest.approx(sum(tree.values())) and busy == 2
    assert cpu.tree_delta(tree, tree) == (0.0, 0)
    assert cpu.tree_cpu(root.pid) == {}  # gone: nothing to count


def test_self_cpu_seconds_grows_with_work() -> None:
    before = cpu.self_cpu_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    assert cpu.self_cpu_seconds() - before >= 0.09


@pytest.mark.parametrize(
    ("server", "client", "consumers", "usable", "limit"),
    [
        ((0.5, 1), 0.2, 1, 2, "server"),
        ((0.2, 1), 0.5, 1, 2, "client"),
        ((0.5, 1), 0.8, 4, 2, "server"),  # 0.2 cores a consumer
        ((0.9, 1), 0.9, 1, 2, "machine"),
        ((0.9, 1), 0.9, 1, 16, "server"),
        (None, 0.9, 1, 2, None),
    ],
)
def test_usage_columns(
    server: tuple[float, int] | None, client: float, consumers: int, usable: int, limit: str | None
) -> None:
    parts = [client / consumers] * consumers
    got = cpu.usage(server, parts, consumers, size=2 * 10**9, wall=1.0, usable=usable)
    assert got["client_cpu_s"] == pytest.approx(client)
    assert got["client_s_gb"] == pytest.approx(client / 2)
    assert got["client_cores"] == pytest.approx(client)
    if server is None:
        assert got["server_s_gb"] is None and got["server_cores"] is None
    else:
        assert got["server_s_gb"] == pytest.approx(server[0] / 2)
    assert got["limit"] == limit
