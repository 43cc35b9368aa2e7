"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs and writes its files.

It never asserts a speed: CI machines vary. It asserts the run's shape: every section and row
measured (CPU columns included), every target judged, the chart a real PNG; and that a report of
some sections only (what ``--only`` gives) judges the others' targets ``n/a``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.__main__ import main
from benchmarks.runner import select

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "ceiling",
    "priming",
    "builds",
    "batchstash_large",
    "batchstash_small",
    "baselines",
    "dataloader",
    "naive",
    "memory",
    "status",
    "s3",
    "ray",
    "own_data",
    "compression",
    "reference_prime",
    "rebatch",
    "gpu",
    "link",
    "targets",
    "table",
    "machine",
    "sections",
)
TARGETS = 30  # wire: 4, local DataLoader: 1, DataLoader path: 1, small: 1, memory: 1 + 1 per
# client depth (2), priming: 3 (with warm workers' first batch), status: 4, own data: 2,
# reference-shaped priming: 1, link: 2, compression over a link: 2, re-dealt epochs: 4, length
# bucketing: 2 (the S3 and Ray sections are information rows: no target)
LINK = "across a link"  # root only: its targets are n/a where it is skipped
CEILINGS = {
    "distinct_1": 1,
    "distinct_4": 4,
    "hot_stream_1": 1,
    "hot_request_1": 1,
    "files_sendfile_1": 1,
    "files_mapped_1": 1,
}
SERVING = {
    "raw_1": 1,
    "iter_1": 1,
    "iter_threads_1": 1,
    "iter_mmap_1": 1,
    "iter_sendfile_1": 1,
    "iter_cpu_1": 1,
    "iter_4": 4,
    "seq_1": 1,
    "seq_4": 4,
    "floor_raw_1": 1,
    "floor_1": 1,
    "floor_4": 4,
}
CPU_COLUMNS = ("server CPU s/GB", "client CPU s/GB", "cores: server / client", "limit")


def _assert_cpu(run: dict, what: object) -> None:
    """A load run's CPU columns: both sides measured (quick runs may round to 0 ticks)."""
    assert run["client_cpu_s"] > 0 and run["client_s_gb"] > 0, what
    assert run["server_cpu_s"] >= 0 and run["server_s_gb"] >= 0, what
    assert run["server_cores"] >= 0 and run["client_cores"] > 0, what
    assert run["limit"] in {"server", "client", "machine"}, what


