"""Epochs, passes and a resume state in shared memory, agreed on by every DataLoader worker."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import torch

__all__ = ["EpochCursor"]

_STATE_BYTES = 64 * 1024
"""Room for a resume state in shared memory (a state is a few hundred bytes)."""

_PASSES = 16
"""Passes remembered: a DataLoader worker starting late still finds the epoch of its own pass."""

_MAX_WORKERS = 1024
"""DataLoader workers a dataset can serve (one claim byte each per remembered pass)."""

# shared int64 head: epoch set by set_epoch (flag, value), epoch of the newest pass, state size,
# passes started; then one row per remembered pass: its key (loader, pass), epoch, number
_HEAD = 5
_ROW = 4
_PENDING_SET, _PENDING, _CURRENT, _STATE_SIZE, _STARTED = range(_HEAD)


class EpochCursor:
    """A dataset's epochs, passes and resume state in shared memory, read by every worker.

    A DataLoader pickles the dataset into each worker once; a persistent worker keeps that copy
    for every epoch. The cursor is one small tensor in shared memory (``share_memory_()``), and
    the pickled copies keep sharing it (fork inherits the mapping; spawn passes it with
    torch's multiprocessing pickler), so what the training process sets here is what a worker
    reads at its next ``__iter__``.

    **Passes.** Each pass over the dataset is the next epoch unless :meth:`set` named one.
    Every worker of one DataLoader pass must agree on that epoch without the training process
    telling them (it is never called between passes), so a pass is named by a key every one of
    its workers computes alike: the DataLoader iterator's base seed (``worker seed - worker
    id``, new for each non-persistent pass) and how many passes this copy of the dataset
    started (counting up in a persistent worker). The first worker with a new key starts the
    pass and takes the next epoch; the others find the key and claim its epoch. A worker that
    claimed a pass already and sees its key again (a loader re-seeded with the same
    generator) starts a new one. Claims are made under an ``flock`` on a small lock file.
    """

    def __init__(self, epoch: int, state: Mapping[str, Any] | None) -> None:
        words = _HEAD + _PASSES * _ROW
        shared = torch.zeros(8 * words + _PASSES * _MAX_WORKERS + _STATE_BYTES, dtype=torch.uint8)
        shared.share_memory_()  # type: ignore[no-untyped-call]
        self._head = shared[: 8 * _HEAD].view(torch.int64)
        self._rows = shared[8 * _HEAD : 8 * words].view(torch.int64).view(_PASSES, _ROW)
        claims_end = 8 * words + _PASSES * _MAX_WORKERS
        self._claims = shared[8 * words : claims_end].view(_PASSES, _MAX_WORKERS)
        self._blob = shared[claims_end:]  # the state's JSON
        fd, self._lock_path = tempfile.mkstemp(prefix="batchstash-epochs-", suffix=".lock")
        os.close(fd)
        weakref.finalize(self, _unlink_from, os.getpid(), self._lock_path)
        self._head[_CURRENT] = -1
        self.set_next(epoch)
        self.state = state

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield  # the lock goes with the file's close

    @property
    def next_epoch(self) -> int:
        """The epoch the next pass reads."""
        head = self._head
        return int(head[_PENDING]) if int(head[_PENDING_SET]) else int(head[_CURRENT]) + 1

    @property
    def current_epoch(self) -> int:
        """The epoch of the newest pass started (before any: the next pass's)."""
        current = int(self._head[_CURRENT])
        return self.next_epoch if current < 0 else current

    def set_next(self, epoch: int) -> None:
        """Make the next pass read ``epoch`` (passes after it count on from there)."""
        if epoch < 0:
            raise ValueError(f"an epoch is not negative, not {epoch}")
        self._head[_PENDING] = int(epoch)
        self._head[_PENDING_SET] = 1

    def start_pass(self, key: tuple[int, int], worker_id: int) -> int:
        """The epoch of the pass named ``key``, claimed by ``worker_id`` (a new pass if needed)."""
        if not 0 <= worker_id < _MAX_WORKERS:
            raise ValueError(f"BatchDataset serves at most {_MAX_WORKERS} DataLoader workers")
        with self._locked():
            rows, head = self._rows, self._head
            newest = -1
            for slot in range(_PASSES):
                number = int(rows[slot, 3])
                if number and (int(rows[slot, 0]), int(rows[slot, 1])) == key:
                    if newest < 0 or number > int(rows[newest, 3]):
                        newest = slot
            if newest >= 0 and not int(self._claims[newest, worker_id]):
                self._claims[newest, worker_id] = 1
                return int(rows[newest, 2])
            epoch = self.next_epoch
            head[_PENDING_SET], head[_CURRENT] = 0, epoch
            head[_STARTED] += 1
            slot = int(head[_STARTED]) % _PASSES
            rows[slot] = torch.tensor([key[0], key[1], epoch, int(head[_STARTED])])
            self._claims[slot].zero_()
            self._claims[slot, worker_id] = 1
            return epoch

    @property
    def state(self) -> dict[str, Any] | None:
        """The resume state the workers read (``None``: none)."""
        size = int(self._head[_STATE_SIZE])
        if size == 0:
            return None
        return dict(json.loads(self._blob[:size].numpy().tobytes()))

    @state.setter
    def state(self, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self._head[_STATE_SIZE] = 0
            return
        raw = json.dumps(dict(state), separators=(",", ":")).encode()
        if not 0 < len(raw) <= _STATE_BYTES:
            raise ValueError(f"a resume state of {len(raw)} bytes does not fit {_STATE_BYTES}")
        self._head[_STATE_SIZE] = 0  # a worker starting now sees no half-written state
        self._blob[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        self._head[_STATE_SIZE] = len(raw)


def _unlink_from(pid: int, path: str) -> None:
    """Remove the lock file, from the process that made it only (not a forked worker)."""
    if os.getpid() == pid:
        with suppress(FileNotFoundError):
            os.unlink(path)
