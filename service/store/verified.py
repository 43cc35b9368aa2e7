"""Which stored objects verified since they last changed (bounded, least recently used out)."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["VerifiedObjects"]


class VerifiedObjects:
    """Remembers objects whose checksums verified, by key and backend version.

    Serving skips the tensor checksums of an object that verified with the same version (a
    rewrite or replacement changes it); headers and identity are still checked on every read.
    What a version cannot see, a byte rotting in place, the client's end-to-end checksums catch:
    the checksums travel with the payload.

    Args:
        capacity: objects remembered at most (``0``: none, so every read verifies).
    """

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def is_verified(self, key: str, version: str | None) -> bool:
        """Whether ``key`` verified with this ``version`` (taken before reading it)."""
        if version is None:
            return False
        with self._lock:
            known = self._known.get(key)
            if known is None:
                return False
            if known != version:
                del self._known[key]
                return False
            self._known.move_to_end(key)
            return True

    def add(self, key: str, version: str | None) -> None:
        """Record that ``key`` verified with ``version`` (read before its bytes were)."""
        if self.capacity <= 0 or version is None:
            return
        with self._lock:
            self._known[key] = version
            self._known.move_to_end(key)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)

    def clear(self) -> None:
        """Forget every object."""
        with self._lock:
            self._known.clear()
