"""The receive low-water mark: raised while much of a body is due, never above what will come."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from batchstash.client.buffers import BufferPool
from batchstash.client.lowwater import RCVLOWAT, LowWater
from batchstash.client.socketio import read_body, read_head
from batchstash.client.transport import BufferTransport, body_buffer

needs_rcvlowat = pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="no SO_RCVLOWAT")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    server.close()
    yield client, peer
    client.close()
    peer.close()


def _mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


@needs_rcvlowat
def test_the_mark_follows_what_is_still_due(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, _ = pair
    low = LowWater(sock)
    low.due(4 * RCVLOWAT)
    assert _mark(sock) == RCVLOWAT
    low.due(RCVLOWAT)  # exactly the mark still due: it will all come
    assert _mark(sock) == RCVLOWAT
    low.due(RCVLOWAT - 1)
    assert _mark(sock) == 1
    low.due(0)
    assert _mark(sock) == 1 and low.value == 1


@needs_rcvlowat
def test_the_mark_is_set_only_when_it_changes(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _ = pair
    calls: list[int] = []

    class Counting:
        def setsockopt(self, level: int, name: int, value: int) -> None:
            calls.append(value)
            sock.setsockopt(level, name, value)

    low = LowWater(Counting())  # type: ignore[arg-type]
    for remaining in (8 * RCVLOWAT, 6 * RCVLOWAT, 2 * RCVLOWAT, 1000, 10, 0, 0):
        low.due(remaining)
    assert calls == [RCVLOWAT, 1]


def test_a_socket_that_refuses_the_option_reads_as_without_it() -> None:
    class Refusing:
        def setsockopt(self, *args: object) -> None:
            raise OSError("not supported")

    low = LowWater(Refusing())  # type: ignore[arg-type]
    low.due(4 * RCVLOWAT)
    assert not low.enabled and low.value == 1
    low.due(4 * RCVLOWAT)  # not tried again


@pytest.mark.parametrize("timeout", [5.0, None])  # poll() then recv(), or recv() alone
@pytest.mark.parametrize("size", [RCVLOWAT - 1, RCVLOWAT, RCVLOWAT + 1, 3 * RCVLOWAT + 7])
def test_bodies_trickling_in_are_read_whole_without_waiting_for_more(
    pair: tuple[socket.socket, socket.socket], size: int, timeout: float | None
) -> None:
    """The sender sends two responses in small pieces, then nothing: no read may wait for
    bytes that never come (a mark above what is due would block until the timeout)."""
    sock, peer = pair
    sock.settimeout(timeout)
    watchdog = threading.Timer(8, lambda: sock.shutdown(socket.SHUT_RDWR))  # a hang fails
    watchdog.start()
    bodies = [bytes([n]) * size for n in (1, 2)]

    def send() -> None:
        for body in bodies:
            data = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + body
            for i in range(0, len(data), 200_000):
                peer.sendall(data[i : i + 200_000])
                time.sleep(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    low, pending = LowWater(sock), bytearray()
    start = time.monotonic()
    for body in bodies:
        head = read_head(sock, pending, low)
        buffer = bytearray(head.length or 0)
        read_body(sock, pending, buffer, None, low)
        assert buffer == body
    watchdog.cancel()
    sender.join()
    assert time.monotonic() - start < 4  # no read sat out the timeout


@pytest.mark.parametrize("size", [RCVLOWAT + 100, RCVLOWAT + 70_000, 3 * RCVLOWAT])
def test_the_request_path_reads_bodies_around_the_mark_whole(size: int) -> None:
    """The request path sets no mark: http.client's buffered reader makes several ``recv``
    calls in one ``readinto`` and holds KiBs of the body from the head's read, so a mark there
    (it was tried) left the last ``recv`` of these sizes waiting for bytes that never come."""
    server = socket.create_server(("127.0.0.1", 0))
    body = b"b" * size

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + body)
            conn.recv(1)  # holds the connection open (keep-alive) until the client closes

    thread = threading.Thread(target=serve)
    thread.start()
    host, port = server.getsockname()
    start = time.monotonic()
    try:
        with httpx.Client(transport=BufferTransport(buffers=BufferPool(min_bytes=0))) as http:
            response = http.get(f"http://{host}:{port}/x", timeout=5)
            assert bytes(body_buffer(response)) == body
    finally:
        thread.join(timeout=10)
        server.close()
    assert time.monotonic() - start < 4
