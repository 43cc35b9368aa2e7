"""The chart of a run: six matplotlib panels in one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw"]

MB = 1e6


def draw(results: dict[str, Any], path: Path) -> None:
    """Draw the six panels of the run into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    large, small, base, naive = (results["batchstash_large"], results["batchstash_small"],
                                 results["baselines"], results["naive"])
    top = max(r["mb_s"] for r in results["ceiling"].values())
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    panels: list[tuple[Any, str, dict[str, float | None], str]] = [
        (axes[0, 0], f"large batches ({large['batch_bytes']:,} B): MB/s", {
            "raw TCP stream": results["ceiling"]["stream"]["mb_s"],
            "raw TCP req/resp": results["ceiling"]["request"]["mb_s"],
            "batchstash 1c": large["iter_1"]["mb_s"], "batchstash 4c": large["iter_4"]["mb_s"],
            "batchstash seq 1c": large["seq_1"]["mb_s"],
            "I/O floor 1c": large.get("floor_1", {}).get("mb_s"),
            "DataLoader w0": base["dataloader_0"]["mb_s"],
            "DataLoader w2": base["dataloader_2"]["mb_s"], "pickle files": base["pickle"]["mb_s"],
            "naive FastAPI 1c": naive["large_1"]["mb_s"],
            "naive FastAPI 4c": naive["large_4"]["mb_s"]}, "MB/s"),
        (axes[0, 1], f"small batches ({small['batch_bytes']:,} B): batches/s", {
            "batchstash 1c": small["iter_1"]["batches_s"],
            "batchstash 4c": small["iter_4"]["batches_s"],
            "batchstash seq 1c": small["seq_1"]["batches_s"],
            "I/O floor 1c": small.get("floor_1", {}).get("batches_s"),
            "naive FastAPI 1c": naive["small_1"]["batches_s"]}, "batches/s"),
        (axes[0, 2], "priming: batches/s", {
            "1 worker": results["priming"]["workers_1"]["rate"],
            "2 workers": results["priming"]["workers_2"]["rate"]}, "batches/s"),
    ]
    for ax, title, values, unit in panels:
        names = list(values)
        ax.barh(names, [v or 0 for v in values.values()], color="tab:blue")
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(unit)
    axes[0, 0].axvline(0.8 * top, color="tab:red", linestyle="--", label="0.8 x ceiling")
    axes[0, 0].legend(loc="lower right")
    axes[0, 1].axvline(6000, color="tab:red", linestyle="--", label="target 6,000/s")
    axes[0, 1].legend(loc="lower right")
    one = results["priming"]["workers_1"]["rate"]
    if one:
        axes[0, 2].axvline(1.8 * one, color="tab:red", linestyle="--", label="1.8 x 1 worker")
        axes[0, 2].legend(loc="lower right")
    ax = axes[1, 0]
    left = None
    for step in ("data_points", "vectorize", "persist"):
        widths = [1e3 * b["seconds"][step] / b["batches"]
                  for b in results["priming"]["breakdown"].values()]
        ax.barh(list(results["priming"]["breakdown"]), widths, left=left, label=step)
        left = widths if left is None else [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_title("priming one batch, by step (in process)")
    ax.set_xlabel("ms per batch")
    ax.legend(loc="upper right")
    mem = results["memory"]
    ax = axes[1, 1]
    stores = [mem["server_small_store"], mem["server_large_store"]]
    ax.bar([f"{s['store_batches']} batches" for s in stores], [s["peak"] / MB for s in stores])
    ax.set_title("server peak RSS by store size")
    ax.set_ylabel("MB")
    ax = axes[1, 2]
    depths = [c["prefetch"] for c in mem["client"]]
    ax.plot(depths, [c["growth"] / MB for c in mem["client"]], "o-", label="client RSS growth")
    ax.plot(depths, [c["limit"] / MB for c in mem["client"]], "--", color="tab:red",
            label="3 x prefetch x batch")
    ax.set_title("client memory vs prefetch")
    ax.set_xlabel("prefetch")
    ax.set_ylabel("MB")
    ax.legend()
    fig.suptitle(f"batchstash benchmarks ({results['mode']} run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
