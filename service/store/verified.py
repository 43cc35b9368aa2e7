"""Which stored objects verified since they last changed (bounded, least recently used out)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from batchstash.client.wire import Header

__all__ = ["VerifiedObjects"]


class VerifiedObjects:
    """Remembers objects whose checksums verified, by key and backend version.

    Serving skips the tensor checksums of an object that verified with the same version (a
    rewrite or replacement changes it); what it claims (split, batch id, fingerprint, group) is
    still checked on every read. The parsed headers of the most recently verified objects are
    kept too, so serving those parses no JSON and hashes no identity again (a header of 256 data
    point ids is a few KB: ``header_capacity`` bounds that memory). What a version cannot see, a
    byte rotting in place, the client's end-to-end checksums catch: the checksums travel with the
    payload.

    Args:
        capacity: objects remembered at most (``0``: none, so every read verifies).
        header_capacity: parsed headers kept at most (``0``: every read parses).
    """

    def __init__(self, capacity: int = 65536, header_capacity: int = 4096) -> None:
        self.capacity = capacity
        self.header_capacity = header_capacity
        self._known: OrderedDict[str, str] = OrderedDict()
        self._headers: OrderedDict[str, tuple[str, Header]] = OrderedDict()
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

    def add(self, key: str, version: str | None, header: Header | None = None) -> None:
        """Record that ``key`` verified with ``version`` (read before its bytes were).

        Args:
            key: the object.
            version: its version when its bytes were read.
            header: its parsed header, kept for :meth:`header`.
        """
        if self.capacity <= 0 or version is None:
            return
        with self._lock:
            self._known[key] = version
            self._known.move_to_end(key)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
            if header is not None and self.header_capacity > 0:
                self._headers[key] = (version, header)
                self._headers.move_to_end(key)
                while len(self._headers) > self.header_capacity:
                    self._headers.popitem(last=False)

    def header(self, key: str, version: str | None) -> Header | None:
        """The parsed header of ``key`` if it verified with this ``version`` and is still kept."""
        if version is None:
            return None
        with self._lock:
            kept = self._headers.get(key)
            if kept is None or kept[0] != version:
                return None
            self._headers.move_to_end(key)
            return kept[1]

    def clear(self) -> None:
        """Forget every object."""
        with self._lock:
            self._known.clear()
            self._headers.clear()
