"""The report: targets judged on same-run ratios, a table, ``results.json`` and ``results.png``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .chart import draw

__all__ = ["Row", "ceiling_mb_s", "machine", "markdown", "rows", "write"]

MB = 1e6


def machine() -> dict[str, Any]:
    """The machine and the software versions the numbers come from."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = 0
    try:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    versions = {}
    for name in ("torch", "httpx", "fastapi", "uvicorn", "uvloop", "httptools", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "commit": _commit(),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(memory_bytes / 1e9, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def _commit() -> str | None:
    """The repository's commit, ``+changes`` when the package code differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "client", "service"],
                               cwd=root, check=True, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" +changes" if dirty else "")


@dataclass(frozen=True)
class Row:
    """One line of the table: a measurement, its value, and its target's verdict if it has one."""

    section: str
    measurement: str
    result: str
    target: str = ""
    met: bool | None = None

    @property
    def status(self) -> str:
        """``met``, ``NOT met`` or empty (no target)."""
        return "" if self.met is None else ("met" if self.met else "NOT met")


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _x(ratio: float | None, digits: int = 2) -> str:
    return "n/a" if ratio is None else f"{ratio:,.{digits}f} x"


def _rate(run: dict[str, Any]) -> str:
    return f"{_f(run['mb_s'])} MB/s, {_f(run['batches_s'])} batches/s"


def _latency(run: dict[str, Any]) -> str:
    return f"p50 {_f(run['p50_ms'], 2)} ms, p99 {_f(run['p99_ms'], 2)} ms"


def ceiling_mb_s(results: dict[str, Any]) -> float:
    """The ceiling the ratios use: the faster of the two raw-socket shapes."""
    return max(r["mb_s"] for r in results["ceiling"].values())


def rows(results: dict[str, Any]) -> list[Row]:
    """Every table row, targets judged on ratios within this run's results."""
    out: list[Row] = []
    top = ceiling_mb_s(results)
    for mode, run in results["ceiling"].items():
        shape = "back to back" if mode == "stream" else "one request per message"
        out.append(Row("ceiling", f"raw TCP, 1 MiB messages, {shape}", f"{_f(run['mb_s'])} MB/s"))
    large, small, base = results["batchstash_large"], results["batchstash_small"], results[
        "baselines"]
    best_local = max(base["dataloader_0"]["mb_s"], base["dataloader_2"]["mb_s"])
    sec = f"batchstash, large ({large['batch_bytes']:,} B)"
    for consumers, factor in ((1, 0.8), (4, 0.9)):
        run = large[f"iter_{consumers}"]
        ratio = _ratio(run["mb_s"], top)
        out.append(Row(sec, f"{consumers} consumer(s), iter_batches prefetch {large['prefetch']}",
                       f"{_rate(run)}; {_f(ratio, 2)} x ceiling",
                       f">= {factor} x ceiling", ratio is not None and ratio >= factor))
    run = large["iter_1"]
    ratio = _ratio(run["mb_s"], best_local)
    out.append(Row(sec, "1 consumer vs best local DataLoader (torch.save files)",
                   f"{_f(ratio, 2)} x", "> 1 x", ratio is not None and ratio > 1))
    for consumers in (1, 4):
        run = large[f"seq_{consumers}"]
        out.append(Row(sec, f"{consumers} consumer(s), batch() one by one: latency",
                       f"{_latency(run)}; {_rate(run)}"))
    out.append(Row(sec, "1 consumer, iter_batches: wait in next()", _latency(large["iter_1"])))
    sec = f"batchstash, small ({small['batch_bytes']:,} B)"
    run = small["iter_1"]
    out.append(Row(sec, f"1 consumer, iter_batches prefetch {small['prefetch']}", _rate(run),
                   ">= 6,000 batches/s",
                   run["batches_s"] is not None and run["batches_s"] >= 6000))
    out.append(Row(sec, f"4 consumers, iter_batches prefetch {small['prefetch']}",
                   _rate(small["iter_4"])))
    for consumers in (1, 4):
        run = small[f"seq_{consumers}"]
        out.append(Row(sec, f"{consumers} consumer(s), batch() one by one: latency",
                       f"{_latency(run)}; {_rate(run)}"))
    sec = "baselines, large batches"
    for workers in (0, 2):
        run = base[f"dataloader_{workers}"]
        out.append(Row(sec, f"local DataLoader, torch.save files, num_workers={workers}",
                       _rate(run)))
    out.append(Row(sec, "pickled batch files, loaded one by one", _rate(base["pickle"])))
    out.extend(_floor_rows(results, top))
    naive = results["naive"]
    for key, label in (("large_1", "large, 1 consumer"), ("large_4", "large, 4 consumers"),
                       ("small_1", "small, 1 consumer")):
        run = naive[key]
        out.append(Row(sec if key != "small_1" else "baselines, small batches",
                       f"minimal FastAPI bytes-from-memory, {label}",
                       f"{_rate(run)}; {_latency(run)}"))
    out.extend(_priming_rows(results["priming"]))
    for store in (large, small):
        build = store["prime"]
        out.append(Row("priming", f"build the {store['store_batches']} batch store of "
                       f"{store['batch_bytes']:,} B batches, 2 workers",
                       f"{_f(build['rate'], 1)} batches/s ({_f(build['wall_s'], 1)} s)"))
    out.extend(_memory_rows(results["memory"]))
    out.extend(_status_rows(results["status"]))
    out.extend(_s3_rows(results["s3"]))
    out.extend(_ray_rows(results["ray"]))
    out.extend(_gpu_rows(results.get("gpu", {})))
    return out


def _floor_rows(results: dict[str, Any], top: float) -> list[Row]:
    """The same client against the minimal threaded server: what any Python server leaves."""
    out = []
    for size in ("large", "small"):
        run = results[f"batchstash_{size}"]
        sec = f"baselines, {size} batches"
        for consumers in (1, 4):
            floor = run.get(f"floor_{consumers}")
            if floor is None:
                continue
            ours = _ratio(run[f"iter_{consumers}"]["mb_s"], floor["mb_s"])
            out.append(Row(sec, f"I/O floor: iter_batches from a minimal threaded server "
                           f"(mmap + sendall), {consumers} consumer(s)",
                           f"{_rate(floor)}; {_f(_ratio(floor['mb_s'], top), 2)} x ceiling; "
                           f"batchstash {_f(ours, 2)} x this"))
    return out


def _priming_rows(prime: dict[str, Any]) -> list[Row]:
    sec = f"priming ({prime['batches']} large batches)"
    one, two = prime["workers_1"], prime["workers_2"]
    out = [Row(sec, f"{w} worker(s): batches/s (whole job; from first stored batch)",
               f"{_f(r['rate'], 1)}; {_f(r['steady_rate'], 1)}")
           for w, r in ((1, one), (2, two))]
    ratio = _ratio(two["rate"], one["rate"])
    out.append(Row(sec, "2 workers vs 1 worker (whole job)", f"{_f(ratio, 4)} x", ">= 1.8 x",
                   ratio is not None and ratio >= 1.8))
    steady = _ratio(two["steady_rate"], one["steady_rate"])
    out.append(Row(sec, "2 workers vs 1 worker (from first stored batch: start-up left out)",
                   f"{_f(steady, 4)} x"))
    for vectorizer, split in prime["breakdown"].items():
        sec_s = split["seconds"]
        total = split["total_s"] or 1.0
        detail = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sec_s.items()
                           if k != "serialize")
        share = split["persist_share"]
        standard = vectorizer == "series"
        out.append(Row(sec, f"persisting share, {vectorizer} vectorizer"
                       + (" (standard)" if standard else " (cheapest vectorizer, info)"),
                       f"{_f(100 * share, 1)} % ({_f(split['ms_per_batch'], 1)} ms/batch: "
                       f"{detail}; wire.encode {1e3 * sec_s['serialize'] / split['batches']:.2f}"
                       " ms/batch)",
                       "<= 10 %" if standard else "",
                       (share is not None and share <= 0.10) if standard else None))
    return out


def _memory_rows(mem: dict[str, Any]) -> list[Row]:
    sec = "memory"
    small, large = mem["server_small_store"], mem["server_large_store"]
    out = [Row(sec, f"server peak RSS, {s['store_batches']} batch store "
               f"({s['batches_read']} read)", f"{_f(s['peak'] / MB)} MB")
           for s in (small, large)]
    ratio = _ratio(large["peak"], small["peak"])
    out.append(Row(sec, "server peak RSS, 5x store vs 1x", f"{_f(ratio, 3)} x", "<= 1.10 x",
                   ratio is not None and ratio <= 1.10))
    for entry in mem["client"]:
        out.append(Row(sec, f"client RSS growth, prefetch {entry['prefetch']}",
                       f"{_f(entry['growth'] / MB)} MB = "
                       f"{_f(entry['ratio'], 2)} x prefetch x batch",
                       "<= 3 x", entry["ratio"] <= 3))
    return out


STATUS_CALLS = {"status": "GET /v1/admin/status (TestClient)",
                "splits": "GET /v1/splits (TestClient)",
                "status_body": "status body in process (the status route without HTTP)",
                "split_counts": "StoreReader.split_counts() in process"}


def _status_rows(cost: dict[str, Any]) -> list[Row]:
    """Per call, p50/p99 on the small and the large store and the p50 ratio (target <= 1.5 x)."""
    small, large = cost["small"], cost["large"]
    sec = f"status cost ({small['batches']:,} vs {large['batches']:,} batch store)"
    out = [Row(sec, f"store of {s['batches']:,} batches ({s['objects']:,} objects): build; "
               "one walk + stat of every object (what status used to do)",
               f"{_f(s['build_s'], 1)} s; walk {_f(s['walk_ms'], 1)} ms") for s in (small, large)]
    for key, label in STATUS_CALLS.items():
        ratio = cost["ratios"][key]
        timing = "; ".join(f"{s['batches']:,}: p50 {_f(s[key]['p50_us'], 1)} us, "
                           f"p99 {_f(s[key]['p99_us'], 1)} us" for s in (small, large))
        out.append(Row(sec, f"{label}, {small[key]['calls']} calls: large / small p50",
                       f"{_f(ratio, 2)} x ({timing})", "<= 1.5 x", ratio <= 1.5))
    return out


def _s3_rows(s3: dict[str, Any]) -> list[Row]:
    """Priming into and serving from moto against a directory store (information, no target)."""
    sec = f"S3 store (moto, {s3['batches']} large batches)"
    ratios = s3["ratios"]
    out = [Row(sec, f"prime into {where}, 2 workers: batches/s (whole job; from first stored "
               "batch)", f"{_f(run['rate'], 1)}; {_f(run['steady_rate'], 1)}")
           for where, run in (("a directory", s3["prime_local"]),
                              ("S3 (moto_server on loopback, a slow Python S3 server)",
                               s3["prime_s3"]))]
    out.append(Row(sec, "prime into S3 vs into a directory (whole job; from first stored batch)",
                   f"{_x(ratios['prime'], 2)}; {_x(ratios['prime_steady'], 2)}"))
    passes = len(s3["local_2"]["passes_mb_s"])
    out.append(Row(sec, f"serve the directory store (--role serve), 1 consumer, iter_batches "
                   f"prefetch {s3['prefetch']}: pass 1; median of the next {passes}",
                   f"{_rate(s3['local_1'])}; {_rate(s3['local_2'])}"))
    cold, warm = s3["cold"], s3["warm"]
    out.append(Row(sec, "serve S3 (--role serve), fresh cache, cold: each object fetched from "
                   "moto once (measures moto more than batchstash) vs directory pass 1",
                   f"{_rate(cold)}; {cold['s3_gets']} GETs of {cold['batches']} batches; "
                   f"{_x(ratios['cold'], 2)}"))
    out.append(Row(sec, f"serve S3, warm: the same batches again from the local cache, median "
                   f"of {passes} passes (alternated with the directory's) vs the directory's",
                   f"{_rate(warm)}; {warm['s3_gets']} GETs; {_x(ratios['warm'], 2)} "
                   f"(warm vs cold {_x(ratios['warm_vs_cold'], 1)})"))
    return out


def _ray_rows(ray: dict[str, Any]) -> list[Row]:
    """Priming on a local Ray against the process pool, and Ray's start-up (information)."""
    pool, on_ray, start = ray["process"], ray["ray"], ray["startup"]
    sec = f"priming on Ray ({ray['batches']} large batches, {pool['workers']} workers)"
    out = [Row(sec, f"{label}: batches/s (whole job; after the first finished task); "
               "start to first stored batch",
               f"{_f(run['rate'], 1)}; {_f(run['steady_rate'], 1)}; "
               f"{_f(run['first_batch_s'], 2)} s")
           for label, run in (("process pool", pool),
                              (f"Ray {ray['version']}, local Ray started by the executor",
                               on_ray),
                              ("Ray, a second prime with Ray already running", ray["ray_warm"]))]
    out.append(Row(sec, "Ray vs process pool (whole job; after the first finished task; "
                   "whole job with Ray already running)",
                   f"{_x(ray['ratio'], 2)}; {_x(ray['steady_ratio'], 2)}; "
                   f"{_x(ray['warm_ratio'], 2)}"))
    out.append(Row(sec, "Ray start-up: ray.init alone; ray.init to first stored batch; "
                   "import ray; ray.shutdown()",
                   f"{_f(start['init_s'], 2)} s; {_f(start['init_to_first_batch_s'], 2)} s; "
                   f"{_f(start['import_s'], 2)} s; {_f(start['shutdown_s'], 2)} s"))
    return out


def _gpu_rows(gpu: dict[str, Any]) -> list[Row]:
    if "skipped" in gpu or not gpu:
        return [Row("gpu", "host-to-device copies, trainer data wait",
                    f"skipped: {gpu.get('skipped', 'not run')}")]
    copy, trainer = gpu["copy"], gpu["trainer"]
    out = [Row("gpu", f"host-to-device copy, {kind} ({copy['bytes']:,} B)",
               f"{_f(copy[f'{kind}_gb_s'], 2)} GB/s") for kind in ("pageable", "pinned")]
    for name, label in (("batchstash", "batchstash iter_batches(device='cuda')"),
                        ("dataloader_pinned", "local DataLoader, pin_memory=True, 2 workers")):
        run = trainer[name]
        share = run["wait_share"]
        out.append(Row("gpu", f"trainer data-wait share of step time, {label}",
                       f"{_f(None if share is None else 100 * share, 1)} % "
                       f"(step {_f(run['step_ms'], 2)} ms)"))
    return out


def markdown(table: list[Row]) -> str:
    """The table as GitHub markdown."""
    lines = ["| section | measurement | result | target | status |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.section} | {r.measurement} | {r.result} | {r.target} | {r.status} |"
              for r in table]
    return "\n".join(lines) + "\n"


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine as one markdown paragraph."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    commit = f" Commit {info['commit']}." if info.get("commit") else ""
    return (f"{info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical "
            f"CPUs, {info['memory_gb']} GB RAM; {info['platform']}; Python {info['python']}; "
            f"{versions}.{commit}")


def write(results: dict[str, Any], out: Path) -> list[Row]:
    """Write ``results.json``, ``results.png`` and ``results.md`` into ``out``; return the rows."""
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    results["targets"] = [
        {"section": r.section, "measurement": r.measurement, "result": r.result,
         "target": r.target, "met": r.met}
        for r in table if r.met is not None
    ]
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    draw(results, out / "results.png")
    (out / "results.md").write_text(
        f"Machine: {machine_markdown(results['machine'])}\n\n"
        f"Mode: `{results['mode']}`, {results['elapsed_s']:.0f} s.\n\n{markdown(table)}")
    return table
