"""The ledger: the size and version of each batch object a prime wrote, once it is durable.

A resumed prime must know which planned objects are stored whole. Reading and checksumming
every one of them costs the whole store (on S3, a download of it) at every prime start; a
listing costs one ``stat`` (or one line of a LIST page) an object. The ledger makes the listing
enough: a prime records ``key -> [size, version]`` of the objects it wrote, in parts
``ledger/<generation>/<n>.json`` written every :data:`FLUSH_S` seconds and at the end, each
only after :meth:`~.backend.StoreBackend.sync` made those objects durable (a part never claims
an object a power loss could still tear). A resume trusts an object whose listed size and
version are the ledger's; any other listed object (written after the last part, before a
crash, or changed since: a byte flipped on disk through a write, a copy of the store) is read
and verified, and recorded again if it passes.

What no version shows (a bit rotting inside an unchanged file) is caught by a read: a server
verifies an object the first time it serves it, every client verifies every tensor, and a
prime with ``verify`` reads every object as before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

from .backend import NoSuchKey, StoreBackend

__all__ = ["FLUSH_S", "LEDGER", "Ledger", "ledger_prefix"]

logger = logging.getLogger(__name__)

LEDGER = "ledger/"
FLUSH_S = 10.0
"""Seconds between two parts of a running prime (each costs a sync and a listing)."""

Entry = tuple[int, str]


def ledger_prefix(generation: str) -> str:
    """Where one generation's ledger parts are."""
    return f"{LEDGER}{generation}/"


class Ledger:
    """One generation's ledger: what it claims, and the keys still to record.

    Args:
        backend: the store.
        generation: the plan's generation.
        entries: ``key -> (size, version)`` recorded so far.
        parts: the keys of the parts read.
        clock: seconds, for :meth:`due`.
    """

    def __init__(
        self,
        backend: StoreBackend,
        generation: str,
        entries: dict[str, Entry] | None = None,
        parts: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend, self.generation = backend, generation
        self.entries: dict[str, Entry] = dict(entries or {})
        self.parts = sorted(parts)
        self._clock = clock
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._last = clock()

    @classmethod
    def read(cls, backend: StoreBackend, generation: str) -> Ledger:
        """Every part of the generation's ledger.

        A damaged part is skipped: its objects are read and verified, as if never recorded.
        """
        entries: dict[str, Entry] = {}
        parts = []
        for key in sorted(backend.list(ledger_prefix(generation))):
            try:
                doc = json.loads(bytes(backend.read(key)).decode("utf-8"))
                part = {str(k): (int(v[0]), str(v[1])) for k, v in doc["objects"].items()}
            except NoSuchKey:
                continue
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
                logger.warning("ledger part %s is damaged: its objects are verified again", key)
                continue
            entries.update(part)
            parts.append(key)
        return cls(backend, generation, entries, parts)

    def trusts(self, key: str, listed: Entry | None) -> bool:
        """Whether the listed ``(size, version)`` of ``key`` is the one recorded."""
        return listed is not None and self.entries.get(key) == listed

    def add(self, keys: Iterable[str]) -> None:
        """Keys written (or verified) now, recorded by the next :meth:`flush`."""
        with self._lock:
            self._pending.update(keys)

    def due(self) -> bool:
        """Whether :data:`FLUSH_S` passed since the last part."""
        return bool(self._pending) and self._clock() - self._last >= FLUSH_S

    def flush(self, compact: bool = False) -> int:
        """Make the pending objects durable, then record them as listed; returns how many.

        ``compact``: write every entry as one part and remove the others (a prime's end).
        """
        with self._lock:
            pending, self._pending = self._pending, set()
        self._last = self._clock()
        if not pending and not compact:
            return 0
        self.backend.sync()  # durable before a part claims them
        listed: dict[str, Entry] = {}
        # the pending objects' directories only (a batch's few objects): linear in the objects
        # written, where listing the whole generation at every part would not be
        for prefix in sorted({key.rsplit("/", 1)[0] + "/" for key in pending}):
            for key, size, version in self.backend.list_versions(prefix):
                listed[key] = (size, version)
        new = {key: listed[key] for key in pending if key in listed}
        self.entries.update(new)
        if not new and not compact:
            return 0
        objects = self.entries if compact else new
        key = f"{ledger_prefix(self.generation)}{self._next():08d}.json"
        doc = {"objects": {k: list(v) for k, v in sorted(objects.items())}}
        self.backend.write(key, [json.dumps(doc, separators=(",", ":")).encode()])
        if compact:
            for old in self.parts:
                self.backend.delete(old)
            self.parts = []
        self.parts.append(key)
        return len(new)

    def _next(self) -> int:
        numbers = [_number(p) for p in self.parts]
        return max(numbers, default=-1) + 1


def _number(part: str) -> int:
    stem = part.rsplit("/", 1)[-1].removesuffix(".json")
    return int(stem) if stem.isdigit() else -1
