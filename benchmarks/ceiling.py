"""The ceiling: raw loopback TCP between two Python processes, 1 MiB messages, ``recv_into``.

Two shapes, both receiving into one preallocated buffer:

* ``stream``: the sender writes messages back to back (the most the loopback and Python give);
* ``request``: the receiver asks for each message with one byte (one round trip per message, as
  an HTTP client fetching a batch does).
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from typing import Any

__all__ = ["MESSAGE_BYTES", "measure"]

MESSAGE_BYTES = 1 << 20
HOST = "127.0.0.1"


def _sender(mode: str, size: int, ports: Any) -> None:
    with socket.create_server((HOST, 0)) as server:
        ports.put(server.getsockname()[1])
        conn, _ = server.accept()
    payload = memoryview(bytearray(b"\x5a" * size))
    request = bytearray(1)
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if mode == "stream":
                while True:
                    conn.sendall(payload)
            while conn.recv_into(request) == 1:
                conn.sendall(payload)
        except OSError:  # the receiver hung up: the run is over
            pass


def _receive(sock: socket.socket, view: memoryview) -> None:
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("sender closed early")
        got += n


def measure(mode: str, max_messages: int, max_seconds: float) -> dict[str, Any]:
    """Receive up to ``max_messages`` 1 MiB messages within ``max_seconds``; MB/s (10^6 B/s)."""
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_sender, args=(mode, MESSAGE_BYTES, ports), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=60)
        buf = bytearray(MESSAGE_BYTES)
        view = memoryview(buf)
        with socket.create_connection((HOST, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(3):  # warm up the connection and both processes
                if mode == "request":
                    sock.sendall(b"\x01")
                _receive(sock, view)
            count, start = 0, time.perf_counter()
            deadline = start + max_seconds
            while count < max_messages and time.perf_counter() < deadline:
                if mode == "request":
                    sock.sendall(b"\x01")
                _receive(sock, view)
                count += 1
            seconds = time.perf_counter() - start
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    return {"mode": mode, "messages": count, "message_bytes": MESSAGE_BYTES,
            "seconds": seconds, "mb_s": count * MESSAGE_BYTES / seconds / 1e6}
