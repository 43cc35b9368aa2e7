"""Re-dealt epochs (``shuffle_window``) and length bucketing: repeats, speed, memory, padding.

- **repeats**: two epochs of the small store read whole in this process, with ``W=16`` and
  with ``W=0``; the share of the second epoch's batches whose member set (data point ids) is
  one of the first epoch's.
- **speed**: ``iter_batches`` on one consumer, ``W=16`` against ``W=0``, interleaved
  ``repeats`` times on the large (1 MiB) and the small (67 KB) store; medians by MB/s.
- **memory**: a fresh reader process's peak RSS growth over its RSS before iterating, and
  that of its anonymous memory, the data it holds (see :mod:`benchmarks.rebatch_memory`),
  large store, prefetch 4, with ``W=16`` against ``(W + prefetch) x batch``: the target (the
  anonymous growth) with ``in_flight_bytes=0`` (``prefetch`` alone bounds the requests ahead),
  and the default client besides, whose link sizing may keep more in flight (its window is
  reported); with ``W=0`` for comparison.
- **trainer**: the same large store read by a trainer whose step (a sleep, as while a GPU
  computes) lasts :data:`STEP_SHARE` of a batch's time at the ``W=0`` median rate; the share of
  the pass it waits for data, with ``W=16`` and ``W=0`` (interleaved), in this process: with
  each one's default ``prefetch`` (``W + 8`` with a window, 4 without) and with prefetch 4,
  where a window is read only as the trainer reaches it.
- **bucketing**: the text example primed at random and with ``bucket_by="tokens"``,
  interleaved; the share of pad tokens (id 0) in the stored ``tokens`` of ``train``, and each
  prime's median time.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batchstash.client import BatchClient
from batchstash.client.iterate import default_prefetch
from batchstash.service.examples import text

from . import dealcost, placement
from .table import Row, div, fmt, times

__all__ = ["STEP_SHARE", "WINDOW", "bucketing", "repeats", "rows", "speed", "targets", "trainer"]

WINDOW = 16
"""The ``shuffle_window`` measured."""

STEP_SHARE = 1.25
"""The simulated training step, as a share of a batch's read time at the ``W=0`` rate."""

MB = 1e6


def _members(url: str, window: int, epoch: int, prefetch: int) -> list[frozenset[Any]]:
    with BatchClient(url, timeout=60.0) as client:
        it = client.iter_batches("train", epoch=epoch, prefetch=prefetch, shuffle_window=window)
        return [frozenset(b.data_point_ids) for b in it]


def repeats(url: str, prefetch: int) -> dict[str, Any]:
    """Epochs 0 and 1, each window: the share of epoch 1's batches that repeat one of epoch 0."""
    out: dict[str, Any] = {}
    for window in (0, WINDOW):
        first, second = (_members(url, window, e, prefetch) for e in (0, 1))
        seen = set(first)
        out[f"w{window}"] = {
            "batches": len(second),
            "repeated": sum(m in seen for m in second),
            "share": sum(m in seen for m in second) / max(len(second), 1),
        }
    return out


def speed(load: Callable[[int], dict[str, Any]], repeats_: int = 3) -> dict[str, Any]:
    """``load(W)`` for ``W`` in (0, :data:`WINDOW`), interleaved; medians by MB/s and ratio."""
    series: dict[int, list[dict[str, Any]]] = {0: [], WINDOW: []}
    for _ in range(repeats_):
        for window in series:
            series[window].append(load(window))
    out: dict[str, Any] = {}
    for window, runs in series.items():
        rates = [r["mb_s"] for r in runs]
        median = statistics.median_low(rates)
        out[f"w{window}"] = {**next(r for r in runs if r["mb_s"] == median), "runs_mb_s": rates}
    out["ratio"] = out[f"w{WINDOW}"]["mb_s"] / out["w0"]["mb_s"]
    return out


