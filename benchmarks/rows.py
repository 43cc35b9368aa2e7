"""The rows of every section, built from a run's results (sections not run have no rows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import compression, link, own_data, rebatch, reference_prime
from .ceiling import RECEIVE_BUFFERS, SEND_BUFFERS
from .table import Row, div, fmt, latency, rate, times

__all__ = ["ceiling_run", "rows"]

MB = 1e6

CEILINGS = {
    "distinct_1": f"raw TCP, 1 MiB messages back to back, distinct buffers ({SEND_BUFFERS} sent "
    f"in turn, {RECEIVE_BUFFERS} received into), 1 pair",
    "distinct_4": "the same, 4 sender/receiver pairs at once",
    "hot_stream_1": "raw TCP, cache-hot: one buffer each side, back to back, 1 pair (info)",
    "hot_request_1": "raw TCP, cache-hot, one 1-byte request per message, 1 pair (info)",
    "files_sendfile_1": "raw TCP, the large store's files (1 MiB of each, opened for each "
    "message) by os.sendfile, 1 pair (info: the data listener's default way)",
    "files_mapped_1": "the same files mapped and sent with sendall, 1 pair (info: the way of "
    "data_sendfile=false)",
}

SERVING = {
    "floor_raw_1": "I/O floor server + raw client (no checksums), 1 consumer, {per_request} ids "
    "a request",
    "floor_1": "I/O floor server + BatchClient.iter_batches prefetch {prefetch}, 1 consumer",
    "floor_4": "I/O floor server + BatchClient.iter_batches prefetch {prefetch}, 4 consumers",
    "raw_1": "batchstash + raw client (no checksums), API port, 1 consumer, {per_request} ids a "
    "request",
    "raw_data_1": "batchstash + raw client (no checksums), data port, 1 consumer",
    "iter_1": "batchstash + BatchClient.iter_batches prefetch {prefetch}, device=None, 1 consumer",
    "iter_threads_1": "batchstash + BatchClient.iter_batches prefetch {prefetch}, device=None, "
    "pipelined=False (a thread a request), 1 consumer",
    "raw_data_mmap_1": "batchstash data_sendfile=false + raw client (no checksums), data port, "
    "1 consumer",
    "iter_mmap_1": "batchstash data_sendfile=false + BatchClient.iter_batches prefetch "
    "{prefetch}, device=None, 1 consumer",
    "raw_data_sendfile_1": "batchstash data_sendfile=true + raw client (no checksums), data "
    "port, 1 consumer",
    "iter_sendfile_1": "batchstash data_sendfile=true + BatchClient.iter_batches prefetch "
    "{prefetch}, device=None, 1 consumer",
    "iter_cpu_1": "batchstash + BatchClient.iter_batches prefetch {prefetch}, device='cpu', "
    "1 consumer",
    "iter_4": "batchstash + BatchClient.iter_batches prefetch {prefetch}, device=None, 4 consumers",
    "seq_1": "batchstash + BatchClient.batch() one by one, 1 consumer: request to tensors",
    "seq_4": "batchstash + BatchClient.batch() one by one, 4 consumers: request to tensors",
}
"""Serving rows by run key."""

FLOORS = {
    "raw_data_sendfile_1": "files_sendfile_1",
    "iter_sendfile_1": "files_sendfile_1",
    "raw_data_mmap_1": "files_mapped_1",
    "iter_mmap_1": "files_mapped_1",
}
"""Data-port rows and the bare loop that sends the stored files their way (a ceiling row)."""

LATENCY = {"seq_1", "seq_4"}
"""Serving rows that show their latency: one ``batch()`` call, request to tensors."""

AUTO = {"raw_data_1", "iter_1"}
"""Rows against the default server, which say how ``data_sendfile=auto`` sends to them."""


def ceiling_run(results: dict[str, Any], consumers: int) -> dict[str, Any] | None:
    """The distinct-buffer ceiling with as many pairs as ``consumers`` (``None``: not run)."""
    run = results.get("ceiling", {}).get(f"distinct_{consumers}")
    return run if run and "mb_s" in run else None


def _ceiling_rows(results: dict[str, Any]) -> list[Row]:
    return [
        Row("ceiling", label, f"{fmt(run['mb_s'])} MB/s", run=run)
        for key, label in CEILINGS.items()
        if (run := results["ceiling"].get(key))
    ]


def _serving_row(results: dict[str, Any], size: str, key: str) -> Row:
    runs = results[f"batchstash_{size}"]
    run, label = runs[key], SERVING[key].format(**runs)
    sec = f"serving, {size} ({runs['batch_bytes']:,} B)"
    if "skipped" in run:
        return Row(sec, label, f"n/a: {run['skipped']}")
    result = rate(run)
    top = ceiling_run(results, run["consumers"]) if size == "large" else None
    if top is not None:
        result += f"; {times(div(run['mb_s'], top['mb_s']))} ceiling distinct"
        floor = results.get("ceiling", {}).get(FLOORS.get(key, ""))
        if floor and "mb_s" in floor:
            result += f", {times(div(run['mb_s'], floor['mb_s']))} its way's bare loop"
    if key in AUTO and "auto_way" in runs:
        result += f"; data_sendfile=auto chose {runs['auto_way']}"
    if key in LATENCY:
        result += f"; {latency(run)}"
    return Row(sec, label, result, run=run)


def _serving_rows(results: dict[str, Any], size: str) -> list[Row]:
    """Each client against each server; the large rows as a share of the same-pairs ceiling."""
    runs = results[f"batchstash_{size}"]
    out = [_serving_row(results, size, key) for key in SERVING if key in runs]
    out.append(
        Row(
            out[0].section,
            "batchstash + BatchClient.iter_batches, 1 consumer: wait in next()",
            latency(runs["iter_1"]),
        )
    )
    return out


def _baseline_rows(base: dict[str, Any]) -> list[Row]:
    sec = "baselines, large batches"
    out = [
        Row(
            sec,
            f"local DataLoader, torch.save files, num_workers={workers}",
            rate(base[f"dataloader_{workers}"]),
        )
        for workers in (0, 2)
    ]
    out.append(Row(sec, "pickled batch files, loaded one by one", rate(base["pickle"])))
    return out


DATALOADER = {
    "iter": "BatchClient.iter_batches prefetch {prefetch}",
    "dataset_0": "DataLoader(BatchDataset prefetch {prefetch}), num_workers=0",
    "dataset_2": "DataLoader(BatchDataset prefetch {prefetch}), num_workers=2, persistent",
}
"""The DataLoader path's rows by way (one process; median of the interleaved runs)."""


