"""Compression: bytes a batch, client CPU per GB and batches/s over a rate-limited link.

Two datasets, each primed three times (``compression`` ``none``, ``zstd``, ``auto``), one stored
object a batch:

- ``tokens``: 64 rows of 512 int64 token ids a batch (256 KiB; 4 x ``batches`` of them, the
  floats' bytes), drawn from a Zipf law
  (``p(rank) ~ rank^-1.1``) over a 32,000-token vocabulary whose ranks are shuffled (ids are
  not in frequency order), and an int64 label;
- ``floats``: the synthetic store's 1 MiB batches (256 rows of 1,024 normal float32 values).

On loopback a server (``role=serve``) answers a client in this process that reads every batch
(``iter_batches``, pipelined): bytes on the wire a batch (the server's ``bytes_served``), and
the client's CPU seconds per GB of decompressed batches. Over a link (root only, the
``netlab.sh`` lab of ``../shared/tools``): the server in one network namespace, the client in
another behind a rate-only link (tc tbf), batches/s of ``none`` against ``zstd`` (tokens,
1 Gbit/s) and ``auto`` (floats, 10 Gbit/s). Without root, or in a quick run, the link part is
skipped with a line saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from batchstash.client import (
    BatchClient,
)

from .netlab import NETLAB, lab, link_skip
from .servers import child_env, free_port, wait_healthy
from .synthetic import factory as float_stash
from .table import Row, div, fmt, times
from .tokens import tokens_stash

__all__ = ["CODECS", "measure", "read_all", "rows", "targets"]

CODECS = ("none", "zstd", "auto")
REPO = Path(__file__).resolve().parents[1]
LINKS = {"tokens": "1gbit", "floats": "10gbit"}
"""The link each dataset is read over, and the codec set against ``none`` there."""
AGAINST = {"tokens": "zstd", "floats": "auto"}
GB = 1e9
REPEATS = 5
"""Reads of each store, taking turns with the other codecs; the median one is reported."""


def _build(kind: str, path: Path, batches: int, codec: str) -> None:
    if kind == "tokens":  # 4 x as many batches of a quarter of the size: the same bytes
        tokens_stash(str(path), 4 * batches, compression=codec).prime()
    else:
        float_stash(str(path), batches=batches, vectorizer="tensor", compression=codec).prime()


def _serve(
    path: Path, host: str, ports: tuple[int, int], log: Path, prefix: list[str]
) -> subprocess.Popen[bytes]:
    argv = [
        *prefix,
        sys.executable,
        "-c",
        "from batchstash.service.cli import main; main()",
        "serve",
        "--host",
        host,
        "--port",
        str(ports[0]),
        "--data-dir",
        str(path),
    ]
    env = child_env(
        BATCHSTASH_ROLE="serve",
        BATCHSTASH_LOG_LEVEL="warning",
        BATCHSTASH_DATA_PORT=str(ports[1]),
    )
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


@contextmanager
def _servers(
    stores: dict[str, Path], host: str, log: Path, prefix: list[str]
) -> Iterator[dict[str, str]]:
    """A server for each store (``role=serve``), their URLs by codec; stopped after."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    taken: set[int] = set()
    try:
        for codec, path in stores.items():
            ports = []
            while len(ports) < 2:
                if (port := free_port()) not in taken:
                    taken.add(port)
                    ports.append(port)
            urls[codec] = f"http://{host}:{ports[0]}"
            procs[codec] = _serve(path, host, (ports[0], ports[1]), log, prefix)
        for codec, url in urls.items():
            wait_healthy(url, procs[codec], None, 60, probe="/readyz")
        yield urls
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)


