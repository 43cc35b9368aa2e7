"""Writing a reply's bytes to a socket: memory with ``sendmsg``, stored files with ``sendfile``.

Used by the data listener (:mod:`.datapath`) for every response. A stored object that verified
before reaches it unread, as the :class:`~batchstash.service.store.backend.Sendable` the reader
holds open at that version; it goes out with ``os.sendfile`` from that descriptor, so the bytes
sent are the inode's that verified even if the key was replaced since. Any other chunk, and
such a file when ``sendfile`` is off, is sent as memory (the file mapped).

Which of the two ways costs less CPU depends on the machine (see the benchmarks), so
:class:`SendWays` measures it as it serves (``data_sendfile=auto``).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from batchstash.service.store.backend import Sendable

__all__ = ["SendWays", "close_files", "send_all", "send_chunks"]

logger = logging.getLogger(__name__)

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
        if isinstance(chunk, Sendable):
            chunk.close()


def _sendfile(sock: socket.socket, stored: Sendable) -> None:
    """Send the whole held-open file with ``os.sendfile`` (its inode, whatever the path holds)."""
    size, offset, timeout = stored.size, 0, sock.gettimeout()
    out, source = sock.fileno(), stored.fileno()
    poller: select.poll | None = None
    while offset < size:
        try:
            sent = os.sendfile(out, source, offset, size - offset)
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
        if not isinstance(chunk, Sendable):
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


class SendWays:
    """Chooses ``sendfile`` or mapped pages for stored files by what each costs this process.

    At first the replies that hold stored files go out one way, then the other, in windows of
    ``window_bytes``, ``windows`` of each, and each window's cost is this process's CPU time
    (every thread, kernel time included) per byte sent in it. The process's, not the sending
    thread's: on loopback much of a send's kernel work runs later, in whichever thread takes
    the acknowledgements, and ``sendfile``'s part of it does not show on the sending thread's
    own clock. Then the way whose median window cost less is kept, ``sendfile`` unless the
    mapped pages cost ``margin`` times as much or less; after ``retrial_bytes`` more the trial
    runs again, so a change of load or peers is followed (the choice is logged when it
    changes). Other work of the process (API requests) adds to whichever window it falls in:
    the median of several windows keeps one burst from deciding. Thread safe.

    Args:
        window_bytes: bytes sent in one window.
        windows: windows of each way in a trial.
        margin: how much cheaper the mapped pages must be to win.
        retrial_bytes: bytes sent the chosen way before the next trial.
        on_choice: called with the choice (``True``: ``sendfile``) when a trial ends.
        clock: this process's CPU time in nanoseconds.
    """

    def __init__(
        self,
        window_bytes: int = 64 * 1024**2,
        windows: int = 3,
        margin: float = 0.9,
        retrial_bytes: int = 64 * 1024**3,
        on_choice: Callable[[bool], None] | None = None,
        clock: Callable[[], int] = time.process_time_ns,
    ) -> None:
        self.window_bytes, self.windows = window_bytes, windows
        self.margin, self.retrial_bytes = margin, retrial_bytes
        self.on_choice, self.clock = on_choice, clock
        self._lock = threading.Lock()
        self._last: bool | None = None  # the previous trial's choice
        self._trial()

    def _trial(self) -> None:
        self._chosen: bool | None = None
        self._way = True  # the current window's way
        self._start: int | None = None  # the current window's start, on the clock
        self._sent = 0  # bytes in the current window, or since the choice
        self._costs: dict[bool, list[float]] = {True: [], False: []}

    @property
    def choice(self) -> bool | None:
        """The way chosen (``True``: ``sendfile``); ``None`` while the trial runs."""
        with self._lock:
            return self._chosen

    def way(self) -> bool:
        """The way to send the next reply with stored files (``True``: ``sendfile``)."""
        with self._lock:
            return self._way if self._chosen is None else self._chosen

    def record(self, sendfile: bool, nbytes: int) -> None:
        """A reply of ``nbytes`` went out that way."""
        decided: tuple[float, float, bool, bool] | None = None
        with self._lock:
            if self._chosen is not None:
                self._sent += nbytes
                if self._sent >= self.retrial_bytes:
                    self._trial()  # measure again
                return
            now = self.clock()
            if self._start is None or sendfile is not self._way:
                if self._start is None:  # the first window starts with the trial's first reply
                    self._start, self._sent = now, 0
                return  # a reply begun in the window before: its bytes count in neither
            self._sent += nbytes
            if self._sent < self.window_bytes:
                return
            self._costs[self._way].append((now - self._start) / self._sent)
            self._way, self._start, self._sent = not self._way, now, 0
            if all(len(costs) >= self.windows for costs in self._costs.values()):
                by_sendfile = statistics.median(self._costs[True])
                by_mapped = statistics.median(self._costs[False])
                chosen = not by_mapped <= self.margin * by_sendfile
                changed, self._last = chosen is not self._last, chosen
                self._chosen, self._sent = chosen, 0
                decided = (by_sendfile, by_mapped, chosen, changed)
        if decided is not None:
            # a choice that stands is news once: later trials that confirm it log at debug
            logger.log(
                logging.INFO if decided[3] else logging.DEBUG,
                "data listener: stored files go out by %s (%.3f s/GB of this process's CPU by "
                "sendfile, %.3f by mapped pages; the medians of %d windows each)",
                "sendfile" if decided[2] else "mapped pages",
                decided[0],
                decided[1],
                self.windows,
            )
            if self.on_choice is not None:
                self.on_choice(decided[2])
