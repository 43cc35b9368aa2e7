"""The reader side of the store: metadata, splits and verified batch bytes, from the store alone.

A :class:`StoreReader` needs no dataset code: ``store.json`` says what the batches are and
``manifest.json`` whether they are all there. Records are re-read when their version changes
(a ``stat`` on a local store, at most every ``refresh_s`` seconds elsewhere): see
:class:`~batchstash.service.store.view.StoreView`, whose facts the reader serves too.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from batchstash.client import (
    CorruptStoreError,
    NotFoundError,
    NotPrimedError,
    StoreBusyError,
    wire,
)

from . import facts, layout
from .backend import NoSuchKey, Sendable, StoreBackend
from .cache import ObjectCache, object_cache
from .codec import Compressed, decompress_object, is_compressed, payload_size
from .compose import Source, compose_payload
from .demand import Demand
from .records import StoreInfo
from .verified import VerifiedObjects
from .view import StoreView
from .writer import check_object

__all__ = ["Source", "StoreReader"]

_NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE)

logger = logging.getLogger(__name__)


class StoreReader(StoreView):
    """Serves a store's batches and facts, verifying every object it returns.

    Args:
        backend, expect_fingerprint, default_attributes, refresh_s: as :class:`StoreView`'s.
        verified_capacity: objects whose checksums are remembered as verified.
        cache: a local cache of verified objects (serving a remote store from disk).

    Attributes:
        demand: the batches reads found not stored yet, for a prime to encode first.
    """

    def __init__(
        self,
        backend: StoreBackend,
        expect_fingerprint: str | None = None,
        default_attributes: Iterable[str] | None = None,
        refresh_s: float | None = None,
        verified_capacity: int = 65536,
        cache: ObjectCache | None = None,
    ) -> None:
        super().__init__(backend, expect_fingerprint, default_attributes, refresh_s)
        self.cache = cache
        self.verified = VerifiedObjects(verified_capacity)
        self.demand = Demand()

    @classmethod
    def serving(
        cls,
        backend: StoreBackend,
        expect_fingerprint: str | None = None,
        default_attributes: Iterable[str] | None = None,
        refresh_s: float | None = None,
        *,
        cache_dir: str | None = None,
        cache_max_bytes: int = 0,
    ) -> StoreReader:
        """A server's reader: a remote store's verified objects also kept on local disk.

        Args:
            backend: the store.
            expect_fingerprint: see the class.
            default_attributes: see the class.
            refresh_s: see the class.
            cache_dir: where a remote store's objects are cached (``None``: under the temp dir).
            cache_max_bytes: the most bytes cached (``0``: no cache; local files never are).
        """
        cache = object_cache(backend, cache_dir, cache_max_bytes)
        return cls(backend, expect_fingerprint, default_attributes, refresh_s, cache=cache)

    # batches -------------------------------------------------------------------------------

    def _locate(
        self, info: StoreInfo, split: str, batch_id: int, wanted: set[str] | None
    ) -> list[tuple[str, frozenset[str]]]:
        if not 0 <= batch_id < facts.batch_count(info, split):
            raise NotFoundError(f"split {split!r} has no batch {batch_id}")
        return [
            (layout.group_key(info.generation, split, batch_id, name), group)
            for name, group in self._groups(info).items()
            if wanted is None or group & wanted
        ]

    def exists(self, split: str, batch_id: int, attributes: Iterable[str] | None = None) -> bool:
        """Whether the batch is planned and its group objects exist (no read).

        Raises:
            NotFoundError: unknown split or batch id.
        """
        info = self.check_fresh()
        keys = self._locate(info, split, batch_id, self.resolve(info, attributes))
        return all(self.backend.version(key) is not None for key, _ in keys)

    def read_sources(
        self,
        split: str,
        batch_id: int,
        attributes: Iterable[str] | None = None,
        mapped: bool = False,
        info: StoreInfo | None = None,
        files: bool = False,
    ) -> tuple[set[str] | None, list[Source]]:
        """Read and verify the group objects holding ``attributes`` of one batch.

        Every object's identity (split, batch id, fingerprint, data point ids) is checked
        against its identity checksum and the request, and the objects of one batch must agree
        on their data point ids. Serving (``mapped``) skips the tensor checksums of objects that
        verified before and have not changed since; everything else verifies every tensor.
        With ``files`` (serving too) such an object of a local store is not read at all: its
        source is the :class:`~batchstash.service.store.backend.Sendable` held open at the
        version that verified (its header known), for the data listener to ``sendfile``.

        Returns:
            The resolved attribute names (``None``: all) and the verified sources.

        Raises:
            NotFoundError: unknown split or batch id.
            NotPrimedError: the batch is planned but not stored yet.
            StaleStoreError: the store holds another configuration's batches.
            CorruptStoreError: a stored object fails verification.
        """
        info = self.check_fresh(info)
        wanted = self.resolve(info, attributes)
        expect = {
            wire.KEY_SPLIT: split,
            wire.KEY_BATCH_ID: str(batch_id),
            wire.KEY_FINGERPRINT: info.fingerprint,
        }
        sources: list[Source] = []
        ids: str | None = None
        for key, group in self._locate(info, split, batch_id, wanted):
            try:
                buf, trusted, version = self._read(key, split, batch_id, mapped, files)
            except NotPrimedError:
                self.demand.add(split, [batch_id])
                raise
            known = self.verified.header(key, version) if trusted else None
            stored = buf if is_compressed(buf) else None
            if stored is not None and known is None:
                buf = decompress_object(key, stored)  # the header is in the payload
            elif known is None and isinstance(buf, Sendable):  # its header is no longer kept
                buf = buf.view()
            header = check_object(key, buf, group, expect, tensors=not trusted, header=known)
            if mapped and not trusted:  # verified just now
                self.verified.add(key, version, header)
                if self.cache is not None:
                    self.cache.put(key, buf if stored is None else stored)
            if stored is not None and mapped:  # served as stored, or decompressed (known: later)
                decoded = None if known is not None else buf
                buf = Compressed(key, stored, payload_size(header), decoded)
            own = header.metadata.get(wire.KEY_DATA_POINT_IDS)
            if ids is not None and own != ids:
                raise CorruptStoreError(
                    f"stored object {key}: data point ids differ from the batch's other groups"
                )
            ids = own
            sources.append((buf, header))
        return wanted, sources

    def _read(
        self, key: str, split: str, batch_id: int, mapped: bool, files: bool = False
    ) -> tuple[Any, bool, str | None]:
        """An object's bytes (or open file), whether it verified before (serving only), version."""
        if mapped and self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached, True, None  # only verified objects are cached
        try:
            if not mapped:
                return self.backend.read(key), False, None
            opened = self.backend.open_versioned(key) if files else None
            if opened is not None:
                if self.verified.is_verified(key, opened.version):
                    return opened, True, opened.version
                with closing(opened):  # not verified yet: its bytes are checked now
                    return opened.view(), False, opened.version
            buf, version = self.backend.read_mapped_versioned(key)
        except NoSuchKey:
            raise NotPrimedError(f"batch {split}/{batch_id} is not encoded yet") from None
        except OSError as exc:
            if exc.errno not in _NO_DESCRIPTOR:
                raise
            # replies hold their stored files open until sent: a transient limit, not a bug
            raise StoreBusyError(
                f"batch {split}/{batch_id}: the server has no file descriptor left "
                f"({exc.strerror}); retry"
            ) from None
        return buf, self.verified.is_verified(key, version), version

    def payloads(
        self,
        split: str,
        batch_ids: Sequence[int],
        attributes: Iterable[str] | None = None,
        files: bool = False,
        compressed: bool = False,
    ) -> list[list[Any]]:
        """Batches as wire payload chunks, from stored bytes without decoding them.

        When the wanted attributes are exactly one stored group object, that object is the
        payload, byte for byte (mapped, never copied); otherwise the tensors of the needed
        objects are joined with :func:`wire.compose`, identity taken from the objects themselves
        (their checksums travel along, no re-hashing).

        Args:
            split: the split.
            batch_ids: the batches, in the order of the result.
            attributes: the attributes wanted (``None``: the default ones).
            files: such a whole object of a local store that verified before may be its
                :class:`~batchstash.service.store.backend.Sendable` (open, unread) instead of
                its bytes; without, every chunk is a buffer.
            compressed: a whole object stored compressed is its
                :class:`~batchstash.service.store.codec.Compressed` (sent as stored, or
                decompressed by the route); without, every payload is uncompressed.
        """
        info = self.check_fresh()
        names_given = None if attributes is None else list(attributes)

        def one(batch_id: int) -> list[Any]:
            wanted, sources = self.read_sources(split, batch_id, names_given, True, info, files)
            return compose_payload(sources, wanted, compressed)

        reads = self.backend.concurrent_reads
        try:
            if reads <= 1 or len(batch_ids) <= 1:
                return [one(batch_id) for batch_id in batch_ids]
            # a remote store: the GETs of a multi-batch request overlap (latency, not bandwidth)
            with ThreadPoolExecutor(min(reads, len(batch_ids)), "batchstash-read") as pool:
                return list(pool.map(one, batch_ids))
        except NotPrimedError:
            self._wanted(info, split, batch_ids)  # the request's other batches are wanted too
            raise

    def _wanted(self, info: StoreInfo, split: str, batch_ids: Sequence[int]) -> None:
        """Record batches a read wanted before they were stored (see :attr:`demand`)."""
        self.demand.add(split, batch_ids)
        self.demand.publish(self.backend, info.generation)  # for a prime in another process