def _interleaved(
    urls: dict[str, str], read: Callable[[str], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """:data:`REPEATS` reads of each URL, taking turns (a busy moment hits them alike)."""
    reads: dict[str, list[dict[str, Any]]] = {codec: [] for codec in urls}
    for _ in range(REPEATS):
        for codec, url in urls.items():
            reads[codec].append(read(url))
    return {codec: _median(runs) for codec, runs in reads.items()}


def served(url: str) -> float:
    """The server's ``batchstash_bytes_served_total``."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^batchstash_bytes_served_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def read_all(
    url: str, prefetch: int = 24, started: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Read every batch of ``train`` once: batches, seconds, this process's CPU seconds.

    ``started`` is called once the connections are made, right before the clock starts.
    """
    with BatchClient(url) as client:
        client.batch("train", 0)  # connections and metadata before the clock starts
        if started is not None:
            started()
        cpu, wall, count = time.process_time(), time.perf_counter(), 0
        for _ in client.iter_batches("train", prefetch=prefetch):
            count += 1
        return {
            "batches": count,
            "seconds": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
        }


def _read_counted(url: str) -> dict[str, Any]:
    """:func:`read_all`, with the bytes the server sent for it (its ``bytes_served``)."""
    before: list[float] = []
    run = read_all(url, started=lambda: before.append(served(url)))
    run["wire_bytes"] = served(url) - before[0]
    return run


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median duration, with every run's duration."""
    middle = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {**middle, "all_seconds": [r["seconds"] for r in runs]}


def _over_link(stores: dict[str, Path], rate: str, log: Path) -> dict[str, Any]:
    """Batches/s of each store read across a link of ``rate``, the server behind it."""
    name = f"bz{os.getpid() % 100000}"
    out = lab("create", name, "srv", "cli", "--host-access")
    hosts = dict(re.findall(r"(srv|cli)\s+(10\.77\.\d+\.\d+)", out))
    try:
        lab("shape", name, "cli", "--rate", rate)
        prefix = ["bash", str(NETLAB), "exec", name, "srv"]

        def across(url: str) -> dict[str, Any]:
            code = (
                "import json; from benchmarks.compression import read_all; "
                f"print(json.dumps(read_all({url!r})))"
            )
            text = lab("exec", name, "cli", sys.executable, "-c", code)
            return dict(json.loads(text.strip().splitlines()[-1]))

        with _servers(stores, hosts["srv"], log, prefix) as urls:
            return _interleaved(urls, across)
    finally:
        lab("destroy", name, check=False)


def measure(work: Path, batches: int, link: bool = True) -> dict[str, Any]:
    """Every codec on both datasets on loopback, and over a link where root allows."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "servers.log"
    result: dict[str, Any] = {"batches": batches}
    stores: dict[str, dict[str, Path]] = {}
    for kind in ("tokens", "floats"):
        stores[kind] = {codec: work / f"{kind}-{codec}" for codec in CODECS}
        for codec, path in stores[kind].items():
            _build(kind, path, batches, codec)
        with _servers(stores[kind], "127.0.0.1", log, []) as urls:
            runs = _interleaved(urls, _read_counted)
        for codec, path in stores[kind].items():
            info = json.loads((path / "store.json").read_text())
            runs[codec]["codecs"] = (info.get("compression") or {}).get("groups")
        decoded = runs["none"]["wire_bytes"]  # the same batches, uncompressed
        for run in runs.values():
            run["decoded_bytes"] = decoded
        result[kind] = runs
    skip = link_skip() if link else "skipped: a quick run"
    if skip is not None:
        result["link"] = {"skipped": skip}
        return result
    result["link"] = {
        kind: {
            "rate": LINKS[kind],
            "runs": _over_link(
                {c: stores[kind][c] for c in ("none", AGAINST[kind])}, LINKS[kind], log
            ),
        }
        for kind in ("tokens", "floats")
    }
    return result


def _rate(run: dict[str, Any] | None) -> float | None:
    return None if run is None else run["batches"] / run["seconds"]


def rows(result: dict[str, Any]) -> list[Row]:
    """Per dataset and codec: bytes a batch, client CPU s per decompressed GB, loopback rate."""
    out = []
    for kind in ("tokens", "floats"):
        for codec, run in result[kind].items():
            per_batch = run["wire_bytes"] / max(run["batches"], 1)
            ratio = div(run["decoded_bytes"], run["wire_bytes"])
            out.append(
                Row(
                    f"compression ({kind}, loopback)",
                    f"{codec}: bytes a batch on the wire (ratio); client CPU s per "
                    "decompressed GB; batches/s",
                    f"{fmt(per_batch / 1024, 1)} KiB ({times(ratio)}); "
                    f"{fmt(run['cpu_s'] / (run['decoded_bytes'] / GB), 2)} s/GB; "
                    f"{fmt(_rate(run))} batches/s",
                )
            )
    link = result.get("link", {})
    if "skipped" in link:
        out.append(Row("compression (link)", "batches/s over a rate-limited link", link["skipped"]))
    return out


def targets(result: dict[str, Any] | None) -> list[Row]:
    """Tokens over 1 Gbit/s: zstd >= 2.5 x none; floats over 10 Gbit/s: auto no slower."""
    link = None if result is None else result.get("link")
    judged = link if link is not None and "skipped" not in link else None
    out = []
    for kind, what, target, bound in (
        ("tokens", "Zipf token batches over 1 Gbit/s: zstd vs none, batches/s", ">= 2.50 x", 2.5),
        (
            "floats",
            "1 MiB float batches over 10 Gbit/s: auto (kept raw) vs none, batches/s",
            ">= 0.95 x",
            0.95,
        ),
    ):
        runs = None if judged is None else judged[kind]["runs"]
        fast = None if runs is None else _rate(runs[AGAINST[kind]])
        slow = None if runs is None else _rate(runs["none"])
        ratio = div(fast, slow)
        value = f"{times(ratio)} ({fmt(fast)} / {fmt(slow)} batches/s)"
        if link is not None and "skipped" in link:
            value = link["skipped"]
        out.append(
            Row("compression", what, value, target, None if ratio is None else ratio >= bound)
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.compression --work DIR [--batches N]``: the section alone."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--no-link", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.work, args.batches, not args.no_link), indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
