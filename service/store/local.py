"""The local-directory backend: temp file, fsync, rename; files served from read-only mappings."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from batchstash.client import InvalidRequestError, StoreError

from .backend import NoSuchKey, Sendable, StoreBackend

__all__ = ["LocalBackend", "StoredFile", "file_version"]

_MAP_AT = 512 * 1024


def file_version(st: os.stat_result) -> str:
    """A stored file's version: device, inode, size, mtime and ctime (see ``version``)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class StoredFile(Sendable):
    """A stored file held open at the version it was opened, for serving without reading it.

    The data listener hands the kernel the file itself (``os.sendfile`` from :attr:`fd`) once
    the reader knows this version verified: the bytes sent are those of the inode opened, so a
    store replacing the key meanwhile (a rename over it) or removing it changes nothing. Where
    bytes are needed (a first verification, a payload composed from several objects, the API
    port, ``data_sendfile`` off) :meth:`view` maps or reads them.

    The descriptor is closed by :meth:`close`, or when the object is dropped.

    Attributes:
        fd: the open file.
        size: its size in bytes (``len()`` too).
        version: its version when opened (:meth:`LocalBackend.version`'s format).
    """

    __slots__ = ("fd", "size", "version", "_view")

    def __init__(self, fd: int, size: int, version: str) -> None:
        self.fd, self.size, self.version = fd, size, version
        self._view: memoryview | None = None

    def __len__(self) -> int:
        return self.size

    def fileno(self) -> int:
        """The open file's descriptor (:attr:`fd`)."""
        return self.fd

    def view(self) -> memoryview:
        """The bytes: read under 512 KiB (cheaper than a mapping), else mapped, not pre-faulted.

        Not pre-faulted: a served object is mostly read by the kernel's send, which faults the
        pages in itself, so faulting them all in first is a pass over them for nothing; a
        verifying read faults as it goes.
        """
        if self._view is None:
            if self.fd < 0:
                raise ValueError("the stored file is closed")
            if self.size < _MAP_AT:
                buf = bytearray(self.size)
                got = os.preadv(self.fd, [buf], 0) if self.size else 0
                self._view = memoryview(buf if got == self.size else buf[:got])
            else:
                self._view = memoryview(mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ))
        return self._view

    def close(self) -> None:
        """Close the descriptor (a view taken stays valid: a mapping holds its own)."""
        fd, self.fd, self._view = self.fd, -1, None
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


_LOCK = ".lock"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        syncfs: Callable[[int], int] = libc.syncfs
        return syncfs
    except (OSError, AttributeError, TypeError):  # not Linux: sync() below
        return None


_SYNCFS = _libc_syncfs()


def _syncfs(path: Path) -> None:
    """Flush the data and metadata of the filesystem holding ``path`` (every process's writes).

    ``syncfs(2)`` on Linux (it reports the filesystem's writeback errors since Linux 5.8),
    else ``sync(2)``, which flushes every filesystem.
    """
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _subdirs(root: Path, depth: int) -> list[Path]:
    """Directories under ``root`` down to ``depth`` levels (``batches/<generation>/<split>``)."""
    found, level = [], [root]
    for _ in range(depth):
        level = [
            Path(e.path)
            for d in level
            for e in _scan(d)
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
        ]
        found.extend(level)
    return found


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


