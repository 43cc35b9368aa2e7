"""Writing a reply's bytes to a socket: memory with ``sendmsg``, stored files with ``sendfile``.

Used by the data listener (:mod:`.datapath`) for every response. A whole stored file (a
:class:`~batchstash.service.store.local.MappedFile` viewed entire) goes out with
``os.sendfile`` once its path is checked to still hold the version the reader verified; any
other chunk, and such a file when ``sendfile`` is off or the file changed, is sent as memory.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any

from ..store.local import MappedFile, file_version

__all__ = ["send_all", "send_chunks"]

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


def _whole_file(chunk: Any) -> MappedFile | None:
    """The stored file ``chunk`` maps whole, if it does (a slice of one is sent as memory)."""
    view = memoryview(chunk)
    mapped = view.obj
    if isinstance(mapped, MappedFile) and view.nbytes == len(mapped):
        return mapped
    return None


def _sendfile(sock: socket.socket, mapped: MappedFile) -> bool:
    """Send the file ``mapped`` maps with ``os.sendfile``; ``False``: it changed, send the map.

    The path is opened again and its version compared with the mapping's, so the bytes sent
    are the ones the reader checked (a store replaces a file by renaming a new one over it).
    """
    try:
        fh = open(mapped.path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with fh:
        if file_version(os.fstat(fh.fileno())) != mapped.version:
            return False
        size, offset, timeout = len(mapped), 0, sock.gettimeout()
        out, src = sock.fileno(), fh.fileno()
        poller: select.poll | None = None
        while offset < size:
            try:
                sent = os.sendfile(out, src, offset, size - offset)
            except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                if poller is None:
                    poller = select.poll()
                    poller.register(out, select.POLLOUT)
                if not poller.poll(None if timeout is None else timeout * 1000):
                    raise TimeoutError("the client does not read") from None
                continue
            if not sent:  # the framing is broken now: the connection must end
                raise ConnectionError(f"{mapped.path} shrank while it was sent")
            offset += sent
        return True


def send_chunks(sock: socket.socket, buffers: list[Any], sendfile: bool = True) -> None:
    """Write the buffers in order: memory with ``sendmsg``, whole stored files with ``sendfile``.

    The memory before a file goes out with ``MSG_MORE``, so a response head and a frame prefix
    share the file's first segment. With ``sendfile`` false (or a file that changed since it was
    mapped) the mapped pages are sent as memory.
    """
    pending: list[Any] = []
    for chunk in buffers:
        mapped = _whole_file(chunk) if sendfile else None
        if mapped is None:
            pending.append(chunk)
            continue
        if pending:
            send_all(sock, pending, socket.MSG_MORE)
            pending = []
        if not _sendfile(sock, mapped):
            pending.append(chunk)
    if pending:
        send_all(sock, pending)
