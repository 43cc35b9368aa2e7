"""Source files of a dataset: what version each is, its content digest, and whether it changed.

A file's *version* is its ``stat`` signature (size, modification and change times in
nanoseconds, inode, device): rewriting, replacing or ``touch``-ing a file changes it, and
``ctime`` cannot be set back by a program. A file's *digest* is an ``xxh3_128`` of its bytes,
read once per version: digests are kept in memory and in a small JSON file beside the cache
(``<cache>/digests.json``), so a server restart, or a priming worker opening the same files,
hashes nothing again while the files stay the same.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from batchstash.client import BatchError

__all__ = [
    "CHANGED_HINT",
    "FileVersion",
    "cache_dir",
    "changed_files",
    "file_digest",
    "versions_of",
]

CHANGED_HINT = (
    "restart the server (or build the stash again) on the new data, then clear the store "
    "(batchstash clear) and prime it: batches stored so far hold the old data"
)
"""What to do when a dataset's data changed under a prime (the end of each such error)."""

CHUNK = 8 << 20
"""Bytes read at a time when hashing a file."""

_digests: dict[FileVersion, str] = {}
_lock = threading.Lock()


def cache_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """The directory for derived files.

    ``given``, else ``$BATCHSTASH_CACHE_DIR``, else ``~/.cache/batchstash`` (``$XDG_CACHE_HOME``
    honoured).
    """
    if given is not None:
        return Path(given)
    if os.environ.get("BATCHSTASH_CACHE_DIR"):
        return Path(os.environ["BATCHSTASH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "batchstash"


@dataclass(frozen=True)
class FileVersion:
    """One file as it is now: its path and ``stat`` signature."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileVersion:
        """The version of ``path`` now.

        Raises:
            BatchError: the file cannot be read.
        """
        try:
            st = os.stat(path)
        except OSError as exc:
            raise BatchError(f"cannot read {path}: {exc.strerror}") from None
        return cls(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def key(self) -> str:
        """The version as one string (a digest file's key)."""
        return (
            f"{os.path.abspath(self.path)}|{self.size}|{self.mtime_ns}|{self.ctime_ns}|"
            f"{self.inode}|{self.device}"
        )


def versions_of(paths: Iterable[str | os.PathLike[str]]) -> tuple[FileVersion, ...]:
    """The versions of ``paths`` now, in order."""
    return tuple(FileVersion.of(p) for p in paths)


def changed_files(versions: Sequence[FileVersion]) -> list[str]:
    """The paths among ``versions`` whose file is no longer that version (or is gone)."""
    changed = []
    for version in versions:
        try:
            now = FileVersion.of(version.path)
        except BatchError:
            changed.append(version.path)
            continue
        if now != version:
            changed.append(version.path)
    return changed


def file_digest(version: FileVersion, cache: Path | None = None) -> str:
    """The content digest of the file at ``version`` (read only if not known for that version).

    Args:
        version: the file and the version the caller saw.
        cache: the directory whose ``digests.json`` keeps digests across processes (``None``:
            memory only).

    Raises:
        BatchError: the file changed before or while it was read (its version differs).
    """
    with _lock:
        known = _digests.get(version)
    if known is None and cache is not None:
        known = _stored(cache).get(version.key())
    if known is None:
        known = _hash_file(version)
        if cache is not None:
            _store(cache, version.key(), known)
    with _lock:
        _digests[version] = known
    return known


def _hash_file(version: FileVersion) -> str:
    if FileVersion.of(version.path) != version:
        raise BatchError(f"{version.path} changed since it was opened; open the dataset again")
    digest = xxhash.xxh3_128()
    with open(version.path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    if FileVersion.of(version.path) != version:
        raise BatchError(f"{version.path} changed while it was read; open the dataset again")
    return str(digest.hexdigest())


def _stored(cache: Path) -> dict[str, str]:
    try:
        data = json.loads((cache / "digests.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(cache: Path, key: str, digest: str) -> None:
    """Add a digest to ``digests.json`` (best effort: a lost update only costs a re-read)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        data = _stored(cache)
        data[key] = digest
        if len(data) > 4096:  # old versions go first (dicts keep insertion order)
            data = dict(list(data.items())[-4096:])
        tmp = cache / f".digests.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, cache / "digests.json")
    except OSError:
        pass