class LocalBackend(StoreBackend):
    """Objects as files under one directory (a volume shared by the processes of one host).

    Writes go to a hidden temporary file in the same directory, which is fsynced, renamed over
    the target and the directory fsynced, so a crash leaves the old object or the new one.
    Compare-and-swap holds an ``flock`` on ``.lock``; ``create`` is an atomic ``link``.

    Args:
        url: a directory path or ``file:///abs/path``.
    """

    is_local = True

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        parts = urlsplit(self.url)
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise InvalidRequestError(
                f"store URL {self.url!r}: a file URL names an absolute path (file:///abs/path)"
            )
        local = unquote(parts.path) if parts.scheme == "file" else self.url
        self.root = Path(local)
        self._root = str(self.root)

    def _file(self, key: str) -> str:
        # a string join, not pathlib: this runs for every served object
        if not key or key[0] == "/" or ".." in key.split("/"):
            raise ValueError(f"not a store key: {key!r}")
        return f"{self._root}/{key}"

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def read(self, key: str) -> bytearray:
        """The file's bytes in a writable buffer."""
        try:
            with open(self._file(key), "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                buf = bytearray(size)
                view, got = memoryview(buf), 0
                while got < size:
                    n = fh.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKey(key) from None
        return buf if got == size else buf[:got]

    def read_mapped(self, key: str) -> memoryview:
        """The file mapped read-only and pre-faulted (files under 512 KiB are read: cheaper)."""
        try:
            with open(self._file(key), "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < _MAP_AT:
                    return memoryview(fh.read())
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                return memoryview(mmap.mmap(fh.fileno(), size, flags=flags, prot=mmap.PROT_READ))
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKey(key) from None

    def open_versioned(self, key: str) -> StoredFile:
        """The file held open with the version of what was opened (one ``fstat``, no read)."""
        try:
            fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKey(key) from None
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return StoredFile(fd, st.st_size, file_version(st))

    def read_mapped_versioned(self, key: str) -> tuple[memoryview, str | None]:
        """The file's bytes (mapped from 512 KiB, not pre-faulted) and the version opened.

        The bytes are those of the inode opened, so its identity is their version even if the
        key is replaced a moment later.
        """
        opened = self.open_versioned(key)
        try:
            return opened.view(), opened.version
        finally:
            opened.close()

    def version(self, key: str) -> str | None:
        """Device, inode, size, mtime and ctime: a rename gives a new inode, a rewrite new times."""
        try:
            st = os.stat(self._file(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return file_version(st)

    def _temp(self, path: Path, chunks: Iterable[bytes | memoryview], sync: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def write_unsynced(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Temp file, rename over the target; no fsync until :meth:`sync`.

        The rename is atomic for every reader and survives the writer's crash (the page cache
        holds the bytes); a power loss before :meth:`sync` may leave the object missing, empty
        or torn, which its checksums reveal.
        """
        path = self._path(key)
        tmp = self._temp(path, chunks, sync=False)
        try:
            os.replace(tmp, path)
        except BaseException:  # renamed: nothing left to remove (one syscall an object saved)
            tmp.unlink(missing_ok=True)
            raise

    def sync(self) -> None:
        """``syncfs`` of the store's filesystem: every process's unsynced objects, durable.

        Each filesystem the store's directories down to a split's live on is synced once (a
        ``batches`` folder mounted from another disk is covered too).
        """
        seen: dict[int, Path] = {}
        for directory in (self.root, *_subdirs(self.root, 3)):
            seen.setdefault(directory.stat().st_dev, directory)
        for directory in seen.values():
            _syncfs(directory)

    def write(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Temp file, fsync, rename over the target, fsync the directory."""
        path = self._path(key)
        tmp = self._temp(path, chunks)
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def create(self, key: str, data: bytes) -> bool:
        """An atomic ``link`` of a complete temp file: it fails if the key exists."""
        path = self._path(key)
        tmp = self._temp(path, [data])
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return True

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Compare-and-swap under an ``flock`` that every replacing process takes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if self.version(key) != version:
                    return False
                self.write(key, [data])
                return True
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, depth first; hidden files (temporaries, the lock) are skipped."""
        base = self.root / prefix if prefix else self.root
        stack = [(base, prefix)]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), f"{rel}{entry.name}/"))
                else:
                    yield f"{rel}{entry.name}"

    def list_versions(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """Keys under ``prefix`` with their sizes and versions (one ``stat`` each, no read)."""
        for key in self.list(prefix):
            try:
                st = os.stat(self._file(key))
            except FileNotFoundError:  # removed meanwhile
                continue
            yield key, st.st_size, file_version(st)

    def delete(self, key: str) -> None:
        """Unlink the file (absent is fine)."""
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove the directory ``prefix`` names (absent is fine)."""
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def sweep_temporaries(self) -> int:
        """Remove the temporary files of writes a crash interrupted."""
        count = 0
        for directory, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    Path(directory, name).unlink(missing_ok=True)
                    count += 1
        return count

    def check(self) -> None:
        """The directory exists (or can be made) and is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"store {self.url}: exists and is not a directory") from None
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot create it ({exc.strerror})") from None
        if not self.root.is_dir():
            raise StoreError(f"store {self.url}: exists and is not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"store {self.url}: not writable by this process")