def _dataloader_rows(dl: dict[str, Any]) -> list[Row]:
    sec = f"DataLoader path, large ({dl['batch_bytes']:,} B)"
    out = []
    for way, label in DATALOADER.items():
        run = dl[way]
        runs = ", ".join(fmt(r) for r in run["runs_mb_s"])
        result = f"{fmt(run['mb_s'])} MB/s (median of {runs})"
        if way != "iter":
            result += f"; {times(dl[f'{way}_vs_iter'])} iter_batches"
        out.append(Row(sec, label.format(**dl), result))
    return out


def _naive_rows(naive: dict[str, Any]) -> list[Row]:
    labels = {
        "large_1": ("large", "1 consumer"),
        "large_4": ("large", "4 consumers"),
        "small_1": ("small", "1 consumer"),
    }
    return [
        Row(
            f"baselines, {size} batches",
            f"minimal FastAPI bytes-from-memory, {size}, {who}",
            f"{rate(naive[key])}; {latency(naive[key])}",
            run=naive[key],
        )
        for key, (size, who) in labels.items()
    ]


def _build_rows(builds: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "priming",
            f"build the {name} store: {b['store_batches']} batches of "
            f"{b['batch_bytes']:,} B, 2 workers",
            f"{fmt(b['rate'], 1)} batches/s ({fmt(b['wall_s'], 1)} s)",
        )
        for name, b in builds.items()
    ]


