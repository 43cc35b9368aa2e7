"""Hosts in network namespaces (``../shared/tools/netlab.sh``), and processes started in them.

A lab's hosts share this machine's filesystem and processes, not its network: each has its own
address on one switch. Processes are started with ``ip netns exec`` and kept by their ``Popen``;
a host is "killed" by sending ``SIGKILL`` to every process in its namespace (``ip netns pids``),
and ``destroy`` ends whatever is left in the lab, and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NETLAB = Path(os.environ.get("NETLAB_SH", REPO_ROOT.parent / "shared" / "tools" / "netlab.sh"))


def unavailable() -> str | None:
    """Why a lab cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not NETLAB.is_file():
        return f"no {NETLAB} (set NETLAB_SH)"
    if shutil.which("ip") is None:
        return "no ip(8)"
    return None


@dataclass
class Lab:
    """One lab: ``name``, its hosts' addresses, and the processes started in it."""

    name: str
    addresses: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, hosts: list[str]) -> Lab:
        out = netlab("create", name, *hosts, "--host-access")
        lab = cls(name)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in hosts:
                lab.addresses[parts[0]] = parts[1]
        assert sorted(lab.addresses) == sorted(hosts), out
        return lab

    def start(
        self, host: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path = REPO_ROOT
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", f"{self.name}-{host}", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", f"{self.name}-{host}", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    def pids(self, host: str) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", f"{self.name}-{host}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return [int(p) for p in out.split()]

    def kill_host(self, host: str) -> int:
        """SIGKILL every process in ``host`` (the machine dies); returns how many there were."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def cut(self, host: str) -> None:
        netlab("cut", self.name, host)

    def restore(self, host: str) -> None:
        netlab("restore", self.name, host)

    def shape(self, host: str, *options: str) -> None:
        netlab("shape", self.name, host, *options)

    def destroy(self) -> None:
        netlab("destroy", self.name, check=False)
        for proc in self.procs:  # reaped: destroy ended them
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def netlab(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["bash", str(NETLAB), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, f"netlab.sh {' '.join(args)}: {result.stderr}"
    return result.stdout


def wait_port(address: str, port: int, timeout: float) -> None:
    """Wait until ``address:port`` accepts a connection (from the root namespace)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address}:{port} did not open in {timeout:.0f}s") from None
            time.sleep(0.2)


def wait_log(
    log: Path, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited {proc.returncode} before {text!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log.name}: no {text!r} in {timeout:.0f}s")
        time.sleep(0.2)
