"""Receive buffers reused across responses instead of fresh allocations.

A fresh multi-megabyte allocation is new memory to the kernel often enough (the allocator hands
big blocks back to the system and maps them again): each 4 KiB page then faults and is zeroed
before the socket writes it, a cost of the order of the copy itself. A :class:`BufferPool` keeps
the buffers it handed out and gives one again once nothing views it any more: the tensors of a
batch view their response's buffer, so a buffer is free when the last of them is gone.

"Nothing views it" is read from the buffer's reference count, which every view, ``memoryview``
and ``torch.frombuffer`` tensor of it holds (under the GIL the count is exact).

For a CUDA iteration the buffers are page-locked (*pinned*): the socket writes the body straight
into memory the GPU copies from, with no ``pin_memory()`` copy in between. Those copies run
after the host tensors are gone (``non_blocking``), so a pinned buffer also carries a *fence*,
the CUDA event recorded after the copies that read it (:meth:`BufferPool.fence`), and is not
handed out again before that event has passed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Protocol

import numpy
import torch

__all__ = ["BufferPool"]

_PAGE = 4096


def _rounded(size: int) -> int:
    """``size`` rounded up to a grain of about 1/64 of it (a power of two, at least a page).

    A buffer a little larger than its first body also fits the next bodies of about that size
    (their headers differ by a few ids), while wasting at most about 1.6 % of it.
    """
    grain = max(_PAGE, 1 << max(0, size.bit_length() - 7))
    return -(-size // grain) * grain


class _Fence(Protocol):
    """What a fence is to the pool: a ``torch.cuda.Event`` recorded after the copies."""

    def query(self) -> bool:
        """Whether the copies are done."""
        ...

    def synchronize(self) -> None:
        """Wait until the copies are done."""
        ...


class BufferPool:
    """Buffers for response bodies, reused once the batches that view them are gone.

    The pool never holds more than the most buffers in use at once (plus the ones it keeps when
    the sizes change), so it adds nothing to the client's memory bound.

    Args:
        max_buffers: buffers kept at most; a buffer beyond that is allocated, not pooled.
        min_bytes: bodies smaller than this get a plain allocation (a small one is cheap).
    """

    def __init__(self, max_buffers: int = 64, min_bytes: int = 256 * 1024) -> None:
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self._buffers: list[numpy.ndarray] = []
        self._pinned: set[int] = set()  # id() of the page-locked buffers
        self._fences: dict[int, _Fence] = {}  # id() of a buffer -> the copies reading it
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def __len__(self) -> int:
        return len(self._buffers)

    def _free(self, buffer: numpy.ndarray) -> bool:
        # idle: referenced only by the pool's list, the caller's loop variable, this
        # argument and getrefcount's own (a test pins the count down), and no copy that
        # reads it still pending
        if sys.getrefcount(buffer) > 4:
            return False
        fence = self._fences.get(id(buffer))
        if fence is None:
            return True
        if not fence.query():
            return False
        del self._fences[id(buffer)]
        return True

    def get(self, size: int, pinned: bool = False) -> numpy.ndarray:
        """An uninitialised writable ``uint8`` array of ``size`` bytes (a view of a pooled one).

        The smallest free pooled buffer that holds ``size`` bytes without wasting more than
        half of it is reused; else a new one is allocated and pooled (if there is room, or a
        free one to drop). ``pinned``: a page-locked buffer (needs CUDA); a body under
        ``min_bytes`` gets pageable memory all the same (the copy then pins it, cheaply).
        """
        if size < self.min_bytes:
            return numpy.empty(size, dtype=numpy.uint8)
        with self._lock:
            best = None
            for buffer in self._buffers:
                fits = size <= buffer.nbytes <= 2 * size
                if pinned and id(buffer) not in self._pinned:
                    continue
                if fits and (best is None or buffer.nbytes < best.nbytes) and self._free(buffer):
                    best = buffer
            if best is not None:
                self.reused += 1
                return best[:size]
            buffer = _allocate(_rounded(size), pinned)
            self.allocated += 1
            if len(self._buffers) >= self.max_buffers:
                idle = next((b for b in self._buffers if self._free(b)), None)
                if idle is None:
                    return buffer[:size]  # every pooled buffer is in use: do not grow
                self._drop(idle)
            self._buffers.append(buffer)
            if pinned:
                self._pinned.add(id(buffer))
            return buffer[:size]

    def fence(self, tensors: Iterable[torch.Tensor], fence: _Fence) -> int:
        """Hold the pooled buffers that ``tensors`` view until ``fence`` has passed.

        Called after queueing the device copies that read ``tensors`` (``fence``: a CUDA event
        recorded after them; a later one on the same stream replaces an earlier one). Returns
        how many buffers it fenced (tensors in no pooled buffer are left alone).
        """
        pointers = [t.data_ptr() for t in tensors if t.device.type == "cpu"]
        fenced = 0
        with self._lock:
            for buffer in self._buffers:
                start = buffer.ctypes.data
                if any(start <= p < start + buffer.nbytes for p in pointers):
                    self._fences[id(buffer)] = fence
                    fenced += 1
        return fenced

    def _drop(self, buffer: numpy.ndarray) -> None:
        # by identity: ``list.remove`` would compare arrays with ``==`` on its way to it
        self._buffers = [b for b in self._buffers if b is not buffer]
        self._pinned.discard(id(buffer))
        self._fences.pop(id(buffer), None)

    def clear(self) -> None:
        """Forget every buffer (those in use live on until their batches are gone).

        A pinned buffer whose copies are still pending stays alive until they are done: the
        fence is synchronized on here (a CUDA event waits for its own copies only).
        """
        with self._lock:
            for fence in self._fences.values():
                fence.synchronize()
            self._buffers.clear()
            self._pinned.clear()
            self._fences.clear()


def _allocate(nbytes: int, pinned: bool) -> numpy.ndarray:
    """``nbytes`` of uninitialised memory; ``pinned``: page-locked (torch's host allocator)."""
    if not pinned:
        return numpy.empty(nbytes, dtype=numpy.uint8)
    # the array keeps the tensor (its base) and so the page-locked block alive
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()