def trainer(
    url: str, step_s: float, prefetch: int | None, batches: int, repeats_: int = 3
) -> dict[str, Any]:
    """A trainer stepping ``step_s`` a batch, ``W`` in (0, :data:`WINDOW`) interleaved.

    Each pass reads ``batches`` batches; its data wait share is the iterator's own
    (``it.stats()``). Medians by wait share. ``prefetch=None``: each ``W``'s default
    (``default_prefetch``).
    """
    series: dict[int, list[dict[str, Any]]] = {0: [], WINDOW: []}
    with BatchClient(url, timeout=60.0) as client:
        for run in range(repeats_):
            for window in series:
                it = client.iter_batches(
                    "train", epoch=run, prefetch=prefetch, shuffle_window=window
                )
                start = time.perf_counter()
                count = 0
                for _ in it:
                    time.sleep(step_s)
                    count += 1
                    if count >= batches:
                        break
                elapsed = time.perf_counter() - start
                stats = it.stats()
                it.close()
                series[window].append(
                    {"wait_share": stats["wait_share"], "batches_s": count / elapsed}
                )
    out: dict[str, Any] = {
        "step_s": step_s,
        "prefetch": {
            f"w{w}": default_prefetch(w) if prefetch is None else prefetch for w in series
        },
        "default": prefetch is None,
    }
    for window, runs in series.items():
        shares = [r["wait_share"] for r in runs]
        median = statistics.median_low(shares)
        out[f"w{window}"] = {**next(r for r in runs if r["wait_share"] == median), "runs": runs}
    return out


def _padding(stash: Any) -> tuple[int, int]:
    pads = total = 0
    for b in stash.keys("train"):
        tokens = stash.load("train", b)["tokens"]
        pads, total = pads + int((tokens == 0).sum()), total + int(tokens.numel())
    return pads, total


