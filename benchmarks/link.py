"""The link section: the server and the trainer on two hosts joined by a shaped link.

Every other section runs on loopback, where both sides share two cores and no link limits
them. Here ``netlab.sh`` (a tool of this kind of machine: network namespaces behind a bridge,
``tc tbf`` rates, delay and loss by a user-space helper; see :mod:`.netlab`) makes a ``server``
and a ``client`` host, and the client's link is shaped in turn. On each link: a raw TCP stream
(1 MiB ``sendall`` against ``recv_into``, the most the link carries for one connection), then
``iter_batches`` of the large and the small store, and a trainer whose step takes 125 % of a
large batch's time at the raw rate (the link 80 % busy: pipelined reads should hide it), its
data wait read from ``it.stats()``. Last, over a link with a 10 ms round trip, the small batches at
the README's ``prefetch`` (4) with the window fixed against sized from the link. Runs as root
only; otherwise the section is skipped with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import netlab
from .servers import DATASET, child_env, stop, wait_healthy
from .table import Row, div, fmt

__all__ = ["LINKS", "measure", "rows", "targets", "unavailable"]

SECTION = "across a link"
LINKS = {
    "1 Gbit/s": ["--rate", "1gbit"],
    "10 Gbit/s": ["--rate", "10gbit"],
    "1 Gbit/s, 0.1 % loss": ["--rate", "1gbit", "--loss", "0.1%"],
    "1 Gbit/s, 1 % loss": ["--rate", "1gbit", "--loss", "1%"],
}
"""The client's link in each run (each value applies in both directions)."""
DELAYED = ("1 Gbit/s, 5 ms each way", ["--rate", "1gbit", "--delay", "5ms"])
STEP_SHARE = 1.25  # the simulated step: this share of a large batch's time at the raw rate
PORT = 8700


def unavailable() -> str | None:
    """Why the section cannot run here (``None``: it can)."""
    if shutil.which("ip") is None:
        return "skipped: needs iproute2's ip"
    return netlab.link_skip()


class Lab:
    """A two-host lab (``server``, ``client``) made by netlab.sh, destroyed by :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.name = name
        out = netlab.lab("create", name, "server", "client", "--host-access")
        self.ips = dict(line.split()[:2] for line in out.splitlines() if line.count(".") == 3)

    def shape(self, host: str, options: list[str]) -> None:
        """Shape ``host``'s link (no options: unshaped)."""
        netlab.lab("shape", self.name, host, *options)

    def argv(self, host: str, *command: str) -> list[str]:
        """``command`` run inside ``host`` (its PID is the command's: ``ip`` execs it)."""
        return ["ip", "netns", "exec", f"{self.name}-{host}", *command]

    def close(self) -> None:
        """End the lab's processes and delete it."""
        netlab.lab("destroy", self.name)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _served(lab: Lab, store: Path, options: dict[str, Any], log: Path) -> Iterator[tuple[str, int]]:
    """``batchstash serve`` of ``store`` inside the server host; yields its URL and PID."""
    host = lab.ips["server"]
    argv = [sys.executable, "-c", "from batchstash.service.cli import main; main()", "serve"]
    argv += ["--host", host, "--port", str(PORT), "--data-dir", str(store)]
    argv += ["--dataset", DATASET, "--workers", "1", "--no-prime"]
    env = child_env(
        BATCHSTASH_DATASET_OPTIONS=json.dumps(options),
        BATCHSTASH_LOG_LEVEL="warning",
        BATCHSTASH_DATA_PORT=str(PORT + 1),
    )
    url = f"http://{host}:{PORT}"
    with log.open("ab") as out:
        proc = subprocess.Popen(lab.argv("server", *argv), env=env, stdout=out, stderr=out)
    try:  # answered in the root namespace (the lab's host access), not through the link
        wait_healthy(url, proc, log, 60)
        yield url, proc.pid
    finally:
        stop(proc)