def _priming_rows(prime: dict[str, Any]) -> list[Row]:
    sec = f"priming ({prime['batches']} large batches)"
    one, two = prime["workers_1"], prime["workers_2"]
    out = [
        Row(
            sec,
            f"{w} worker(s): batches/s (whole job; from first stored batch)",
            f"{fmt(r['rate'], 1)}; {fmt(r['steady_rate'], 1)}",
        )
        for w, r in ((1, one), (2, two))
    ]
    warm = prime.get("warm_2")
    if warm is not None:
        first = warm["first_batch_s"]
        out.append(
            Row(
                sec,
                "2 workers, a second prime on the same server (warm workers): first stored "
                f"batch after the request (the first prime's: {fmt(two['first_batch_s'], 2)} s)",
                f"{fmt(first, 2)} s; {fmt(warm['rate'], 1)} batches/s",
                "<= 0.5 s",
                first is not None and first <= 0.5,
            )
        )
    warm_one = prime.get("warm_1")
    if warm is not None and warm_one is not None:
        ratio = div(warm["rate"], warm_one["rate"])
        out.append(
            Row(
                sec,
                "2 workers vs 1 worker, second primes on the same servers (warm workers, "
                f"whole job: {fmt(warm['rate'], 1)} vs {fmt(warm_one['rate'], 1)} batches/s)",
                f"{fmt(ratio, 4)} x",
                ">= 1.8 x",
                ratio is not None and ratio >= 1.8,
            )
        )
    out.append(
        Row(
            sec,
            "2 workers vs 1 worker, first primes (whole job, spawning the workers included)",
            f"{fmt(div(two['rate'], one['rate']), 4)} x",
        )
    )
    steady = div(two["steady_rate"], one["steady_rate"])
    out.append(
        Row(
            sec,
            "2 workers vs 1 worker (from first stored batch: start-up left out)",
            f"{fmt(steady, 4)} x",
        )
    )
    for vectorizer, split in prime["breakdown"].items():
        sec_s = split["seconds"]
        total = split["total_s"] or 1.0
        detail = ", ".join(
            f"{k} {100 * v / total:.0f} %" for k, v in sec_s.items() if k != "serialize"
        )
        share = split["persist_share"]
        standard = vectorizer == "series"
        out.append(
            Row(
                sec,
                f"persisting share, {vectorizer} vectorizer"
                + (" (standard)" if standard else " (cheapest vectorizer, info)"),
                f"{fmt(100 * share, 1)} % ({fmt(split['ms_per_batch'], 1)} ms/batch: "
                f"{detail}; wire.encode {1e3 * sec_s['serialize'] / split['batches']:.2f}"
                " ms/batch)",
                "<= 10 %" if standard else "",
                (share is not None and share <= 0.10) if standard else None,
            )
        )
    return out


def _memory_rows(mem: dict[str, Any]) -> list[Row]:
    """The memory section's values (their bounds are judged in the targets table)."""
    sec = "memory"
    small, large = mem["server_small_store"], mem["server_large_store"]
    out = [
        Row(
            sec,
            f"server peak RSS, {s['store_batches']} batch store ({s['batches_read']} read)",
            f"{fmt(s['peak'] / MB)} MB",
        )
        for s in (small, large)
    ]
    out.append(
        Row(sec, "server peak RSS, 5x store vs 1x", times(div(large["peak"], small["peak"]), 3))
    )
    out.extend(
        Row(
            sec,
            f"client RSS growth, prefetch {entry['prefetch']}",
            f"{fmt(entry['growth'] / MB)} MB = {fmt(entry['ratio'], 2)} x prefetch x batch",
        )
        for entry in mem["client"]
    )
    return out