def bucketing(work: Path, repeats_: int = 15) -> dict[str, Any]:
    """The text example primed both ways ``repeats_`` times, interleaved (in this process).

    Besides each whole prime, the plan alone (``Encoder.plan()``, where bucketing reads every
    data point's length) is timed: what bucketing adds, without the prime's disk writes.
    """
    ways: dict[str, dict[str, Any]] = {"random": {}, "bucketed": {"bucket_by": "tokens"}}
    times_: dict[str, list[float]] = {way: [] for way in ways}
    plans: dict[str, list[float]] = {way: [] for way in ways}
    result: dict[str, Any] = {}
    for run in range(repeats_ + 1):  # the first round warms imports and caches, untimed
        for way, options in ways.items():
            path = work / f"text-{way}"
            shutil.rmtree(path, ignore_errors=True)
            stash = text(str(path), **options)
            start = time.perf_counter()
            stash.encoder.plan()
            planned = time.perf_counter()
            stash.prime()
            if run:
                plans[way].append(planned - start)
                times_[way].append(time.perf_counter() - planned)
            pads, total = _padding(stash)
            result[way] = {"pad_tokens": pads, "tokens": total, "share": pads / total}
            shutil.rmtree(path, ignore_errors=True)
    for way in ways:
        result[way]["prime_s"] = statistics.median(times_[way])
        result[way]["prime_runs_s"] = times_[way]
        result[way]["plan_s"] = statistics.median(plans[way])
    result["batches"] = len(text(str(work / "text-count")).keys("train"))
    shutil.rmtree(work / "text-count", ignore_errors=True)
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    """Information rows: each measurement's numbers."""
    sec = f"re-dealt epochs (shuffle_window={WINDOW})"
    out = [
        Row(
            sec,
            f"small store, epoch 1 vs epoch 0, shuffle_window={w}: batches repeating a member set",
            f"{run['repeated']:,} of {run['batches']:,} ({run['share']:.1%})",
        )
        for w, run in ((0, result["repeats"]["w0"]), (WINDOW, result["repeats"][f"w{WINDOW}"]))
    ]
    for size in ("large", "small"):
        runs = result["speed"][size]
        out.append(
            Row(
                sec,
                f"{size} batches ({fmt(result['batch_bytes'][size] / 1e3)} KB), iter_batches "
                f"1 consumer: shuffle_window={WINDOW} vs 0 (interleaved medians)",
                f"{fmt(runs[f'w{WINDOW}']['mb_s'])} vs {fmt(runs['w0']['mb_s'])} MB/s",
                run=runs[f"w{WINDOW}"],
            )
        )
    for key in ("trainer", "trainer_prefetch4"):
        step = result.get(key)
        if step is None:
            continue
        w0, w16, ahead = step["w0"], step[f"w{WINDOW}"], step["prefetch"]
        prefetch = (
            f"default prefetch ({ahead[f'w{WINDOW}']} with the window, {ahead['w0']} without)"
            if step.get("default")
            else f"prefetch {ahead['w0']}"
        )
        out.append(
            Row(
                sec,
                f"large batches, a trainer stepping {fmt(step['step_s'] * 1e3, 2)} ms a batch "
                f"({STEP_SHARE:.0%} of its read time), {prefetch}: data wait share, "
                f"shuffle_window={WINDOW} vs 0",
                f"{w16['wait_share']:.1%} vs {w0['wait_share']:.1%} of the pass "
                f"({fmt(w16['batches_s'])} vs {fmt(w0['batches_s'])} batches/s)",
            )
        )
    mem = result["memory"]
    link = mem[f"w{WINDOW}"].get("in_flight") or ["n/a", "n/a"]
    out.append(
        Row(
            sec,
            f"client peak RSS growth (anonymous memory of it), large store, prefetch "
            f"{mem['prefetch']}: shuffle_window={WINDOW} (default client; in_flight_bytes=0) "
            "vs 0",
            "; ".join(
                f"{fmt(run['growth'] / MB)} ({fmt(run['anon_growth'] / MB)})"
                for run in (mem[f"w{WINDOW}"], mem[f"w{WINDOW}_floor"])
            )
            + f" vs {fmt(mem['w0']['growth'] / MB)} ({fmt(mem['w0']['anon_growth'] / MB)}) MB "
            f"({fmt(mem[f'w{WINDOW}']['batches'])} batches read; the default client's "
            f"requests in flight: {link[0]}, its floor {link[1]})",
        )
    )
    for size, build in result.get("building", {}).items():
        top = dealcost.ceiling(result["speed"][size]["w0"], build)
        out.append(
            Row(
                f"{sec}: the building alone, and the ratios the CPUs allow",
                f"{size} batches: client CPU s/GB building new batches from held stored ones "
                f"(B, no reader); the shuffle_window=0 run's client + server s/GB (S; share of "
                f"the {build['cpus']} CPUs busy); ceilings of shuffle_window={WINDOW} vs 0: "
                "S / (S + B) at that run's CPU use, and with every CPU busy (MB/s)",
                f"{build['cpu_s_gb']:.3f}; "
                + (
                    "n/a"
                    if top is None
                    else f"{top['stored_s_gb']:.2f} ({top['busy']:.0%}); {top['same']:.2f} x; "
                    f"{top['ratio']:.2f} x ({fmt(top['mb_s'])} MB/s)"
                ),
            )
        )
    for size, place in result.get("placement", {}).items():
        out.append(
            Row(
                f"{sec}: where rows land (socketpair, no server)",
                f"{size} batches ({fmt(place['batch_bytes'] / 1e3)} KB), windows of "
                f"{place['window']}: receiving thread's CPU s/GB (MB/s), "
                + ", ".join(placement.WAYS),
                ", ".join(
                    f"{place[way]['cpu_s_gb']:.3f} ({fmt(place[way]['mb_s'])})"
                    for way in placement.WAYS
                ),
            )
        )
    buckets = result["bucketing"]
    for way in ("random", "bucketed"):
        b = buckets[way]
        out.append(
            Row(
                "length bucketing (text example)",
                f"{way} batches: pad tokens of train ({buckets['batches']} batches); prime "
                "time; its plan alone",
                f"{b['pad_tokens']:,} of {b['tokens']:,} ({b['share']:.1%}); "
                f"{fmt(b['prime_s'] * 1e3)} ms; {fmt(b['plan_s'] * 1e3, 2)} ms",
            )
        )
    return out


