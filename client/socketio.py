"""A minimal HTTP/1.1 response reader on a plain socket, for pipelined keep-alive answers.

``http.client`` cannot read the answers of requests sent ahead (it allows one request in flight
a connection), so :class:`~batchstash.client.pipeline.PipelinedReader` reads them with these:
:func:`read_head` takes one status line and its headers, :func:`read_body` fills a buffer with
the body. Bytes received past one response stay in ``pending`` for the next. Only
``Content-Length`` bodies are read (the data listener sends nothing else); a malformed or cut
answer raises :class:`_ProtocolError`, an ``OSError``, so callers treat it as a broken
connection.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from .lowwater import LowWater
from .transport import BODY_STEP

__all__ = ["read_body", "read_head"]

HEAD_RECV = 16 * 1024  # bytes asked for while a response head is read (the body's start may come)
MAX_HEAD = 64 * 1024


class _ProtocolError(OSError):
    """A response that is not well-formed HTTP/1.1 (treated like a broken connection)."""


class _Head:
    """The status line and headers of one response (header names lower case)."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    @property
    def length(self) -> int | None:
        """The ``Content-Length`` (``None``: absent or not a number)."""
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    @property
    def closes(self) -> bool:
        """The server closes the connection after this response."""
        return self.headers.get("connection", "").lower() == "close"


def read_head(sock: socket.socket, pending: bytearray, low: LowWater | None = None) -> _Head:
    """Read one response head from ``sock``; ``pending`` holds bytes already received.

    On return ``pending`` holds what followed the head (the start of the body, perhaps more).
    ``low``: the connection's low-water mark (woken at the first byte while a head is read).

    Raises:
        _ProtocolError: a malformed or oversized head, or the connection closed before one.
    """
    start = 0
    if low is not None:
        low.due(0)
    while (end := pending.find(b"\r\n\r\n", start)) < 0:
        if len(pending) > MAX_HEAD:
            raise _ProtocolError("response head too large")
        start = max(0, len(pending) - 3)
        chunk = sock.recv(HEAD_RECV)
        if not chunk:
            raise _ProtocolError("the server closed the connection")
        pending += chunk
    lines = bytes(pending[:end]).decode("latin-1").split("\r\n")
    del pending[: end + 4]
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return _Head(int(parts[1]), headers)


def read_body(
    sock: socket.socket,
    pending: bytearray,
    buffer: Any,
    hook: Callable[[memoryview, int], None] | None = None,
    low: LowWater | None = None,
) -> None:
    """Fill ``buffer`` with the body: first from ``pending`` (consumed), then from ``sock``.

    ``hook(view, received)`` is called as bytes land (see
    :data:`~batchstash.client.transport.BODY_HOOK`). ``low``: the connection's low-water mark,
    raised while much of the body is still due (fewer wake-ups, fewer ``recv`` calls).

    Raises:
        _ProtocolError: the connection closed before the whole body came.
    """
    view = memoryview(buffer).cast("B")
    length = view.nbytes
    got = min(len(pending), length)
    view[:got] = pending[:got]
    del pending[:got]
    if hook is not None and got:
        hook(view, got)
    while got < length:
        if low is not None:
            low.due(length - got)
        n = sock.recv_into(view[got : min(length, got + BODY_STEP)])
        if not n:
            raise _ProtocolError(f"the server closed the connection {length - got} bytes short")
        got += n
        if hook is not None:
            hook(view, got)