def _run_client(lab: Lab, *args: str, timeout: float = 120) -> dict[str, Any]:
    argv = lab.argv("client", sys.executable, "-m", "benchmarks.link", *args)
    done = subprocess.run(
        argv, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()[-800:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _raw(lab: Lab, seconds: float) -> dict[str, Any]:
    """A raw TCP stream from the server host to the client host."""
    argv = lab.argv("server", sys.executable, "-m", "benchmarks.link", "send", lab.ips["server"])
    sender = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout is not None
        sender.stdout.readline()  # listening
        cpu0 = _cpu_s(sender.pid)
        got = _run_client(lab, "receive", lab.ips["server"], "--seconds", str(seconds))
        got["server_cpu_s"] = _cpu_s(sender.pid) - cpu0
        return got
    finally:
        sender.kill()
        sender.wait(timeout=10)


def _read(lab: Lab, url: str, pid: int, seconds: float, *args: str) -> dict[str, Any]:
    cpu0 = _cpu_s(pid)
    got = _run_client(lab, "read", url, "--seconds", str(seconds), *args)
    got["server_cpu_s"] = _cpu_s(pid) - cpu0
    return got


def measure(
    work: Path,
    stores: dict[str, tuple[Path, dict[str, Any]]],
    prefetch: dict[str, int],
    seconds: float,
    loss: bool = True,
) -> dict[str, Any]:
    """Every link's raw stream, large and small reads and trainer wait; the delayed link's window.

    Args:
        work: where logs go.
        stores: ``large`` and ``small``: a primed store directory and its factory options.
        prefetch: ``iter_batches`` prefetch of each store.
        seconds: each run's length.
        loss: measure the lossy links too.
    """
    reason = unavailable()
    if reason is not None:
        return {"skipped": reason}
    log = work / "link-server.log"
    work.mkdir(parents=True, exist_ok=True)
    lab = Lab(f"bk{os.getpid() % 10000}")
    out: dict[str, Any] = {"links": {}}
    try:
        for name, options in LINKS.items():
            if "--loss" in options and not loss:
                continue
            lab.shape("client", options)
            runs: dict[str, Any] = {"raw": _raw(lab, seconds)}
            for size in ("large", "small"):
                store, factory = stores[size]
                with _served(lab, store, factory, log) as (url, pid):
                    runs[size] = _read(lab, url, pid, seconds, "--prefetch", str(prefetch[size]))
                    if size == "large":
                        batch_s = runs["large"]["bytes"] / runs["large"]["batches"]
                        step = STEP_SHARE * batch_s / (runs["raw"]["mb_s"] * 1e6)
                        runs["trainer"] = _read(
                            lab, url, pid, seconds, "--prefetch", str(prefetch[size]),
                            "--step-s", f"{step:.6f}",
                        )  # fmt: skip
            out["links"][name] = runs
        name, options = DELAYED
        lab.shape("client", options)
        store, factory = stores["small"]
        raw = _raw(lab, seconds)
        with _served(lab, store, factory, log) as (url, pid):
            out["delayed"] = {
                "link": name,
                "raw": raw,
                "fixed": _read(lab, url, pid, seconds, "--prefetch", "4", "--fixed-window"),
                "sized": _read(lab, url, pid, seconds, "--prefetch", "4"),
            }
    finally:
        lab.close()
    return out


# -- the processes inside the lab ---------------------------------------------------------------


def _send(host: str) -> None:
    with socket.create_server((host, PORT + 2)) as server:
        print("listening", flush=True)
        conn, _ = server.accept()
        buf = bytes(2**20)
        try:
            while True:
                conn.sendall(buf)
        except OSError:
            pass


def _receive(host: str, seconds: float) -> dict[str, Any]:
    conn = socket.create_connection((host, PORT + 2))
    view = memoryview(bytearray(2**20))
    size, cpu0, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        got = conn.recv_into(view)
        if not got:
            break
        size += got
    elapsed = time.perf_counter() - start
    return {"bytes": size, "mb_s": size / elapsed / 1e6, "client_cpu_s": time.process_time() - cpu0}


def _read_batches(
    url: str, seconds: float, prefetch: int, step_s: float, fixed: bool
) -> dict[str, Any]:
    from batchstash.client import BatchClient
    from batchstash.client.inflight import DEFAULT_IN_FLIGHT_BYTES

    size = count = epoch = 0
    wait = elapsed = 0.0
    window = 0
    budget = 0 if fixed else DEFAULT_IN_FLIGHT_BYTES  # 0: the window stays the prefetch's
    with BatchClient(url, timeout=60.0, in_flight_bytes=budget) as client:
        cpu0, start = time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            it = client.iter_batches("train", epoch=epoch, prefetch=prefetch)
            for batch in it:
                size += sum(int(t.nbytes) for t in batch.attributes.values())
                count += 1
                if step_s:
                    time.sleep(step_s)
                if time.perf_counter() - start >= seconds:
                    break
            stats = it.stats()
            wait, elapsed = wait + stats["wait_s"], elapsed + stats["elapsed_s"]
            window = max(window, getattr(it.reader, "window", 0))
            it.close()
            epoch += 1
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    return {
        "bytes": size,
        "batches": count,
        "mb_s": size / total / 1e6,
        "batches_s": count / total,
        "client_cpu_s": cpu,
        "wait_share": wait / elapsed if elapsed else None,
        "step_s": step_s,
        "window": window,
    }


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.link")
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send")
    send.add_argument("host")
    receive = sub.add_parser("receive")
    receive.add_argument("host")
    receive.add_argument("--seconds", type=float, default=3.0)
    read = sub.add_parser("read")
    read.add_argument("url")
    read.add_argument("--seconds", type=float, default=3.0)
    read.add_argument("--prefetch", type=int, default=4)
    read.add_argument("--step-s", type=float, default=0.0)
    read.add_argument("--fixed-window", action="store_true")
    args = parser.parse_args()
    if args.command == "send":
        _send(args.host)
    elif args.command == "receive":
        print(json.dumps(_receive(args.host, args.seconds)))
    else:
        got = _read_batches(args.url, args.seconds, args.prefetch, args.step_s, args.fixed_window)
        print(json.dumps(got))


# -- the table ----------------------------------------------------------------------------------


def _per_gb(cpu: float | None, size: float | None) -> str:
    return fmt(div(cpu, None if size is None else size / 1e9), 2)


def rows(result: dict[str, Any]) -> list[Row]:
    """Per link: the raw stream, each store's share of it, CPU per GB, the trainer's data wait."""
    if "skipped" in result:
        return [Row(SECTION, "skipped", result["skipped"])]
    out = []
    for name, runs in result["links"].items():
        raw = runs["raw"]
        out.append(
            Row(
                SECTION,
                f"{name}: raw TCP stream, 1 MiB sendall / recv_into",
                f"{fmt(raw['mb_s'], 0)} MB/s; CPU s/GB server "
                f"{_per_gb(raw['server_cpu_s'], raw['bytes'])}, "
                f"client {_per_gb(raw['client_cpu_s'], raw['bytes'])}",
            )
        )
        for size in ("large", "small"):
            run = runs[size]
            out.append(
                Row(
                    SECTION,
                    f"{name}: iter_batches, {size} batches",
                    f"{fmt(run['mb_s'], 0)} MB/s = {fmt(div(run['mb_s'], raw['mb_s']), 2)} x raw, "
                    f"{fmt(run['batches_s'], 0)} batches/s; CPU s/GB server "
                    f"{_per_gb(run['server_cpu_s'], run['bytes'])}, client "
                    f"{_per_gb(run['client_cpu_s'], run['bytes'])}",
                )
            )
        trainer = runs["trainer"]
        share = trainer["wait_share"]
        out.append(
            Row(
                SECTION,
                f"{name}: trainer data wait, a step of {1000 * trainer['step_s']:.1f} ms "
                f"({int(100 * STEP_SHARE)} % of a large batch's time at the raw rate)",
                f"{fmt(None if share is None else 100 * share, 1)} % of the epoch",
            )
        )
    delayed = result["delayed"]
    out.append(
        Row(
            SECTION,
            f"{delayed['link']}: raw TCP stream, 1 MiB sendall / recv_into",
            f"{fmt(delayed['raw']['mb_s'], 0)} MB/s",
        )
    )
    for way, text in (
        ("fixed", "window fixed by prefetch"),
        ("sized", "window sized from the link"),
    ):
        run = delayed[way]
        out.append(
            Row(
                SECTION,
                f"{delayed['link']}: small batches, prefetch 4, {text}",
                f"{fmt(run['mb_s'], 0)} MB/s, {fmt(run['batches_s'], 0)} batches/s "
                f"(up to {run['window']} requests in flight)",
            )
        )
    return out


def targets(result: dict[str, Any] | None) -> list[Row]:
    """Large batches keep 0.9 x the raw stream on each rate-only link."""
    out = []
    for name in ("1 Gbit/s", "10 Gbit/s"):
        runs = None if result is None or "skipped" in result else result["links"].get(name)
        ratio = None if runs is None else div(runs["large"]["mb_s"], runs["raw"]["mb_s"])
        out.append(
            Row(
                SECTION,
                f"{name}: iter_batches of large batches vs a raw TCP stream on the same link",
                "n/a"
                if runs is None
                else f"{fmt(ratio, 2)} x ({fmt(runs['large']['mb_s'], 0)} / "
                f"{fmt(runs['raw']['mb_s'], 0)} MB/s)",
                ">= 0.90 x",
                None if ratio is None else ratio >= 0.9,
            )
        )
    return out


if __name__ == "__main__":
    _main()