def targets(result: dict[str, Any] | None) -> list[Row]:
    """Repeats, speed by batch size, client memory, padding cut and priming time."""
    sec = "re-dealt epochs"
    rep = None if result is None else result["repeats"][f"w{WINDOW}"]["share"]
    out = [
        Row(
            sec,
            f"shuffle_window={WINDOW}: epoch 1's batches repeating a member set of epoch 0",
            "n/a" if rep is None else f"{rep:.2%}",
            "< 1 %",
            None if rep is None else rep < 0.01,
        )
    ]
    for size in ("large", "small"):
        runs = None if result is None else result["speed"][size]
        ratio = None if runs is None else runs["ratio"]
        build = None if result is None else result.get("building", {}).get(size)
        top = None if runs is None or build is None else dealcost.ceiling(runs["w0"], build)
        out.append(
            Row(
                sec,
                f"{size} batches: iter_batches shuffle_window={WINDOW} vs 0, MB/s (ceilings: at "
                "the stored run's CPU use; every CPU busy)",
                times(ratio)
                + ("" if top is None else f" ({times(top['same'])}; {times(top['ratio'])})"),
                ">= 0.80 x",
                None if ratio is None else ratio >= 0.8,
            )
        )
    mem = None if result is None else result["memory"]
    bound = None if mem is None else (WINDOW + mem["prefetch"]) * mem["batch_bytes"]
    growth = None if mem is None else mem[f"w{WINDOW}_floor"]["anon_growth"]
    out.append(
        Row(
            sec,
            f"client peak anonymous memory growth (the data it holds), shuffle_window={WINDOW}, "
            "prefetch 4, in_flight_bytes=0, vs (W + prefetch) x batch",
            f"{times(div(growth, bound))} ({fmt(None if growth is None else growth / MB)} / "
            f"{fmt(None if bound is None else bound / MB)} MB)",
            "<= 1.00 x",
            None if growth is None or bound is None else growth <= bound,
        )
    )
    buckets = None if result is None else result["bucketing"]
    cut = (
        None
        if buckets is None
        else div(buckets["random"]["pad_tokens"], buckets["bucketed"]["pad_tokens"])
    )
    slower = (
        None
        if buckets is None
        else div(buckets["bucketed"]["prime_s"], buckets["random"]["prime_s"])
    )
    out += [
        Row(
            "length bucketing",
            "text example: pad tokens, random batches vs bucket_by='tokens'",
            times(cut),
            ">= 3.00 x",
            None if cut is None else cut >= 3,
        ),
        Row(
            "length bucketing",
            "text example: prime time, bucket_by='tokens' vs random (interleaved medians)",
            times(slower),
            "<= 1.10 x",
            None if slower is None else slower <= 1.1,
        ),
    ]
    return out


def measure_all(
    small_url: str,
    load: Callable[[str, int], dict[str, Any]],
    client_memory: Callable[[], dict[str, Any]],
    prefetch: int,
    batch_bytes: dict[str, int],
    step: Callable[[str, Callable[[], Any]], Any],
    sizes: Sequence[str] = ("large", "small"),
    large: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Every measurement of the section but bucketing (``load(size, W)``: one load run).

    ``large``: the large store's URL and the batches a pass for the trainer measurements
    (after the speed runs, which give their step), with each window's default prefetch and
    with prefetch 4; ``None``: not measured.
    """
    result: dict[str, Any] = {
        "window": WINDOW,
        "batch_bytes": batch_bytes,
        "repeats": step("re-dealt epochs: batch repeats", lambda: repeats(small_url, prefetch)),
        "speed": {
            size: speed(lambda w, s=size: step(f"re-dealt epochs: {s}, W={w}", lambda: load(s, w)))
            for size in sizes
        },
    }
    if large is not None and "large" in result["speed"]:
        url, count = large
        step_s = STEP_SHARE * batch_bytes["large"] / (result["speed"]["large"]["w0"]["mb_s"] * MB)
        result["trainer"] = step(
            "re-dealt epochs: a stepping trainer", lambda: trainer(url, step_s, None, count)
        )
        result["trainer_prefetch4"] = step(
            "re-dealt epochs: a stepping trainer, prefetch 4",
            lambda: trainer(url, step_s, 4, count),
        )
    result["memory"] = step("re-dealt epochs: client RSS", client_memory)
    return result
