"""Stored files held open at the version that verified, sent whole with sendfile (or as memory)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from batchstash.service.api.sending import send_chunks
from batchstash.service.store.backend import NoSuchKey
from batchstash.service.store.local import LocalBackend, StoredFile

SIZE = 3 * 1024 * 1024 + 17  # above the mapping threshold, not a multiple of a page


def _store(tmp_path: Path, fill: int = 7) -> tuple[LocalBackend, bytes]:
    backend = LocalBackend(str(tmp_path / "store"))
    data = (bytes((i * fill) % 251 for i in range(251)) * (SIZE // 251 + 1))[:SIZE]
    backend.write("g/b.safetensors", [data])
    return backend, data


class Reader:
    """The far end of a socket pair, read in a thread (slowly when asked)."""

    def __init__(self, sock: socket.socket, pause: float = 0.0) -> None:
        self.sock, self.pause, self.data = sock, pause, bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := self.sock.recv(65536):
            self.data += chunk
            if self.pause:
                time.sleep(self.pause)

    def result(self) -> bytes:
        self.thread.join(timeout=30)
        return bytes(self.data)


def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.settimeout(10)  # as the listener's connections: non-blocking underneath
    return ours, theirs


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [SIZE, 1000, 0])
def test_the_backend_opens_files_unread_with_their_version(tmp_path: Path, size: int) -> None:
    backend, data = _store(tmp_path)
    backend.write("g/b.safetensors", [data[:size]])
    before = _open_fds()
    opened = backend.open_versioned("g/b.safetensors")
    assert isinstance(opened, StoredFile) and len(opened) == size
    assert opened.version == backend.version("g/b.safetensors")
    assert _open_fds() == before + 1
    assert bytes(opened.view()) == data[:size]  # mapped from 512 KiB, read below
    opened.close()
    opened.close()  # twice is fine
    assert _open_fds() == before


def test_a_dropped_file_closes_its_descriptor(tmp_path: Path) -> None:
    backend, _ = _store(tmp_path)
    before = _open_fds()
    opened = backend.open_versioned("g/b.safetensors")
    del opened
    assert _open_fds() == before


def test_read_mapped_versioned_holds_no_descriptor_for_small_files(tmp_path: Path) -> None:
    backend, data = _store(tmp_path)
    backend.write("g/small", [data[:4096]])
    before = _open_fds()
    view, version = backend.read_mapped_versioned("g/small")
    assert bytes(view) == data[:4096] and version == backend.version("g/small")
    assert _open_fds() == before


def test_a_missing_file_is_no_such_key(tmp_path: Path) -> None:
    backend, _ = _store(tmp_path)
    with pytest.raises(NoSuchKey):
        backend.open_versioned("g/absent")
    with pytest.raises(NoSuchKey):
        backend.open_versioned("g/b.safetensors/under-a-file")


@pytest.mark.parametrize("sendfile", [True, False])
def test_memory_and_whole_files_arrive_in_order(tmp_path: Path, sendfile: bool) -> None:
    backend, data = _store(tmp_path)
    backend.write("g/small", [data[:5000]])
    big, small = backend.open_versioned("g/b.safetensors"), backend.open_versioned("g/small")
    view = big.view()
    ours, theirs = _pair(sndbuf=64 * 1024)  # small: the send waits for room many times
    reader = Reader(theirs, pause=0.001)
    send_chunks(ours, [b"HTTP head ", b"prefix", big, b"-", view[5:100], small, b" tail"], sendfile)
    ours.close()
    expected = b"HTTP head prefix" + data + b"-" + data[5:100] + data[:5000] + b" tail"
    assert reader.result() == expected


@pytest.mark.parametrize("sendfile", [True, False])
def test_a_file_replaced_after_it_was_opened_sends_the_opened_bytes(
    tmp_path: Path, sendfile: bool
) -> None:
    backend, old = _store(tmp_path)
    opened = backend.open_versioned("g/b.safetensors")
    backend.write("g/b.safetensors", [bytes(reversed(old))])  # renamed over it: a new inode
    assert backend.version("g/b.safetensors") != opened.version
    ours, theirs = _pair()
    reader = Reader(theirs)
    send_chunks(ours, [opened], sendfile)
    ours.close()
    assert reader.result() == old  # the verified inode's bytes, not the new file's


@pytest.mark.parametrize("sendfile", [True, False])
def test_a_file_removed_after_it_was_opened_still_sends(tmp_path: Path, sendfile: bool) -> None:
    backend, data = _store(tmp_path)
    opened = backend.open_versioned("g/b.safetensors")
    backend.delete("g/b.safetensors")
    ours, theirs = _pair()
    reader = Reader(theirs)
    send_chunks(ours, [b"x", opened], sendfile)
    ours.close()
    assert reader.result() == b"x" + data


def test_a_file_truncated_in_place_breaks_the_connection(tmp_path: Path) -> None:
    backend, _ = _store(tmp_path)
    opened = backend.open_versioned("g/b.safetensors")
    os.truncate(tmp_path / "store" / "g" / "b.safetensors", 1000)  # not how a store writes
    ours, theirs = _pair()
    reader = Reader(theirs)
    with pytest.raises(ConnectionError, match="shrank"):
        send_chunks(ours, [opened], sendfile=True)
    ours.close()
    assert len(reader.result()) == 1000  # the framing is broken: the caller ends the connection


def test_a_client_that_never_reads_times_out(tmp_path: Path) -> None:
    backend, _ = _store(tmp_path)
    opened = backend.open_versioned("g/b.safetensors")
    ours, theirs = _pair(sndbuf=64 * 1024)
    ours.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            send_chunks(ours, [opened], sendfile=True)
    finally:
        ours.close()
        theirs.close()
