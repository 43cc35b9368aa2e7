"""The store backend interface: a flat space of byte objects by key, chosen by URL scheme.

A key is a ``/``-separated relative name (``layout.py`` makes them). Every backend offers the
same few operations; nothing outside ``store/`` sees a path or a bucket:

| operation | contract |
| --- | --- |
| :meth:`~StoreBackend.read` | the whole object as a writable buffer, or :class:`NoSuchKey` |
| :meth:`~StoreBackend.read_mapped` | the same, possibly mapped read-only (serving) |
| :meth:`~StoreBackend.read_mapped_versioned` | and the version read, for the verified cache |
| :meth:`~StoreBackend.open_versioned` | a :class:`Sendable`: held open unread, with its version |
| :meth:`~StoreBackend.version` | a token that changes whenever the object is replaced |
| :meth:`~StoreBackend.write` | all or nothing: readers see the old object or the new one |
| :meth:`~StoreBackend.create` | write only if the key is absent (the lease's first claim) |
| :meth:`~StoreBackend.replace` | write only if the version is still the one read (CAS) |
| :meth:`~StoreBackend.list` | the keys under a prefix, never a half-written one |
| :meth:`~StoreBackend.list_versions` | the same with each object's size and version |
| :meth:`~StoreBackend.delete` / :meth:`~StoreBackend.delete_prefix` | remove; absent is fine |

``BACKENDS`` maps URL schemes to classes: a plain path or ``file://`` is :class:`LocalBackend`.
What a server sends a stored object from is a :class:`Sendable`, whichever backend made it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchstash.client import InvalidRequestError

__all__ = ["BACKENDS", "NoSuchKey", "Sendable", "StoreBackend", "nbytes", "open_backend"]


class NoSuchKey(LookupError):
    """The object ``key`` does not exist (the message names the key, never a server path)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class Sendable(ABC):
    """A stored object held open, unread, at the version it was opened: what a server sends.

    :meth:`StoreBackend.open_versioned` returns one where a backend's objects are files on this
    machine. The data listener hands the kernel :meth:`fileno` (``os.sendfile``) once the
    reader knows :attr:`version` verified; what needs the bytes takes :meth:`view`. Whoever
    holds one closes it.

    An abstract base class rather than a ``typing.Protocol``: ``isinstance`` runs on every chunk
    of every reply, and ABCMeta caches its answer per type where a protocol's runtime check
    looks up each member every time.

    Attributes:
        size: the object's size in bytes (``len()`` too).
        version: its version when opened (the backend's :meth:`StoreBackend.version` format).
    """

    __slots__ = ()

    size: int
    version: str

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    def fileno(self) -> int:
        """The descriptor the object's bytes are sent from."""

    @abstractmethod
    def view(self) -> memoryview:
        """The object's bytes, read or mapped."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the object (a view taken stays valid)."""


def nbytes(chunk: Any) -> int:
    """The bytes of a payload chunk: a buffer, or a :class:`Sendable` held open unread."""
    return chunk.size if isinstance(chunk, Sendable) else memoryview(chunk).nbytes


class StoreBackend(ABC):
    """Byte objects by key: the only thing the store's records, writer and reader rely on."""

    #: the store's URL, as given (logs and status show it)
    url: str
    #: how long a reader trusts a record it read before checking its version again
    records_refresh_s: float = 0.0
    #: how many objects a reader fetches at once for one request (1: one after the other)
    concurrent_reads: int = 1
    #: whether the objects are files on this machine (a local cache of them would only copy)
    is_local: bool = False

    @abstractmethod
    def read(self, key: str) -> bytearray:
        """The object's bytes in a writable buffer (tensors can view it without a copy).

        Raises:
            NoSuchKey: the object does not exist.
        """

    def read_mapped(self, key: str) -> Any:
        """The object's bytes for serving: a read-only mapping where the backend can, else a read.

        Raises:
            NoSuchKey: the object does not exist.
        """
        return self.read(key)

    def read_mapped_versioned(self, key: str) -> tuple[Any, str | None]:
        """:meth:`read_mapped` and the version of the bytes read (``None``: changed meanwhile).

        Raises:
            NoSuchKey: the object does not exist.
        """
        before = self.version(key)
        data = self.read_mapped(key)
        return data, before if before is not None and self.version(key) == before else None

    def open_versioned(self, key: str) -> Sendable | None:
        """The object held open without reading it, with its version, where it is a local file.

        A :class:`Sendable` the data listener can send with ``sendfile`` once the reader knows
        that version verified; ``None`` (the default): this backend's objects are not local
        files, read them with :meth:`read_mapped_versioned`.

        Raises:
            NoSuchKey: the object does not exist.
        """
        return None

    @abstractmethod
    def version(self, key: str) -> str | None:
        """A token that changes whenever the object is replaced; ``None`` when it is absent."""

    def read_versioned(self, key: str) -> tuple[bytearray, str]:
        """The object's bytes and the version they have.

        Raises:
            NoSuchKey: the object does not exist.
        """
        while True:
            before = self.version(key)
            if before is None:
                raise NoSuchKey(key)
            data = self.read(key)
            if self.version(key) == before:
                return data, before

    @abstractmethod
    def write(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Store ``chunks`` as the object ``key``, all or nothing."""

    def write_unsynced(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Store ``chunks`` as ``key``, all or nothing, durable once :meth:`sync` returns.

        Readers see the object at once, and a crashed process leaves it whole; only a power
        loss before :meth:`sync` may lose or tear it. Batch objects are written so (each
        carries checksums, verified by a resume and by a first read); records never are. By
        default (an object store, whose writes are durable when they return) it is
        :meth:`write`.
        """
        self.write(key, chunks)

    def sync(self) -> None:
        """Make every :meth:`write_unsynced` object of this store durable, from any process.

        Nothing by default: an object store's writes are durable when they return.
        """
        return None

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` as ``key`` only if it does not exist; returns whether it was written."""

    @abstractmethod
    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Replace ``key`` only if its version is still ``version``; returns whether it was."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every complete object's key under ``prefix`` (which ends with ``/`` or is empty)."""

    def list_versions(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """``(key, size, version)`` of every complete object under ``prefix``.

        The version is :meth:`version`'s. By default a ``version`` call per key (size ``-1``);
        backends whose listing carries both answer from it.
        """
        for key in self.list(prefix):
            version = self.version(key)
            if version is not None:
                yield key, -1, version

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (absent is fine)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (absent is fine)."""

    def sweep_temporaries(self) -> int:
        """Remove what interrupted writes left behind; returns how many. Nothing by default."""
        return 0

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~batchstash.client.StoreError` if the store cannot be used (start-up)."""


def _local(url: str) -> StoreBackend:
    from .local import LocalBackend

    return LocalBackend(url)


def _s3(url: str) -> StoreBackend:
    from .s3 import S3Backend

    return S3Backend(url)


BACKENDS: dict[str, Callable[[str], StoreBackend]] = {"": _local, "file": _local, "s3": _s3}
"""Store backends by URL scheme (a plain path has none)."""


def open_backend(url: str | Path) -> StoreBackend:
    """The backend for a store URL: a path, ``file:///abs/path``, or another registered scheme.

    Raises:
        InvalidRequestError: the scheme has no backend.
    """
    text = str(url)
    scheme = urlsplit(text).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    try:
        make = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(sorted(s for s in BACKENDS if s)) or "file"
        raise InvalidRequestError(
            f"store URL {text!r}: no backend for {scheme}:// (supported: a path, {known}://)"
        ) from None
    return make(text)
