"""A store's records as its reader sees them: read by version, checked for freshness.

:class:`StoreView` answers what the records say (the description, whether it is stale or
primed, split counts, batch ids, attributes) without touching a batch object. A record is
re-read when its version changes (a ``stat`` on a local store, at most every ``refresh_s``
seconds elsewhere); the store reader serves batches on top of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from batchstash.client import BatchMetadata, CorruptStoreError, NotPrimedError, StaleStoreError

from . import facts
from .backend import NoSuchKey, StoreBackend
from .lease import read_job
from .records import KEYS, Manifest, StoreInfo, decode_record

__all__ = ["StoreView"]

# damaged records are reported as the store reader's, as they always were
logger = logging.getLogger("batchstash.service.store.reader")


class StoreView:
    """A store's records, cached by version, and the facts they give.

    Args:
        backend: the store.
        expect_fingerprint: the fingerprint a server with the dataset computes; a store of
            another one is stale (``None``: serve whatever the store describes).
        default_attributes: the attributes served when none are asked for (``None``: those the
            store names in ``decoded_attributes``, or all).
        refresh_s: how long a record's version is trusted before it is checked again
            (``None``: the backend's default, 0 for a directory, a few seconds for S3).
    """

    def __init__(
        self,
        backend: StoreBackend,
        expect_fingerprint: str | None = None,
        default_attributes: Iterable[str] | None = None,
        refresh_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.expect_fingerprint = expect_fingerprint
        self._default = None if default_attributes is None else set(default_attributes)
        self.refresh_s = backend.records_refresh_s if refresh_s is None else refresh_s
        self._cache: dict[str, tuple[str | None, float, Any]] = {}
        self._derived: dict[str, tuple[StoreInfo, Any]] = {}
        self._lock = threading.Lock()

    # records -------------------------------------------------------------------------------

    def _record(self, cls: Any) -> Any:
        """The cached record (``None`` if absent) or the :class:`CorruptStoreError` it gave."""
        key = KEYS[cls]
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and self.refresh_s and now - hit[1] < self.refresh_s:
            return hit[2]
        version = self.backend.version(key)
        if hit is not None and hit[0] == version:
            self._cache[key] = (version, now, hit[2])
            return hit[2]
        value: Any = None
        if version is not None:
            try:
                value = decode_record(cls, key, self.backend.read(key))
            except NoSuchKey:
                value = None
            except CorruptStoreError as exc:
                logger.warning("%s; a prime repairs it", exc.message)
                value = exc
        with self._lock:
            self._cache[key] = (version, now, value)
        return value

    def refresh(self) -> None:
        """Forget the records read (a writer in this process just changed them)."""
        with self._lock:
            self._cache.clear()

    def info(self) -> StoreInfo:
        """The store's description.

        Raises:
            NotPrimedError: the store has no plan yet, or its records are damaged (a prime
                repairs them).
        """
        value = self._record(StoreInfo)
        if isinstance(value, CorruptStoreError):
            raise NotPrimedError(f"{value.message}: prime the store to repair it")
        if value is None:
            raise NotPrimedError("the store has no batches yet: prime it")
        info: StoreInfo = value
        return info

    def problem(self) -> str | None:
        """Why the store cannot serve (no plan, damaged records, stale), or ``None``."""
        try:
            self.check_fresh()
        except (NotPrimedError, StaleStoreError) as exc:
            return exc.message
        manifest = self._record(Manifest)
        return manifest.message if isinstance(manifest, CorruptStoreError) else None

    def check_fresh(self, info: StoreInfo | None = None) -> StoreInfo:
        """The store's description, if it is not stale.

        Raises:
            NotPrimedError: see :meth:`info`.
            StaleStoreError: the store was encoded with another configuration.
        """
        return facts.check_fingerprint(info or self.info(), self.expect_fingerprint)

    @property
    def fingerprint(self) -> str | None:
        """The store's fingerprint (``None`` before a plan exists or when it is damaged)."""
        value = self._record(StoreInfo)
        return value.fingerprint if isinstance(value, StoreInfo) else None

    @property
    def is_stale(self) -> bool:
        """Whether the store holds another configuration's batches."""
        return facts.is_stale(self.fingerprint, self.expect_fingerprint)

    def manifest(self) -> Manifest | None:
        """The manifest if it belongs to the store's current plan, else ``None``."""
        value = self._record(Manifest)
        info = self._record(StoreInfo)
        if not isinstance(value, Manifest) or not isinstance(info, StoreInfo):
            return None
        return value if facts.is_current(value, info) else None

    @property
    def is_primed(self) -> bool:
        """Whether every planned batch is stored (a manifest of the current plan exists)."""
        return not self.is_stale and self.manifest() is not None

    def _derive(self, name: str, info: StoreInfo, make: Any) -> Any:
        hit = self._derived.get(name)
        if hit is None or hit[0] is not info:
            hit = (info, make(info))
            self._derived[name] = hit
        return hit[1]

    def metadata(self) -> BatchMetadata:
        """The batch metadata the store describes."""
        info = self.check_fresh()
        return self._derive("metadata", info, lambda i: BatchMetadata.from_dict(i.metadata))  # type: ignore[no-any-return]

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Per split: ``batches``, ``data_points`` and ``stored`` (no batch object is touched)."""
        info = self.check_fresh()
        stored: dict[str, int] = {}
        if self.manifest() is not None:
            stored = {s: c["batches"] for s, c in info.splits.items()}
        else:
            job, _ = read_job(self.backend)
            stored = facts.job_progress(info, job)
        return facts.count_splits(info, stored)

    def keys(self, split: str) -> list[int]:
        """The batch ids of ``split`` (``0 .. n-1``)."""
        return list(range(facts.batch_count(self.check_fresh(), split)))

    # attributes ----------------------------------------------------------------------------

    def _groups(self, info: StoreInfo) -> dict[str, frozenset[str]]:
        return self._derive("groups", info, facts.attribute_groups)  # type: ignore[no-any-return]

    def attributes(self) -> set[str]:
        """The attribute names the store serves.

        Raises:
            NotPrimedError: see :meth:`info`.
            StaleStoreError: the store was encoded with another configuration.
        """
        return {a for g in self._groups(self.check_fresh()).values() for a in g}

    def resolve(self, info: StoreInfo, attributes: Iterable[str] | None) -> set[str] | None:
        """The attributes to serve (``None``: every stored one)."""
        if attributes is None:
            default = self._default
            if default is None and info.decoded_attributes is not None:
                default = set(info.decoded_attributes)
            return None if default is None else set(default)
        wanted = set(attributes)
        facts.check_known(wanted, {a for g in self._groups(info).values() for a in g})
        return wanted
