"""GPU checks (``--device cuda``): host-to-device copy bandwidth and a trainer loop's data wait."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .baselines import TorchFileDataset

__all__ = ["copy_bandwidth", "delivered", "trainer_wait"]


def copy_bandwidth(nbytes: int, repeats: int = 20) -> dict[str, Any]:
    """GB/s of ``non_blocking`` host-to-device copies from pinned and from pageable memory."""
    device = torch.device("cuda")
    numel = nbytes // 4
    result: dict[str, Any] = {"bytes": numel * 4}
    for name, pinned in (("pageable", False), ("pinned", True)):
        host = torch.randn(numel).pin_memory() if pinned else torch.randn(numel)
        target = torch.empty(numel, device=device)
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            target.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        result[f"{name}_gb_s"] = repeats * numel * 4 / (time.perf_counter() - start) / 1e9
    return result


def delivered(
    make_iter: Any, batch_bytes: int, max_batches: int, max_seconds: float
) -> dict[str, Any]:
    """MB/s of an iteration drained with no trainer, ending when its last copy has landed.

    Args:
        make_iter: ``device -> iter_batches(..., device=device)``; run for ``"cuda"`` (pinned
            receive, side-stream copies) and for ``None`` (no copy: what the wire gives).
        batch_bytes: bytes a batch.
        max_batches: batches at most, each run.
        max_seconds: seconds at most, each run.
    """
    result: dict[str, Any] = {}
    for name, device in (("cuda", "cuda"), ("none", None)):
        it = make_iter(device)
        try:
            count, start = 0, time.perf_counter()
            for _batch in it:
                count += 1
                if count >= max_batches or time.perf_counter() - start > max_seconds:
                    break
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        finally:
            it.close()
        result[name] = {"batches": count, "mb_s": count * batch_bytes / wall / 1e6}
    return result


def _train(batches: Any, dims: int, max_batches: int, max_seconds: float) -> dict[str, Any]:
    """Step a small MLP on each batch; time spent waiting for data versus the whole step."""
    device = torch.device("cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(dims, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wait = total = 0.0
    count = 0
    start = time.perf_counter()
    it = iter(batches)
    while count < max_batches and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        x = batch["x"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if count:  # the first step warms CUDA up
            wait += t1 - t0
            total += t2 - t0
        count += 1
    return {
        "batches": count,
        "wait_share": wait / total if total else None,
        "step_ms": 1e3 * total / max(1, count - 1),
    }


def trainer_wait(
    client_iter: Any, paths: list[Path], dims: int, max_batches: int, max_seconds: float
) -> dict[str, Any]:
    """The data-wait share of step time: batchstash (``device="cuda"``) versus a local loader.

    Args:
        client_iter: ``iter_batches(..., device="cuda")`` of the server.
        paths: ``torch.save`` files of the same batches.
        dims: the width of ``x``.
        max_batches: steps at most, each loop.
        max_seconds: seconds at most, each loop.
    """
    local = DataLoader(
        TorchFileDataset(paths), batch_size=None, shuffle=True, num_workers=2, pin_memory=True
    )
    return {
        "batchstash": _train(client_iter, dims, max_batches, max_seconds),
        "dataloader_pinned": _train(local, dims, max_batches, max_seconds),
    }
