"""Writing a reply's bytes to a socket: memory with ``sendmsg``, stored files with ``sendfile``.

Used by the data listener (:mod:`.datapath`) for every response. A stored object that verified
before reaches it unread, as the :class:`~batchstash.service.store.local.StoredFile` the reader
holds open at that version; it goes out with ``os.sendfile`` from that descriptor, so the bytes
sent are the inode's that verified even if the key was replaced since. Any other chunk, and
such a file when ``sendfile`` is off, is sent as memory.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterable
from typing import Any

from ..store.local import StoredFile

__all__ = ["close_files", "send_all", "send_chunks"]

IOV_MAX = 512
"""Buffers per ``sendmsg`` call (Linux allows 1,024)."""


def send_all(sock: socket.socket, buffers: list[Any], flags: int = 0) -> None:
    """Write every buffer in order with as few ``sendmsg`` calls as the socket allows."""
    views = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]
    while views:
        sent = sock.sendmsg(views[:IOV_MAX], [], flags if len(views) <= IOV_MAX else 0)
        while sent and views:
            head = views[0]
            if sent >= head.nbytes:
                sent -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[sent:]
                sent = 0


def close_files(chunks: Iterable[Any]) -> None:
    """Close the stored files among a reply's chunks (sent or not)."""
    for chunk in chunks:
        if isinstance(chunk, StoredFile):
            chunk.close()


def _sendfile(sock: socket.socket, stored: StoredFile) -> None:
    """Send the whole held-open file with ``os.sendfile`` (its inode, whatever the path holds)."""
    size, offset, timeout = stored.size, 0, sock.gettimeout()
    out = sock.fileno()
    poller: select.poll | None = None
    while offset < size:
        try:
            sent = os.sendfile(out, stored.fd, offset, size - offset)
        except BlockingIOError:  # the socket has a timeout, so it is non-blocking
            if poller is None:
                poller = select.poll()
                poller.register(out, select.POLLOUT)
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("the client does not read") from None
            continue
        if not sent:  # truncated in place: the framing is broken now, the connection must end
            raise ConnectionError(f"a stored file shrank while it was sent ({offset} of {size})")
        offset += sent


def send_chunks(sock: socket.socket, buffers: list[Any], sendfile: bool = True) -> None:
    """Write the chunks in order: memory with ``sendmsg``, stored files with ``sendfile``.

    The memory before a file goes out with ``MSG_MORE``, so a response head and a frame prefix
    share the file's first segment. With ``sendfile`` false a stored file's bytes are read (or
    mapped) and sent as memory.
    """
    pending: list[Any] = []
    for chunk in buffers:
        if not isinstance(chunk, StoredFile):
            pending.append(chunk)
        elif not sendfile:
            pending.append(chunk.view())
        else:
            if pending:
                send_all(sock, pending, socket.MSG_MORE)
                pending = []
            _sendfile(sock, chunk)
    if pending:
        send_all(sock, pending)
