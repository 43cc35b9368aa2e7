"""Demand: the batches trainers asked for and got ``503 not_primed``, for the prime to do first.

A :class:`Demand` is a bounded, thread-safe ordered set of ``(split, batch id)``, first asked
first. The store's reader adds to it on every read of a batch not stored yet; a prime running
in the same process takes from it whenever an executor asks for its next chunk
(:class:`batchstash.service.prime.schedule.WorkQueue`), so those batches are encoded next.

Across processes (a replica serving a store another server primes) the reader publishes what
it saw into ``demand.json``, at most every :data:`PUBLISH_EVERY_S` and only while a prime of the
same generation holds the store's lease; the lease holder collects it at its heartbeat (a
version check, and one read and one write when it changed) and empties it. The record is a
hint: writes race by compare-and-swap and may be lost, an unwritable store (a read-only
replica's) only stops the publishing, and an old record of another generation is ignored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from . import layout
from .backend import NoSuchKey, StoreBackend
from .lease import read_job

__all__ = ["CAPACITY", "PUBLISH_EVERY_S", "Demand", "Key"]

logger = logging.getLogger(__name__)

Key = tuple[str, int]
"""A batch: ``(split, batch id)``."""

CAPACITY = 1024
"""Batches a demand holds at most (the oldest are dropped first)."""
PUBLISH_EVERY_S = 0.5
UNWRITABLE_PAUSE_S = 60.0


def _encode(generation: str, keys: Iterable[Key]) -> bytes:
    wanted = [[split, batch_id] for split, batch_id in keys]
    return json.dumps({"generation": generation, "wanted": wanted, "at": time.time()}).encode()


def _decode(raw: bytes | bytearray, generation: str) -> list[Key]:
    """The record's batches if it is of ``generation`` (a damaged record holds none)."""
    try:
        body = json.loads(bytes(raw).decode("utf-8"))
        if body.get("generation") != generation:
            return []
        return [(str(split), int(batch_id)) for split, batch_id in body["wanted"]][:CAPACITY]
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return []


class Demand:
    """Batches wanted before the rest of a prime's queue (see the module docstring).

    Args:
        capacity: the most batches held; adding more drops the oldest.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._wanted: OrderedDict[Key, None] = OrderedDict()
        self._lock = threading.Lock()
        self._consumers = 0
        self._last_publish = 0.0
        self._paused_until = 0.0
        self._seen: str | None = None  # the version of demand.json last collected

    def __len__(self) -> int:
        return len(self._wanted)

    def add(self, split: str, batch_ids: Iterable[int]) -> None:
        """Record batches of ``split`` as wanted (one already wanted keeps its place)."""
        self.add_keys((split, int(b)) for b in batch_ids)

    def add_keys(self, keys: Iterable[Key]) -> None:
        """Record ``(split, batch id)`` pairs as wanted."""
        with self._lock:
            for key in keys:
                if key not in self._wanted:
                    self._wanted[key] = None
                    if len(self._wanted) > self.capacity:
                        self._wanted.popitem(last=False)

    def take(self) -> list[Key]:
        """Every wanted batch, first asked first; the demand is empty afterwards."""
        with self._lock:
            keys = list(self._wanted)
            self._wanted.clear()
        return keys

    @contextmanager
    def consuming(self) -> Iterator[Demand]:
        """Mark a prime of this process as taking from the demand while the block runs."""
        with self._lock:
            self._consumers += 1
        try:
            yield self
        finally:
            with self._lock:
                self._consumers -= 1

    @property
    def consumed(self) -> bool:
        """Whether a prime in this process takes from this demand now."""
        return self._consumers > 0

    # across processes: demand.json -----------------------------------------------------------

    def publish(self, backend: StoreBackend, generation: str) -> bool:
        """Merge what was wanted here into the store's record, for a prime elsewhere.

        Does nothing while a prime of this process consumes the demand, more often than every
        :data:`PUBLISH_EVERY_S`, or when no prime of ``generation`` holds the store's lease (the
        batches stay here, for a prime this process may start). Never raises.

        Returns:
            Whether batches were written to the record.
        """
        now = time.monotonic()
        if self.consumed or now - self._last_publish < PUBLISH_EVERY_S or now < self._paused_until:
            return False
        self._last_publish = now
        try:
            record, _ = read_job(backend)
            if record is None or record.kind != "prime" or record.generation != generation:
                return False  # kept (bounded): a prime starting here takes it
            if not record.holds_lease():
                return False
            return self._merge(backend, generation, self.take())
        except Exception as exc:  # a hint only: a store that refuses it stops the publishing
            self._paused_until = now + UNWRITABLE_PAUSE_S
            logger.info(
                "cannot record demand in the store (%s): retrying in %.0f s",
                exc,
                UNWRITABLE_PAUSE_S,
            )
            return False

    def _merge(self, backend: StoreBackend, generation: str, keys: list[Key]) -> bool:
        if not keys:
            return False
        for _ in range(3):  # compare-and-swap with other replicas and the collecting holder
            try:
                raw, version = backend.read_versioned(layout.DEMAND)
                current = _decode(raw, generation)
            except NoSuchKey:
                version, current = None, []
            merged = list(dict.fromkeys([*current, *keys]))[-self.capacity :]
            data = _encode(generation, merged)
            if version is None:
                written = backend.create(layout.DEMAND, data)
            else:
                written = backend.replace(layout.DEMAND, data, version)
            if written:
                return True
        return False

    def collect(self, backend: StoreBackend, generation: str) -> int:
        """Add what other processes published for ``generation`` and empty the record.

        Called by the lease holder at its heartbeat: a version check when nothing changed.

        Returns:
            How many batches were added.
        """
        version = backend.version(layout.DEMAND)
        if version is None or version == self._seen:
            return 0
        try:
            raw, version = backend.read_versioned(layout.DEMAND)
        except NoSuchKey:
            return 0
        self._seen = version
        keys = _decode(raw, generation)
        if keys:
            self.add_keys(keys)
            backend.replace(layout.DEMAND, _encode(generation, []), version)  # lost race: fine
        return len(keys)