def test_only_names_sections_and_aliases() -> None:
    assert select(["wire"]) == ["ceiling", "serving"]
    assert select(["memory", "wire"]) == ["ceiling", "serving", "memory"]
    assert select(None)[0] == "priming" and len(select(None)) == 16
    with pytest.raises(ValueError, match="unknown section"):
        select(["wire", "nope"])
    with pytest.raises(SystemExit) as exc:  # refused before anything starts
        main(["--only", "nope"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert re.match(r"Run \d{4}-\d{2}-\d{2} \d{2}:\d{2} on: ", table), table[:200]  # dated
    assert table.count("\n| ") >= 50 and "| section | measurement |" in table
    assert "Targets" in table and "| server CPU s/GB | client CPU s/GB |" in table
    results = json.loads((out / "results.json").read_text())
    assert [s for s in SECTIONS if s not in results] == []
    assert results["mode"] == "quick"

    assert results["sections"] == select(None)
    assert results["batchstash_large"]["batch_bytes"] == 1_050_624
    assert results["batchstash_small"]["batch_bytes"] == 67_584
    for size, per_request in (("large", 8), ("small", 32)):
        runs = results[f"batchstash_{size}"]
        assert runs["per_request"] == per_request
        data_port = (
            {"raw_data_1": 1, "raw_data_mmap_1": 1, "raw_data_sendfile_1": 1}
            if runs["data_port"] is not None
            else {}
        )
        if not data_port:
            assert "no x-batchstash-data-port header" in runs["raw_data_1"]["skipped"]
        for key, consumers in {**SERVING, **data_port}.items():
            measured = runs[key]
            assert measured["consumers"] == consumers, (size, key)
            assert measured["batches"] > 0 and measured["bytes"] > 0, (size, key)
            assert measured["p99_ms"] >= measured["p50_ms"] > 0, (size, key)
            _assert_cpu(measured, (size, key))
        raw = runs["raw_1"]
        assert raw["bytes"] == raw["batches"] * runs["batch_bytes"]  # whole batches, parsed
    assert set(results["builds"]) == {"large", "small"}
    assert set(results["ceiling"]) == set(CEILINGS)
    for key, pairs in CEILINGS.items():
        run = results["ceiling"][key]
        assert run["consumers"] == pairs and run["bytes"] == run["batches"] * (1 << 20), key
        _assert_cpu(run, key)
    rows = results["table"]
    assert all(set(CPU_COLUMNS) <= set(row) for row in rows)
    assert sum(1 for row in rows if row["limit"]) >= len(CEILINGS) + 2 * len(SERVING)
    assert {"dataloader_0", "dataloader_2", "pickle"} <= set(results["baselines"])
    dl = results["dataloader"]
    assert dl["batch_bytes"] == 1_050_624 and dl["repeats"] == 5
    for way in ("iter", "dataset_0", "dataset_2"):
        assert len(dl[way]["runs_mb_s"]) == 5 and dl[way]["mb_s"] in dl[way]["runs_mb_s"], way
        assert dl[way]["batches"] > 0 and dl[way]["bytes"] == dl[way]["batches"] * 1_050_624, way
    assert dl["dataset_0_vs_iter"] > 0 and dl["dataset_2_vs_iter"] > 0
    assert set(results["naive"]) >= {"large_1", "large_4", "small_1"}
    assert {"workers_1", "workers_2", "warm_1", "warm_2", "breakdown"} <= set(results["priming"])
    assert results["priming"]["warm_2"]["first_batch_s"] > 0
    ref = results["reference_prime"]
    assert ref["batches"] == 10 and len(ref["prime_runs"]) == len(ref["baseline_runs"]) == 3
    assert ref["prime_s"] > 0 and ref["baseline_s"] > 0 and ref["ratio"] > 0
    assert [c["prefetch"] for c in results["memory"]["client"]] == [1, 4]
    assert results["memory"]["server_large_store"]["store_batches"] == (
        5 * results["memory"]["server_small_store"]["store_batches"]
    )
    status = results["status"]
    assert status["sizes"] == [100, 10_000]
    for name, size in (("small", 100), ("large", 10_000)):
        store = status[name]
        assert store["batches"] == size and store["objects"] == 2 * size, name
        assert store["bytes"] > 0 and store["build_s"] > 0 and store["walk_ms"] > 0, name
        for call in ("status", "splits", "status_body", "split_counts"):
            assert store[call]["calls"] > 0, (name, call)
            assert store[call]["p99_us"] >= store[call]["p50_us"] > 0, (name, call)
    ratios = status["ratios"]
    assert set(ratios) == {"status", "splits", "status_body", "split_counts"}
    assert all(isinstance(r, float) and r > 0 for r in ratios.values())
    s3 = results["s3"]
    assert s3["batches"] == 10 and s3["batch_bytes"] == 1_050_624 and "moto" in s3["moto"]
    for key in ("prime_local", "prime_s3"):
        assert s3[key]["batches"] == 10 and s3[key]["rate"] > 0, key
    for key in ("local_1", "local_2", "cold", "warm"):
        assert s3[key]["batches"] > 0 and s3[key]["mb_s"] > 0, key
    assert len(s3["warm"]["passes_mb_s"]) == len(s3["local_2"]["passes_mb_s"]) == 3
    assert s3["cold"]["s3_gets"] > 0 and s3["warm"]["s3_gets"] == 0  # warm: all from the cache
    assert s3["cache_objects"] > 0
    for key in ("prime", "cold", "warm", "warm_vs_cold"):
        assert s3["ratios"][key] > 0, key
    ray = results["ray"]
    for key in ("process", "ray", "ray_warm"):
        run = ray[key]
        assert run["batches"] == 8 and run["rate"] > 0 and run["first_batch_s"] > 0, key
    startup = ray["startup"]
    assert all(
        startup[k] > 0 for k in ("import_s", "init_s", "init_to_first_batch_s", "shutdown_s")
    )
    assert startup["init_to_first_batch_s"] > startup["init_s"]
    assert ray["ratio"] > 0 and ray["warm_ratio"] > 0
    compressed = results["compression"]
    for kind in ("tokens", "floats"):
        runs = compressed[kind]
        assert set(runs) == {"none", "zstd", "auto"}
        count = 48 if kind == "tokens" else 12  # 4 x as many token batches: the same bytes
        assert all(r["batches"] == count and r["cpu_s"] > 0 for r in runs.values()), kind
        assert (
            runs["zstd"]["wire_bytes"] < runs["none"]["wire_bytes"] == runs["none"]["decoded_bytes"]
        )
    assert compressed["tokens"]["auto"]["codecs"] == {"label+tokens": "zstd-3"}
    assert compressed["floats"]["auto"]["codecs"] == {"label+x": "none"}  # random floats: raw
    assert compressed["floats"]["auto"]["wire_bytes"] == compressed["floats"]["none"]["wire_bytes"]
    assert compressed["link"] == {"skipped": "skipped: a quick run"}
    redealt = results["rebatch"]
    assert redealt["window"] == 16 and set(redealt["speed"]) == {"large", "small"}
    for size in ("large", "small"):
        speed = redealt["speed"][size]
        assert speed["ratio"] > 0 and len(speed["w16"]["runs_mb_s"]) == 3, size
        assert speed["w16"]["batches"] > 0 and speed["w0"]["batches"] > 0, size
    assert redealt["repeats"]["w0"]["share"] == 1.0  # stored batches repeat every epoch
    assert redealt["repeats"]["w16"]["batches"] == 50
    mem = redealt["memory"]
    assert mem["w16"]["growth"] > mem["w0"]["growth"] > 0 and mem["w16"]["window"] == 16
    for run in (mem["w0"], mem["w16"], mem["w16_floor"]):  # the data, not the code paged in
        assert 0 < run["anon_growth"] <= run["growth"] + (1 << 20)  # + pages the kernel took back
    for key, ahead in (
        ("trainer", {"w0": 4, "w16": 24}),
        ("trainer_prefetch4", {"w0": 4, "w16": 4}),
    ):
        stepping = redealt[key]
        assert stepping["step_s"] > 0 and len(stepping["w16"]["runs"]) == 3
        assert 0 <= stepping["w16"]["wait_share"] < 1 and stepping["w0"]["batches_s"] > 0
        assert stepping["prefetch"] == ahead, key
    floor = mem["w16_floor"]
    assert floor["growth"] > mem["w0"]["growth"] and floor["in_flight"][0] == floor["in_flight"][1]
    assert mem["w16"]["batches"] == mem["w0"]["batches"] == 50
    assert set(redealt["placement"]) == {"large", "small"}
    for size, place in redealt["placement"].items():  # rows of 4 KiB and of 256 bytes
        assert place["batch_bytes"] == (1 << 20 if size == "large" else 1 << 16), size
        for way in ("receive", "copy", "scatter", "in place"):
            assert place[way]["cpu_s_gb"] > 0 and len(place[way]["runs"]) == 5, (size, way)
    for size, build in redealt["building"].items():  # the client's own re-deal, held batches
        assert build["window"] == 16 and len(build["runs"]) == 5 and build["cpu_s_gb"] > 0, size
        assert build["batch_bytes"] == redealt["batch_bytes"][size] and build["cpus"] >= 1, size
    assert set(redealt["building"]) == {"large", "small"}
    buckets = redealt["bucketing"]
    assert buckets["random"]["pad_tokens"] > buckets["bucketed"]["pad_tokens"] > 0
    assert buckets["random"]["prime_s"] > 0 and len(buckets["bucketed"]["prime_runs_s"]) == 15
    assert buckets["bucketed"]["plan_s"] > 0
    assert len(results["targets"]) == TARGETS
    link_skipped = "skipped" in results["link"]
    link = [t for t in results["targets"] if t["section"] == "compression"]
    assert len(link) == 2 and all(t["met"] is None for t in link)  # over a link: not in --quick
    assert all(
        isinstance(t["met"], bool) or (link_skipped and t["section"] == LINK)
        for t in results["targets"]
        if t not in link
    )
    assert "skipped" in results["gpu"]  # --device cpu

    # what --only wire reports: the wire targets judged, the others n/a; every panel drawn
    wire = {
        k: results[k]
        for k in (
            "ceiling",
            "batchstash_large",
            "batchstash_small",
            "builds",
            "mode",
            "machine",
            "elapsed_s",
        )
    }
    text = report.write({**wire, "sections": ["ceiling", "serving"]}, tmp_path / "wire")
    verdicts = [
        t["met"] for t in json.loads((tmp_path / "wire" / "results.json").read_text())["targets"]
    ]
    judged = [False] * 4 + [True, True, False] + [True] * 5 + [True] * 4 + [True] * 6
    assert [v is None for v in verdicts] == judged, text
    assert (tmp_path / "wire" / "results.png").read_bytes()[:4] == b"\x89PNG"
