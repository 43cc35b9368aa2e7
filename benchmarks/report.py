"""The report: the targets table, every row, ``results.json``, ``results.md``, ``results.png``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .chart import draw
from .rows import rows
from .table import Row, markdown
from .targets import targets

__all__ = ["machine", "machine_markdown", "render", "write"]


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
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "client", "service"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" +changes" if dirty else "")


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine as one markdown paragraph."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    commit = f" Commit {info['commit']}." if info.get("commit") else ""
    return (
        f"{info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical "
        f"CPUs, {info['memory_gb']} GB RAM; {info['platform']}; Python {info['python']}; "
        f"{versions}.{commit}"
    )


def render(goals: list[Row], table: list[Row]) -> str:
    """The targets table, then every row (with the CPU columns), as markdown."""
    return (
        f"Targets (ratios of this run):\n\n{markdown(goals, cpu=False)}\n"
        f"Every measurement:\n\n{markdown(table)}"
    )


def write(results: dict[str, Any], out: Path) -> str:
    """Write ``results.json``, ``results.png`` and ``results.md`` into ``out``; return the tables.

    ``results.json`` gets ``targets`` (every row with a target, the verdict ``true``, ``false``
    or ``null`` where not measured) and ``table`` (every row with its CPU columns).
    """
    out.mkdir(parents=True, exist_ok=True)
    goals, table = targets(results), rows(results)
    results["targets"] = [r.as_dict() for r in [*goals, *table] if r.target]
    results["table"] = [r.as_dict() for r in table]
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    draw(results, out / "results.png")
    tables = render(goals, table)
    run = f"Run {results['created']} on: " if results.get("created") else "Machine: "
    (out / "results.md").write_text(
        f"{run}{machine_markdown(results['machine'])}\n\n"
        f"Mode: `{results['mode']}`, sections {', '.join(results['sections'])}, "
        f"{results['elapsed_s']:.0f} s.\n\n{tables}"
    )
    return tables
