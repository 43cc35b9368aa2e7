"""The ceiling: raw loopback TCP between Python processes, 1 MiB messages, ``recv_into``.

Run as ``python -m benchmarks.ceiling``, the sender listens on 127.0.0.1, prints its port and
forks one sender process per connection (so N receivers get N sender/receiver pairs, all in the
sender's process tree, whose CPU the suite accounts). A receiver (:class:`Receiver`, a consumer
kind) opens with two bytes that choose the run:

* buffers ``D``, distinct: the sender cycles through :data:`SEND_BUFFERS` distinct 1 MiB buffers
  (256 MiB, more than the caches hold) and the receiver receives into :data:`RECEIVE_BUFFERS`
  buffers in turn, as a client receives each batch into new memory. The ratios use this one.
  ``H``, cache-hot: one buffer each side, always in cache (information only);
  ``F``, stored files by ``sendfile``: with ``--files DIR`` the sender sends the first 1 MiB of
  each stored batch file under ``DIR`` in turn, opening it for each message and handing it to
  ``os.sendfile`` (the data listener's default way, without HTTP or Python around it); ``M``,
  stored files mapped: the same files mapped for each message and sent with ``sendall`` (the
  way of ``data_sendfile=false``). Information: what the kernel charges each way on this machine;
* shape ``S``, stream: messages back to back; ``R``, request: the receiver asks for each message
  with one byte (one round trip per message).
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

from .servers import REPO_ROOT, Server, child_env, stop

__all__ = [
    "FILE_RUNS",
    "KINDS",
    "MESSAGE_BYTES",
    "RECEIVE_BUFFERS",
    "RUNS",
    "SEND_BUFFERS",
    "Receiver",
    "sender",
]

MESSAGE_BYTES = 1 << 20
SEND_BUFFERS = 256
RECEIVE_BUFFERS = 32
HOST = "127.0.0.1"

KINDS = {
    "tcp_distinct": (b"D", b"S"),
    "tcp_hot": (b"H", b"S"),
    "tcp_hot_request": (b"H", b"R"),
    "tcp_files_sendfile": (b"F", b"S"),
    "tcp_files_mapped": (b"M", b"S"),
}
"""Consumer kinds of the ceiling: their opening bytes (buffers, shape)."""

RUNS = {
    "distinct_1": ("tcp_distinct", 1),
    "distinct_4": ("tcp_distinct", 4),
    "hot_stream_1": ("tcp_hot", 1),
    "hot_request_1": ("tcp_hot_request", 1),
}
"""The ceiling rows: consumer kind and sender/receiver pairs."""

FILE_RUNS = {
    "files_sendfile_1": ("tcp_files_sendfile", 1),
    "files_mapped_1": ("tcp_files_mapped", 1),
}
"""The stored-file rows (a sender given ``--files``): consumer kind and pairs."""


def _receive(sock: socket.socket, view: memoryview) -> None:
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("sender closed early")
        got += n


def _send_file(conn: socket.socket, path: str, mapped: bool) -> None:
    """Send the first :data:`MESSAGE_BYTES` of a stored file, opened (and closed) for it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if mapped:
            with mmap.mmap(fd, MESSAGE_BYTES, prot=mmap.PROT_READ) as mapping:
                conn.sendall(mapping)
            return
        offset = 0
        while offset < MESSAGE_BYTES:
            sent = os.sendfile(conn.fileno(), fd, offset, MESSAGE_BYTES - offset)
            if not sent:
                raise ConnectionError(f"{path} is shorter than a message")
            offset += sent
    finally:
        os.close(fd)


