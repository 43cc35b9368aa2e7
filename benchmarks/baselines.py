"""Local baselines on the same batches: a DataLoader over ``torch.save`` files, pickled files.

The files are written from the batches the stash stores (so the bytes match) into the page cache,
as the stash's own files are when the server reads them.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from batchstash.service import BatchStash

__all__ = ["TorchFileDataset", "dataloader", "pickled", "write_files"]


def write_files(stash: BatchStash, directory: Path, count: int) -> dict[str, list[Path]]:
    """Write the first ``count`` batches as ``torch.save`` and as pickle files, one a batch.

    Returns:
        ``{"torch": paths, "pickle": paths}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[Path]] = {"torch": [], "pickle": []}
    for batch_id in stash.keys("train")[:count]:
        tensors = {k: v.clone() for k, v in stash.load("train", batch_id).attributes.items()}
        torch_path, pickle_path = directory / f"{batch_id}.pt", directory / f"{batch_id}.pkl"
        torch.save(tensors, torch_path)
        with pickle_path.open("wb") as fh:
            pickle.dump(tensors, fh, protocol=pickle.HIGHEST_PROTOCOL)
        paths["torch"].append(torch_path)
        paths["pickle"].append(pickle_path)
    return paths


class TorchFileDataset(Dataset[dict[str, torch.Tensor]]):
    """One ``torch.save`` file a batch (``DataLoader(batch_size=None)`` yields them as they are)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return torch.load(self.paths[index], weights_only=True)  # type: ignore[no-any-return]


def _timed(batches: Any, max_batches: int, max_seconds: float) -> dict[str, Any]:
    count = size = 0
    latencies = []
    start = time.perf_counter()
    deadline = start + max_seconds
    it = iter(batches)
    while count < max_batches and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        latencies.append(time.perf_counter() - t0)
        size += sum(int(t.nbytes) for t in batch.values())
        count += 1
    seconds = time.perf_counter() - start
    del it  # stops DataLoader workers
    latencies.sort()
    return {
        "batches": count,
        "bytes": size,
        "seconds": seconds,
        "mb_s": size / seconds / 1e6,
        "batches_s": count / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "p99_ms": latencies[round(0.99 * (len(latencies) - 1))] * 1e3 if latencies else None,
    }


def dataloader(
    paths: list[Path],
    num_workers: int,
    max_batches: int,
    max_seconds: float,
    pin_memory: bool = False,
) -> dict[str, Any]:
    """A local ``DataLoader`` over ``torch.save`` files (worker start-up included in the time)."""
    loader = DataLoader(
        TorchFileDataset(paths),
        batch_size=None,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return {"num_workers": num_workers, **_timed(loader, max_batches, max_seconds)}


def _unpickle(paths: list[Path]) -> Any:
    for path in paths:
        with path.open("rb") as fh:
            yield pickle.load(fh)


def pickled(paths: list[Path], max_batches: int, max_seconds: float) -> dict[str, Any]:
    """Load pickled batches one file after another (how the reference system reads a batch)."""
    return _timed(_unpickle(paths), max_batches, max_seconds)