STATUS_CALLS = {
    "status": "GET /v1/admin/status (TestClient)",
    "splits": "GET /v1/splits (TestClient)",
    "status_body": "status body in process (the status route without HTTP)",
    "split_counts": "StoreReader.split_counts() in process",
}


def _status_rows(cost: dict[str, Any]) -> list[Row]:
    """Per call, p50/p99 on the small and the large store and the p50 ratio (target <= 1.5 x)."""
    small, large = cost["small"], cost["large"]
    sec = f"status cost ({small['batches']:,} vs {large['batches']:,} batch store)"
    out = [
        Row(
            sec,
            f"store of {s['batches']:,} batches ({s['objects']:,} objects): build; "
            "one walk + stat of every object (what status used to do)",
            f"{fmt(s['build_s'], 1)} s; walk {fmt(s['walk_ms'], 1)} ms",
        )
        for s in (small, large)
    ]
    for key, label in STATUS_CALLS.items():
        ratio = cost["ratios"][key]
        timing = "; ".join(
            f"{s['batches']:,}: p50 {fmt(s[key]['p50_us'], 1)} us, "
            f"p99 {fmt(s[key]['p99_us'], 1)} us"
            for s in (small, large)
        )
        out.append(
            Row(
                sec,
                f"{label}, {small[key]['calls']} calls: large / small p50",
                f"{fmt(ratio, 2)} x ({timing})",
                "<= 1.5 x",
                ratio <= 1.5,
            )
        )
    return out


def _s3_rows(s3: dict[str, Any]) -> list[Row]:
    """Priming into and serving from moto against a directory store (information, no target)."""
    sec = f"S3 store (moto, {s3['batches']} large batches)"
    ratios = s3["ratios"]
    out = [
        Row(
            sec,
            f"prime into {where}, 2 workers: batches/s (whole job; from first stored batch)",
            f"{fmt(run['rate'], 1)}; {fmt(run['steady_rate'], 1)}",
        )
        for where, run in (
            ("a directory", s3["prime_local"]),
            ("S3 (moto_server on loopback, a slow Python S3 server)", s3["prime_s3"]),
        )
    ]
    out.append(
        Row(
            sec,
            "prime into S3 vs into a directory (whole job; from first stored batch)",
            f"{times(ratios['prime'], 2)}; {times(ratios['prime_steady'], 2)}",
        )
    )
    passes = len(s3["local_2"]["passes_mb_s"])
    out.append(
        Row(
            sec,
            f"serve the directory store (--role serve), 1 consumer, iter_batches "
            f"prefetch {s3['prefetch']}: pass 1; median of the next {passes}",
            f"{rate(s3['local_1'])}; {rate(s3['local_2'])}",
        )
    )
    cold, warm = s3["cold"], s3["warm"]
    out.append(
        Row(
            sec,
            "serve S3 (--role serve), fresh cache, cold: each object fetched from "
            "moto once (measures moto more than batchstash) vs directory pass 1",
            f"{rate(cold)}; {cold['s3_gets']} GETs of {cold['batches']} batches; "
            f"{times(ratios['cold'], 2)}",
        )
    )
    out.append(
        Row(
            sec,
            f"serve S3, warm: the same batches again from the local cache, median "
            f"of {passes} passes (alternated with the directory's) vs the directory's",
            f"{rate(warm)}; {warm['s3_gets']} GETs; {times(ratios['warm'], 2)} "
            f"(warm vs cold {times(ratios['warm_vs_cold'], 1)})",
        )
    )
    return out


