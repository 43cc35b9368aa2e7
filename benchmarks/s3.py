"""S3 store: priming into and serving from moto (``moto_server`` on loopback) vs a directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from .servers import DATASET, HOST, Server, child_env, free_port, prime, stop, subprocess_server

__all__ = ["BUCKET", "measure", "moto_server"]

BUCKET = "batchstash-bench"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
}
"""moto checks no signature; these only have to be present."""

REPEATS = 3
"""Warm passes of each store after the first; the median is reported."""

Step = Callable[[str, Callable[[], Any]], Any]


@contextmanager
def moto_server(log: Path, timeout: float = 60.0) -> Iterator[str]:
    """Run ``moto_server`` on 127.0.0.1 until the block ends (then stop its PID); yield its URL.

    A subprocess, not moto's in-process thread: its own process and GIL, as a remote store
    would be. Its request log (one line per request) goes to ``log``.
    """
    exe = Path(sys.executable).with_name("moto_server")
    port = free_port()
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    endpoint = f"http://{HOST}:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: see {log}")
            try:
                if httpx.get(endpoint, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server at {endpoint} not up after {timeout}s")
            time.sleep(0.1)
        yield endpoint
    finally:
        stop(proc)


@contextmanager
def _server(
    store: str, role: str, log: Path, env: dict[str, str], options: dict[str, Any]
) -> Iterator[Server]:
    """``batchstash serve --role <role>`` on ``store`` (2 priming workers when it primes)."""
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "from batchstash.service.cli import main; main()",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        store,
        "--role",
        role,
        "--dataset",
        DATASET,
        "--workers",
        "2",
        "--no-prime",
    ]
    env = child_env(
        BATCHSTASH_DATASET_OPTIONS=json.dumps(options), BATCHSTASH_LOG_LEVEL="warning", **env
    )
    with subprocess_server(argv, port, log, env) as server:
        yield server


def _batch_gets(log: Path) -> int:
    """GETs of batch objects moto has logged so far."""
    time.sleep(0.3)  # moto logs a request after answering it
    return log.read_text(errors="replace").count(f'"GET /{BUCKET}/store/batches/')


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median MB/s, with every run's MB/s as ``passes_mb_s``."""
    ordered = sorted(runs, key=lambda r: r["mb_s"] or 0.0)
    return {**ordered[len(ordered) // 2], "passes_mb_s": [r["mb_s"] for r in runs]}


def _passes(
    work: Path,
    logs: Path,
    options: dict[str, Any],
    load: Callable[[Server], Any],
    timeout: float,
    step: Step,
    aws: dict[str, str],
    result: dict[str, Any],
) -> None:
    """Prime both stores; serve each once (first reads), then warm passes alternated."""
    moto_log = logs / "moto.log"
    stores = {"local": str(work / "s3-local-store"), "s3": f"s3://{BUCKET}/store"}
    for name, store in stores.items():
        env = {**aws, "BATCHSTASH_CACHE_DIR": str(work / f"s3-cache-prime-{name}")}
        with _server(store, "all", logs / f"s3-prime-{name}.log", env, options) as server:
            result[f"prime_{name}"] = step(
                f"prime {options['batches']} large batches into {name}, 2 workers",
                partial(prime, server.url, timeout),
            )
    cache = work / "s3-cache"
    env = {**aws, "BATCHSTASH_CACHE_DIR": str(cache)}
    with (
        _server(stores["local"], "serve", logs / "s3-serve-local.log", aws, options) as local,
        _server(stores["s3"], "serve", logs / "s3-serve.log", env, options) as remote,
    ):
        result["local_1"] = step("serve the directory store, pass 1", lambda: load(local))
        before = _batch_gets(moto_log)
        result["cold"] = step("serve the S3 store, cold cache", lambda: load(remote))
        result["cold"]["s3_gets"] = _batch_gets(moto_log) - before
        before = _batch_gets(moto_log)
        again: dict[str, list[dict[str, Any]]] = {"local": [], "warm": []}
        for n in range(REPEATS):  # alternated: background load hits both alike
            again["local"].append(
                step(f"serve the directory store, pass {n + 2}", lambda: load(local))
            )
            again["warm"].append(
                step(f"serve the S3 store, warm cache, pass {n + 1}", lambda: load(remote))
            )
        result["local_2"], result["warm"] = _median(again["local"]), _median(again["warm"])
        result["warm"]["s3_gets"] = _batch_gets(moto_log) - before
        result["cache_objects"] = sum(1 for f in cache.iterdir() if f.suffix != ".tmp")


def measure(
    work: Path,
    logs: Path,
    options: dict[str, Any],
    load: Callable[[Server], Any],
    timeout: float,
    step: Step,
) -> dict[str, Any]:
    """Prime ``options``' store into a directory and into moto, then serve both with ``load``.

    Both are served by ``--role serve`` servers, the S3 one with a fresh cache: a first pass of
    each (S3 cold: each object fetched from moto once), then :data:`REPEATS` passes of each,
    alternated (S3 warm: from the cache), their medians compared.
    """
    moto_log = logs / "moto.log"
    result: dict[str, Any] = {
        "moto": f"moto_server {metadata.version('moto')} (subprocess)",
        "batches": options["batches"],
    }
    try:
        with moto_server(moto_log) as endpoint:
            httpx.put(f"{endpoint}/{BUCKET}", timeout=10).raise_for_status()  # moto: unsigned
            aws = {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
            _passes(work, logs, options, load, timeout, step, aws, result)
    finally:  # 2 x the store on disk: freed now, not at the end of the run
        for name in ("s3-local-store", "s3-cache", "s3-cache-prime-local", "s3-cache-prime-s3"):
            shutil.rmtree(work / name, ignore_errors=True)
    local, s3 = result["prime_local"], result["prime_s3"]
    result["ratios"] = {
        "prime": _ratio(s3["rate"], local["rate"]),
        "prime_steady": _ratio(s3["steady_rate"], local["steady_rate"]),
        "cold": _ratio(result["cold"]["mb_s"], result["local_1"]["mb_s"]),
        "warm": _ratio(result["warm"]["mb_s"], result["local_2"]["mb_s"]),
        "warm_vs_cold": _ratio(result["warm"]["mb_s"], result["cold"]["mb_s"]),
    }
    return result
