"""Crash-safe file primitives: atomic writes, whole-file reads, which files verified.

Atomic writes go temp file, fsync, rename; :class:`VerifiedFiles` remembers (bounded) which files
verified since they were last written.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batchstash.client import InvalidRequestError

__all__ = [
    "VerifiedFiles",
    "atomic_write",
    "atomic_write_json",
    "map_file",
    "read_file",
    "safe_name",
]

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path component, else raise ``InvalidRequestError``."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise InvalidRequestError(f"{what} {name!r} must match {_SAFE.pattern} without '..'")
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write ``chunks`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory, which is fsynced, renamed over
    ``path``, and the directory fsynced so the rename itself survives a power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, doc: Any) -> None:
    """Atomically write ``doc`` as indented, key-sorted JSON."""
    atomic_write(path, [json.dumps(doc, indent=1, sort_keys=True).encode()])


_MAP_AT = 512 * 1024


def map_file(path: str | Path) -> memoryview:
    """Map a whole file read-only (pre-faulted): served bytes go page cache -> socket, no copy.

    Files under 512 KiB are read instead (cheaper than a mapping, and never empty for ``mmap``).
    """
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < _MAP_AT:  # small files: one read is cheaper than setting up a mapping
            return memoryview(fh.read())
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return memoryview(mmap.mmap(fh.fileno(), size, flags=flags, prot=mmap.PROT_READ))


def read_file(path: str | Path) -> bytearray:
    """Read a whole file into a writable buffer (so tensors can view it without a copy)."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    return buf if got == size else buf[:got]


FileIdentity = tuple[int, int, int, int, int]


def file_identity(path: str | Path) -> FileIdentity:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime, ctime."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerifiedFiles:
    """Remembers files whose checksums verified, until they change (bounded, least recent out).

    A file is known by :func:`file_identity`: our writer replaces files by rename (a new inode),
    and writing in place changes the size or the times. What this cannot see, a byte rotting in
    place, the client's end-to-end checksums still catch: the checksums travel with the payload.

    Args:
        capacity: files remembered at most (``0``: none, so every read verifies).
    """

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._known: OrderedDict[str, FileIdentity] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def is_verified(self, path: str, identity: FileIdentity) -> bool:
        """Whether ``path`` verified with this ``identity`` (taken before reading it)."""
        with self._lock:
            known = self._known.get(path)
            if known is None:
                return False
            if known != identity:
                del self._known[path]
                return False
            self._known.move_to_end(path)
            return True

    def add(self, path: str, identity: FileIdentity) -> None:
        """Record that ``path`` verified, if it still has ``identity`` (read before the bytes)."""
        if self.capacity <= 0:
            return
        try:
            if file_identity(path) != identity:
                return  # replaced or rewritten while it was read: verify it next time
        except FileNotFoundError:
            return
        with self._lock:
            self._known[path] = identity
            self._known.move_to_end(path)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)

    def clear(self) -> None:
        """Forget every file."""
        with self._lock:
            self._known.clear()
