"""The ``--device cuda`` section's rows read its results (measured where a GPU is lent)."""

from __future__ import annotations

from benchmarks.rows import SECTION_ROWS


def test_gpu_rows_report_copies_trainer_wait_and_delivered_rate() -> None:
    gpu = {
        "device": "some GPU",
        "copy": {"bytes": 1_048_576, "pageable_gb_s": 6.5, "pinned_gb_s": 24.0},
        "trainer": {
            "batchstash": {"batches": 90, "wait_share": 0.125, "step_ms": 2.0},
            "dataloader_pinned": {"batches": 90, "wait_share": None, "step_ms": 3.0},
        },
        "delivered": {
            "cuda": {"batches": 500, "mb_s": 1800.0},
            "none": {"batches": 500, "mb_s": 2400.0},
        },
    }
    rows = SECTION_ROWS["gpu"]({"gpu": gpu})
    results = [row.result for row in rows]
    assert results[:2] == ["6.50 GB/s", "24.00 GB/s"]
    assert results[2] == "12.5 % (step 2.00 ms)" and results[3].startswith("n/a %")
    assert results[4] == "1,800 vs 2,400 MB/s (0.75 x)"


def test_gpu_rows_without_a_gpu_say_why() -> None:
    [row] = SECTION_ROWS["gpu"]({"gpu": {"skipped": "torch.cuda.is_available() is false"}})
    assert "skipped: torch.cuda.is_available() is false" in row.result


def test_delivered_drains_each_way_within_its_bounds(monkeypatch) -> None:
    import torch

    from benchmarks import gpu

    synced: list[int] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: synced.append(1))
    made: list[object] = []

    class Iteration:
        def __init__(self, device: object) -> None:
            made.append(device)
            self.closed = False

        def __iter__(self):
            return iter(range(1000))

        def close(self) -> None:
            self.closed = True

    result = gpu.delivered(Iteration, 1 << 20, max_batches=10, max_seconds=60)
    assert made == ["cuda", None] and len(synced) == 2
    assert [result[k]["batches"] for k in ("cuda", "none")] == [10, 10]
    assert all(result[k]["mb_s"] > 0 for k in ("cuda", "none"))
