"""Receive buffers reused across responses instead of fresh allocations.

A fresh multi-megabyte allocation is new memory to the kernel often enough (the allocator hands
big blocks back to the system and maps them again): each 4 KiB page then faults and is zeroed
before the socket writes it, a cost of the order of the copy itself. A :class:`BufferPool` keeps
the buffers it handed out and gives one again once nothing views it any more: the tensors of a
batch view their response's buffer, so a buffer is free when the last of them is gone.

"Nothing views it" is read from the buffer's reference count, which every view, ``memoryview``
and ``torch.frombuffer`` tensor of it holds (under the GIL the count is exact).
"""

from __future__ import annotations

import sys
import threading

import numpy

__all__ = ["BufferPool"]

_GRAIN = 64 * 1024


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
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def __len__(self) -> int:
        return len(self._buffers)

    @staticmethod
    def _free(buffer: numpy.ndarray) -> bool:
        # idle: referenced only by the pool's list, the caller's loop variable, this
        # argument and getrefcount's own (a test pins the count down)
        return sys.getrefcount(buffer) <= 4

    def get(self, size: int) -> numpy.ndarray:
        """An uninitialised writable ``uint8`` array of ``size`` bytes (a view of a pooled one).

        The smallest free pooled buffer that holds ``size`` bytes without wasting more than
        half of it is reused; else a new one is allocated and pooled (if there is room, or a
        free one to drop).
        """
        if size < self.min_bytes:
            return numpy.empty(size, dtype=numpy.uint8)
        with self._lock:
            best = None
            for buffer in self._buffers:
                fits = size <= buffer.nbytes <= 2 * size
                if fits and (best is None or buffer.nbytes < best.nbytes) and self._free(buffer):
                    best = buffer
            if best is not None:
                self.reused += 1
                return best[:size]
            buffer = numpy.empty(-(-size // _GRAIN) * _GRAIN, dtype=numpy.uint8)
            self.allocated += 1
            if len(self._buffers) >= self.max_buffers:
                idle = next((b for b in self._buffers if self._free(b)), None)
                if idle is None:
                    return buffer[:size]  # every pooled buffer is in use: do not grow
                self._buffers.remove(idle)
            self._buffers.append(buffer)
            return buffer[:size]

    def clear(self) -> None:
        """Forget every buffer (those in use live on until their batches are gone)."""
        with self._lock:
            self._buffers.clear()
