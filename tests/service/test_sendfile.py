"""The data listener sends whole stored files with sendfile, and only the version it checked."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from batchstash.service.api.sending import send_chunks
from batchstash.service.store.local import LocalBackend, MappedFile

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


def test_the_backend_maps_large_files_with_their_version(tmp_path: Path) -> None:
    backend, data = _store(tmp_path)
    view, version = backend.read_mapped_versioned("g/b.safetensors")
    mapped = view.obj
    assert isinstance(mapped, MappedFile) and bytes(view) == data
    assert mapped.version == version == backend.version("g/b.safetensors")
    assert Path(mapped.path) == tmp_path / "store" / "g" / "b.safetensors"


@pytest.mark.parametrize("sendfile", [True, False])
def test_memory_and_whole_files_arrive_in_order(tmp_path: Path, sendfile: bool) -> None:
    backend, data = _store(tmp_path)
    view, _ = backend.read_mapped_versioned("g/b.safetensors")
    ours, theirs = _pair(sndbuf=64 * 1024)  # small: the send waits for room many times
    reader = Reader(theirs, pause=0.001)
    send_chunks(ours, [b"HTTP head ", b"prefix", view, b"-", view[5:100], b" tail"], sendfile)
    ours.close()
    assert reader.result() == b"HTTP head prefix" + data + b"-" + data[5:100] + b" tail"


def test_a_file_replaced_after_it_was_checked_sends_the_checked_bytes(tmp_path: Path) -> None:
    backend, old = _store(tmp_path)
    view, _ = backend.read_mapped_versioned("g/b.safetensors")
    new = bytes(reversed(old))
    backend.write("g/b.safetensors", [new])  # atomically renamed over it: a new inode
    assert backend.version("g/b.safetensors") != view.obj.version
    ours, theirs = _pair()
    reader = Reader(theirs)
    send_chunks(ours, [view], sendfile=True)
    ours.close()
    assert reader.result() == old  # the mapping's bytes, not the new file's


def test_a_file_removed_after_it_was_checked_sends_the_mapping(tmp_path: Path) -> None:
    backend, data = _store(tmp_path)
    view, _ = backend.read_mapped_versioned("g/b.safetensors")
    os.unlink(view.obj.path)
    ours, theirs = _pair()
    reader = Reader(theirs)
    send_chunks(ours, [b"x", view], sendfile=True)
    ours.close()
    assert reader.result() == b"x" + data


def test_a_client_that_never_reads_times_out(tmp_path: Path) -> None:
    backend, _ = _store(tmp_path)
    view, _ = backend.read_mapped_versioned("g/b.safetensors")
    ours, theirs = _pair(sndbuf=64 * 1024)
    ours.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            send_chunks(ours, [view], sendfile=True)
    finally:
        ours.close()
        theirs.close()
