"""The chart of a run: six matplotlib panels in one PNG (a section not run leaves its empty)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw"]

MB = 1e6

LARGE_BARS = {
    "ceiling distinct 1 pair": ("ceiling", "distinct_1"),
    "ceiling distinct 4 pairs": ("ceiling", "distinct_4"),
    "ceiling cache-hot stream": ("ceiling", "hot_stream_1"),
    "ceiling cache-hot req/resp": ("ceiling", "hot_request_1"),
    "floor + raw client 1c": ("batchstash_large", "floor_raw_1"),
    "floor + BatchClient 1c": ("batchstash_large", "floor_1"),
    "batchstash + raw client 1c": ("batchstash_large", "raw_1"),
    "batchstash + raw, data port": ("batchstash_large", "raw_data_1"),
    "batchstash 1c": ("batchstash_large", "iter_1"),
    "batchstash 1c device=cpu": ("batchstash_large", "iter_cpu_1"),
    "batchstash 4c": ("batchstash_large", "iter_4"),
    "batchstash seq 1c": ("batchstash_large", "seq_1"),
    "DataLoader w0": ("baselines", "dataloader_0"),
    "DataLoader w2": ("baselines", "dataloader_2"),
    "pickle files": ("baselines", "pickle"),
    "naive FastAPI 1c": ("naive", "large_1"),
    "naive FastAPI 4c": ("naive", "large_4"),
}
"""Bars of the large-batch panel: label to (results key, run key)."""

SMALL_BARS = {
    "floor + raw client 1c": ("batchstash_small", "floor_raw_1"),
    "floor + BatchClient 1c": ("batchstash_small", "floor_1"),
    "batchstash + raw client 1c": ("batchstash_small", "raw_1"),
    "batchstash + raw, data port": ("batchstash_small", "raw_data_1"),
    "batchstash 1c": ("batchstash_small", "iter_1"),
    "batchstash 4c": ("batchstash_small", "iter_4"),
    "batchstash seq 1c": ("batchstash_small", "seq_1"),
    "naive FastAPI 1c": ("naive", "small_1"),
}


def _bars(
    results: dict[str, Any], bars: dict[str, tuple[str, str]], metric: str
) -> dict[str, float]:
    """The measured bars (runs not measured or skipped are left out)."""
    out = {}
    for label, (section, key) in bars.items():
        value = results.get(section, {}).get(key, {}).get(metric)
        if value is not None:
            out[label] = value
    return out


def _barh(ax: Any, title: str, values: dict[str, float], unit: str) -> None:
    ax.barh(list(values), list(values.values()), color="tab:blue")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(unit)


def _line(ax: Any, x: float | None, label: str) -> None:
    if x:
        ax.axvline(x, color="tab:red", linestyle="--", label=label)
        ax.legend(loc="lower right")


def _size(results: dict[str, Any], size: str) -> str:
    batch = results.get(f"batchstash_{size}", {}).get("batch_bytes")
    return f"{size} batches" + (f" ({batch:,} B)" if batch else "")


def _throughput(axes: Any, results: dict[str, Any]) -> None:
    _barh(
        axes[0, 0], f"{_size(results, 'large')}: MB/s", _bars(results, LARGE_BARS, "mb_s"), "MB/s"
    )
    top = results.get("ceiling", {}).get("distinct_1", {}).get("mb_s")
    _line(axes[0, 0], top and 0.85 * top, "0.85 x ceiling distinct")
    _barh(
        axes[0, 1],
        f"{_size(results, 'small')}: batches/s",
        _bars(results, SMALL_BARS, "batches_s"),
        "batches/s",
    )
    _line(axes[0, 1], 6000, "target 6,000/s")


def _priming(axes: Any, prime: dict[str, Any]) -> None:
    one = prime["workers_1"]["rate"]
    _barh(
        axes[0, 2],
        "priming: batches/s",
        {"1 worker": one or 0, "2 workers": prime["workers_2"]["rate"] or 0},
        "batches/s",
    )
    _line(axes[0, 2], one and 1.8 * one, "1.8 x 1 worker")
    ax, left = axes[1, 0], None
    for step in ("data_points", "vectorize", "persist"):
        widths = [1e3 * b["seconds"][step] / b["batches"] for b in prime["breakdown"].values()]
        ax.barh(list(prime["breakdown"]), widths, left=left, label=step)
        left = widths if left is None else [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_title("priming one batch, by step (in process)")
    ax.set_xlabel("ms per batch")
    ax.legend(loc="upper right")


def _memory(axes: Any, mem: dict[str, Any]) -> None:
    ax = axes[1, 1]
    stores = [mem["server_small_store"], mem["server_large_store"]]
    ax.bar([f"{s['store_batches']} batches" for s in stores], [s["peak"] / MB for s in stores])
    ax.set_title("server peak RSS by store size")
    ax.set_ylabel("MB")
    ax = axes[1, 2]
    depths = [c["prefetch"] for c in mem["client"]]
    ax.plot(depths, [c["growth"] / MB for c in mem["client"]], "o-", label="client RSS growth")
    ax.plot(
        depths,
        [c["limit"] / MB for c in mem["client"]],
        "--",
        color="tab:red",
        label="3 x prefetch x batch",
    )
    ax.set_title("client memory vs prefetch")
    ax.set_xlabel("prefetch")
    ax.set_ylabel("MB")
    ax.legend()


def draw(results: dict[str, Any], path: Path) -> None:
    """Draw the panels of the sections the run measured into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    _throughput(axes, results)
    for key, panels, draw_section in (
        ("priming", (axes[0, 2], axes[1, 0]), _priming),
        ("memory", (axes[1, 1], axes[1, 2]), _memory),
    ):
        if key in results:
            draw_section(axes, results[key])
            continue
        for ax in panels:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{key}: not run", ha="center", va="center")
    fig.suptitle(f"batchstash benchmarks ({results['mode']} run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
