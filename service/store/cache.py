"""A bounded local cache of verified batch objects, for serving a remote store from local disk.

Only objects whose checksums verified go in, and a batch object's key names its generation, so
a cached object never goes stale: any valid object of that key has the same bytes (encoding is
deterministic), and a clear gives the next plan new keys. Least recently used objects leave
first once ``max_bytes`` is exceeded. The cache starts empty: files a previous process left are
removed, never trusted.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .backend import StoreBackend

__all__ = ["ObjectCache", "object_cache"]

_MAP_AT = 512 * 1024


class ObjectCache:
    """Verified objects as files under ``directory``, at most ``max_bytes`` in all.

    Args:
        directory: where the files go (made if absent; emptied at start).
        max_bytes: the most bytes kept.
        namespace: names the store (its URL), so one directory can serve several stores.
    """

    def __init__(self, directory: str | Path, max_bytes: int, namespace: str = "") -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.namespace = namespace
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _name(self, key: str) -> str:
        return hashlib.sha256(f"{self.namespace}\0{key}".encode()).hexdigest()

    @property
    def size(self) -> int:
        """The bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._sizes)

    def get(self, key: str) -> Any:
        """The cached object's bytes (mapped read-only when large), or ``None``."""
        name = self._name(key)
        with self._lock:
            if name not in self._sizes:
                self.misses += 1
                return None
            self._sizes.move_to_end(name)
            self.hits += 1
        try:
            with open(self.directory / name, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < _MAP_AT:
                    return memoryview(fh.read())
                return memoryview(mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ))
        except FileNotFoundError:  # evicted meanwhile
            return None

    def put(self, key: str, data: Any) -> None:
        """Keep a verified object (written whole, then renamed into place)."""
        view = memoryview(data).cast("B")
        if view.nbytes > self.max_bytes:
            return
        name = self._name(key)
        tmp = self.directory / f".{name}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(view)
        os.replace(tmp, self.directory / name)
        with self._lock:
            self._bytes += view.nbytes - self._sizes.pop(name, 0)
            self._sizes[name] = view.nbytes
            while self._bytes > self.max_bytes and self._sizes:
                old, size = self._sizes.popitem(last=False)
                self._bytes -= size
                (self.directory / old).unlink(missing_ok=True)


def object_cache(
    backend: StoreBackend, directory: str | None, max_bytes: int
) -> ObjectCache | None:
    """A server's cache of verified objects for a remote store (``None`` for local files).

    Args:
        backend: the store.
        directory: where the cache keeps its files (``None``: a directory under the system's
            temp dir, named after the store's URL).
        max_bytes: the most bytes it holds (``0``: no cache).
    """
    if backend.is_local or max_bytes == 0:
        return None
    if directory is None:
        name = hashlib.sha256(backend.url.encode()).hexdigest()[:16]
        directory = str(Path(tempfile.gettempdir()) / f"batchstash-cache-{name}")
    return ObjectCache(directory, max_bytes, namespace=backend.url)