def _ray_rows(ray: dict[str, Any]) -> list[Row]:
    """Priming on a local Ray against the process pool, and Ray's start-up (information)."""
    pool, on_ray, start = ray["process"], ray["ray"], ray["startup"]
    sec = f"priming on Ray ({ray['batches']} large batches, {pool['workers']} workers)"
    out = [
        Row(
            sec,
            f"{label}: batches/s (whole job; after the first finished task); "
            "start to first stored batch",
            f"{fmt(run['rate'], 1)}; {fmt(run['steady_rate'], 1)}; "
            f"{fmt(run['first_batch_s'], 2)} s",
        )
        for label, run in (
            ("process pool", pool),
            (f"Ray {ray['version']}, local Ray started by the executor", on_ray),
            ("Ray, a second prime with Ray already running", ray["ray_warm"]),
        )
    ]
    out.append(
        Row(
            sec,
            "Ray vs process pool (whole job; after the first finished task; "
            "whole job with Ray already running)",
            f"{times(ray['ratio'], 2)}; {times(ray['steady_ratio'], 2)}; "
            f"{times(ray['warm_ratio'], 2)}",
        )
    )
    out.append(
        Row(
            sec,
            "Ray start-up: ray.init alone; ray.init to first stored batch; "
            "import ray; ray.shutdown()",
            f"{fmt(start['init_s'], 2)} s; {fmt(start['init_to_first_batch_s'], 2)} s; "
            f"{fmt(start['import_s'], 2)} s; {fmt(start['shutdown_s'], 2)} s",
        )
    )
    return out


def _gpu_rows(gpu: dict[str, Any]) -> list[Row]:
    if "skipped" in gpu or not gpu:
        return [
            Row(
                "gpu",
                "host-to-device copies, trainer data wait",
                f"skipped: {gpu.get('skipped', 'not run')}",
            )
        ]
    copy, trainer = gpu["copy"], gpu["trainer"]
    out = [
        Row(
            "gpu",
            f"host-to-device copy, {kind} ({copy['bytes']:,} B)",
            f"{fmt(copy[f'{kind}_gb_s'], 2)} GB/s",
        )
        for kind in ("pageable", "pinned")
    ]
    for name, label in (
        ("batchstash", "batchstash iter_batches(device='cuda')"),
        ("dataloader_pinned", "local DataLoader, pin_memory=True, 2 workers"),
    ):
        run = trainer[name]
        share = run["wait_share"]
        out.append(
            Row(
                "gpu",
                f"trainer data-wait share of step time, {label}",
                f"{fmt(None if share is None else 100 * share, 1)} % "
                f"(step {fmt(run['step_ms'], 2)} ms)",
            )
        )
    rate = gpu.get("delivered")
    if rate:
        cuda, none = rate["cuda"]["mb_s"], rate["none"]["mb_s"]
        out.append(
            Row(
                "gpu",
                "iter_batches prefetch 24 drained, no trainer: device='cuda' "
                "(pinned receive, side-stream copies) vs device=None",
                f"{fmt(cuda, 0)} vs {fmt(none, 0)} MB/s ({fmt(div(cuda, none), 2)} x)",
            )
        )
    return out


SECTION_ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "ceiling": _ceiling_rows,
    "batchstash_large": lambda r: _serving_rows(r, "large"),
    "batchstash_small": lambda r: _serving_rows(r, "small"),
    "baselines": lambda r: _baseline_rows(r["baselines"]),
    "dataloader": lambda r: _dataloader_rows(r["dataloader"]),
    "naive": lambda r: _naive_rows(r["naive"]),
    "priming": lambda r: _priming_rows(r["priming"]),
    "reference_prime": lambda r: reference_prime.rows(r["reference_prime"]),
    "builds": lambda r: _build_rows(r["builds"]),
    "memory": lambda r: _memory_rows(r["memory"]),
    "status": lambda r: _status_rows(r["status"]),
    "s3": lambda r: _s3_rows(r["s3"]),
    "ray": lambda r: _ray_rows(r["ray"]),
    "own_data": lambda r: own_data.rows(r["own_data"]),
    "compression": lambda r: compression.rows(r["compression"]),
    "rebatch": lambda r: rebatch.rows(r["rebatch"]),
    "gpu": lambda r: _gpu_rows(r["gpu"]),
    "link": lambda r: link.rows(r["link"]),
}
"""Row builders by results key, in table order."""


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the sections this run measured."""
    return [row for key, build in SECTION_ROWS.items() if key in results for row in build(results)]
