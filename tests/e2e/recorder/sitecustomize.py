"""Loaded at start-up by every process of a framework test: records each batch a rank reads.

With ``BATCHSTASH_TEST_RECORD`` set to a directory, every batch a :class:`BatchIterator`
streams (its own iteration, a ``BatchDataset`` pass) or fetches is written there as one JSON
line: the rank process (a DataLoader worker's parent), the split, the epoch, the plan's rank and
world size, the batch id and its data point ids. The training scripts under test stay as the
README shows them.

With ``BATCHSTASH_TEST_FINISHED`` set to a directory, every process that runs its script to the
end without an uncaught exception leaves an empty file there when its ``atexit`` handlers run,
before the interpreter tears down:
``rank-<RANK>`` in a process torchrun started, else ``pid-<pid>``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

if os.environ.get("BATCHSTASH_TEST_FINISHED"):
    _name = f"rank-{os.environ['RANK']}" if "RANK" in os.environ else f"pid-{os.getpid()}"
    _uncaught: list[BaseException] = []
    _excepthook = sys.excepthook

    def _note_uncaught(kind: Any, value: Any, tb: Any) -> None:
        _uncaught.append(value)
        _excepthook(kind, value, tb)

    def _finished() -> None:
        if not _uncaught:
            (Path(os.environ["BATCHSTASH_TEST_FINISHED"]) / _name).touch()

    sys.excepthook = _note_uncaught
    atexit.register(_finished)

if os.environ.get("BATCHSTASH_TEST_RECORD"):
    from torch.utils.data import get_worker_info

    from batchstash.client.iterate import BatchIterator

    _fetch, _stream = BatchIterator.fetch, BatchIterator.stream

    def _record(it: BatchIterator, batch: Any) -> None:
        owner = os.getpid() if get_worker_info() is None else os.getppid()
        line = {
            "owner": owner,
            "split": it.plan.split,
            "epoch": it.plan.epoch,
            "rank": it.rank,
            "world_size": it.plan.world_size,
            "batch": batch.id,
            "points": list(batch.data_point_ids),
        }
        path = os.path.join(os.environ["BATCHSTASH_TEST_RECORD"], f"{os.getpid()}.jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def fetch(self: BatchIterator, batch_id: int) -> Any:
        batch = _fetch(self, batch_id)
        _record(self, batch)
        return batch

    def stream(self: BatchIterator, batch_ids: Any) -> Any:
        inner = _stream(self, batch_ids)
        try:
            for batch in inner:
                _record(self, batch)
                yield batch
        finally:
            inner.close()

    BatchIterator.fetch = fetch  # type: ignore[method-assign]
    BatchIterator.stream = stream  # type: ignore[method-assign]
