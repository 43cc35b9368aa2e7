"""A fresh process's peak RSS growth while it reads with a ``shuffle_window``.

The process imports the client, connects and reads one batch (imports, connection and the
metadata: what any reader pays), then records its RSS; it then reads ``batches`` batches with
``iter_batches(shuffle_window=W, prefetch=P)`` and reports its peak RSS (``VmHWM``). The growth
is everything the iteration added: the window's stored batches, the prefetched ones, the new
batches and their pooled buffers, and the pages of library code (numpy's and torch's) that the
re-dealing runs for the first time. Its anonymous memory (``RssAnon``, read after every batch)
is the same without the code: the peak of that is the data the client holds. ``python -m
benchmarks.rebatch_memory --url U --window W --prefetch P --batches N`` is one run;
:func:`growth` starts it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["growth", "main"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def growth(
    url: str,
    window: int,
    prefetch: int,
    batches: int,
    timeout: float = 300.0,
    in_flight_bytes: int | None = None,
) -> dict:
    """Run one reader process; its RSS before iterating, its peak, and the batches it read.

    ``in_flight_bytes``: the client's budget for requests the link sizing adds beyond
    ``prefetch`` (``None``: the default; ``0``: none, so ``prefetch`` alone bounds them).
    """
    cmd = [sys.executable, "-m", "benchmarks.rebatch_memory", "--url", url]
    cmd += ["--window", str(window), "--prefetch", str(prefetch), "--batches", str(batches)]
    if in_flight_bytes is not None:
        cmd += ["--in-flight-bytes", str(in_flight_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory reader failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        **report,
        "growth": report["peak"] - report["rss_before"],
        "anon_growth": report["peak_anon"] - report["anon_before"],
    }


def main(argv: list[str] | None = None) -> None:
    """Read with a window; print the RSS before and the peak as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rebatch_memory")
    parser.add_argument("--url", required=True)
    parser.add_argument("--window", type=int, required=True)
    parser.add_argument("--prefetch", type=int, required=True)
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--in-flight-bytes", type=int, default=None)
    args = parser.parse_args(argv)

    from batchstash.client import BatchClient

    budget = {} if args.in_flight_bytes is None else {"in_flight_bytes": args.in_flight_bytes}
    with BatchClient(args.url, timeout=60.0, **budget) as client:
        ids = client.batch_ids("train")
        first = client.batch("train", ids[0])
        size = sum(int(t.nbytes) for t in first.attributes.values())
        del first
        before, anon_before = _status("VmRSS"), _status("RssAnon")
        count, peak_anon = 0, anon_before
        it = client.iter_batches(
            "train", prefetch=args.prefetch, shuffle_window=args.window, epoch=1
        )
        for _ in it:
            count += 1
            peak_anon = max(peak_anon, _status("RssAnon"))
            if count >= args.batches:
                break
        reader = getattr(it, "reader", None)
        window = None if reader is None else [reader.window, reader.sizer.floor]
        it.close()
        peak = _status("VmHWM")
    report = {
        "rss_before": before,
        "peak": peak,
        "anon_before": anon_before,
        "peak_anon": peak_anon,
        "batches": count,
        "batch_bytes": size,
        "in_flight": window,  # the pipelined reader's window and its floor, in requests
    }
    print(json.dumps({**report, "window": args.window, "prefetch": args.prefetch}))  # noqa: T201


if __name__ == "__main__":
    main()