def _send(conn: socket.socket, buffers: list[memoryview], files: list[str]) -> None:
    """One connection: read the two opening bytes, then send until the receiver hangs up."""
    opening = bytearray(2)
    _receive(conn, memoryview(opening))
    kind = bytes(opening[:1])
    payloads = buffers if kind == b"D" else buffers[:1]
    request, ask, sent = opening[1:] == b"R", bytearray(1), 0
    stored = kind in (b"F", b"M")
    if stored and not files:
        return  # no files to send (no --files): the receiver sees the connection close
    try:
        while not request or conn.recv_into(ask) == 1:
            if stored:
                _send_file(conn, files[sent % len(files)], mapped=kind == b"M")
            else:
                conn.sendall(payloads[sent % len(payloads)])
            sent += 1
    except OSError:  # the receiver hung up: the run is over
        pass


def _stored_files(directory: str | None) -> list[str]:
    """The files of at least one message under ``directory``, read once (into the page cache)."""
    if directory is None:
        return []
    found, scratch = [], bytearray(MESSAGE_BYTES)
    for root, _, names in sorted(os.walk(directory)):
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.startswith(".") and os.path.getsize(path) >= MESSAGE_BYTES:
                with open(path, "rb", buffering=0) as fh:
                    fh.readinto(scratch)
                found.append(path)
    return found


def _serve(files_dir: str | None = None) -> None:
    """The sender: fill the buffers, print the port, fork a sender per connection."""
    files = _stored_files(files_dir)
    buffers = [
        memoryview(bytearray(bytes([1 + i % 255]) * MESSAGE_BYTES)) for i in range(SEND_BUFFERS)
    ]
    children: list[int] = []

    def on_term(*_: Any) -> None:  # stop the senders this process forked, by pid
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    with socket.create_server((HOST, 0)) as server:
        print(server.getsockname()[1], flush=True)
        while True:
            conn, _ = server.accept()
            children[:] = [p for p in children if os.waitpid(p, os.WNOHANG) == (0, 0)]
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                server.close()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _send(conn, buffers, files)
                os._exit(0)
            children.append(pid)
            conn.close()


@contextmanager
def sender(log: Path, files: Path | None = None, timeout: float = 300.0) -> Iterator[Server]:
    """Run the sender until the block ends, then stop it (and its senders) by pid.

    ``files``: a store directory whose batch files the ``F`` and ``M`` kinds send.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "benchmarks.ceiling"]
    if files is not None:
        argv += ["--files", str(files)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=err
        )
    out = cast(IO[bytes], proc.stdout)  # stdout=PIPE
    try:
        if not select.select([out], [], [], timeout)[0]:
            raise RuntimeError(f"the ceiling sender printed no port in {timeout}s (log: {log})")
        port = int(out.readline() or 0)
        if not port:
            raise RuntimeError(f"the ceiling sender exited (log: {log})")
        yield Server(f"http://{HOST}:{port}", proc.pid, log)
    finally:
        stop(proc)
        out.close()


class Receiver:
    """The ceiling's consumer: receive whole 1 MiB messages from the sender at ``task.url``.

    Args:
        task: the load task (its ``url`` and ``kind``, one of :data:`KINDS`).
        rank: this consumer's rank (unused: every pair is alike).
    """

    def __init__(self, task: Any, rank: int) -> None:
        buffers, shape = KINDS[task.kind]
        url = urlsplit(task.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(buffers + shape)
        self.request = shape == b"R"
        count = 1 if buffers == b"H" else RECEIVE_BUFFERS
        self.ring, self.turn = [memoryview(bytearray(MESSAGE_BYTES)) for _ in range(count)], 0
        for _ in range(count + 2):  # warm up: the connection, both processes, every buffer
            self.step()

    def begin(self) -> None:
        """Nothing to start: the sender is already sending (or waiting for a request)."""

    def step(self) -> tuple[int, int]:
        """Receive one message into the next buffer."""
        if self.request:
            self.sock.sendall(b"\x01")
        self.turn = (self.turn + 1) % len(self.ring)
        _receive(self.sock, self.ring[self.turn])
        return 1, MESSAGE_BYTES

    def close(self) -> None:
        """Hang up (the sender process for this connection exits)."""
        self.sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling")
    parser.add_argument("--files", help="a store directory: the F and M kinds send its files")
    _serve(parser.parse_args().files)
