"""How many requests a pipelined reader keeps in flight: the link's bandwidth-delay product.

A fixed count is wrong on most links: three 67 KB requests in flight fill loopback, but over a
link with a 10 ms round trip they carry 20 MB/s whatever the link's rate. :class:`InFlight`
measures the two sides of the product on the connection itself, with the clock it is given
(so tests drive it):

- the **round trip**: the time ``connect()`` took, a TCP handshake, so the network's round trip
  without the server's time (the shortest over the connections made);
- the **rate**: over the recent answers, the fastest of each large body's own transfer (first
  to last byte, a burst at the link's rate) and of the completions' spacing (bytes of an answer
  over the time since the previous one ended, the link's rate while the pipe is full).

The window is ``ceil(rate x round trip / group bytes) + 1`` groups (the extra one covers the
server's time and the answer being read), never fewer than the caller's floor (its
``prefetch``) nor more than the byte budget allows. It grows only while the consumer is
*starved* (it has taken every answer delivered and waits for the one that lands): a trainer
slower than the link keeps its floor, so a fast link never runs the reader far ahead of it. It
only grows: a window that worked stays, and a brief slow spell does not starve the pipe.

What a link measured (its rate and round trip, :meth:`InFlight.link`) is kept per URL, so the
next reader of that URL sizes its window from its first answer instead of ramping again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["DEFAULT_IN_FLIGHT_BYTES", "InFlight"]

DEFAULT_IN_FLIGHT_BYTES = 64 * 2**20
"""The default budget of answer bytes requested and not yet taken by the consumer."""

_RECENT = 32  # answers the estimates look back over
_BURST_MIN = 256 * 2**10  # a body this large is timed on its own as a burst at the link's rate
_MAX_RATE = 12.5e9  # 100 Gbit/s: a rate above it is a timing artefact


class InFlight:
    """The window of groups a pipelined reader keeps requested, from measured answers.

    Args:
        floor: the fewest groups in flight (the caller's prefetch window).
        budget: the most answer bytes in flight (requested, not yet taken by the consumer)
            when the product asks for more than ``floor``; ``0``: never more than ``floor``.
        clock: seconds, monotonic (``time.perf_counter`` by default; tests pass their own).

    Attributes:
        window: groups to keep in flight now.
        round_trip: the round-trip estimate in seconds (``None`` before the first answer).
        rate: the rate estimate in bytes a second (``None`` before two answers or a burst).
    """

    def __init__(
        self,
        floor: int,
        budget: int = DEFAULT_IN_FLIGHT_BYTES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if floor < 1:
            raise ValueError(f"the window's floor must be at least 1, not {floor}")
        if budget < 0:
            raise ValueError(f"the in-flight byte budget must not be negative, not {budget}")
        self.floor = floor
        self.budget = budget
        self.clock = clock
        self.window = floor
        self.round_trip: float | None = None
        self.rate: float | None = None
        self._rates: deque[float] = deque(maxlen=_RECENT)
        self._head: float | None = None  # when the answer being read began
        self._last_end: float | None = None
        self._group_bytes = 0.0  # a running mean of the answers' sizes
        self._answers = 0

    def connected(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open (one round trip); the pipe starts empty."""
        if seconds > 0:
            self.round_trip = seconds if self.round_trip is None else min(self.round_trip, seconds)
        self._last_end = None

    def head(self) -> None:
        """The head of the next answer arrived now."""
        self._head = self.clock()

    def learn(self, link: tuple[float, float] | None) -> None:
        """Start from a link measured before (see :meth:`link`); ``None``: nothing known."""
        if link is not None:
            rate, round_trip = link
            self.rate = rate if self.rate is None else max(self.rate, rate)
            self._rates.append(rate)
            self.connected(round_trip)

    def link(self) -> tuple[float, float] | None:
        """The link's measured ``(rate, round trip)``, once both are known."""
        if self.rate is None or self.round_trip is None:
            return None
        return self.rate, self.round_trip

    def body(self, size: int, starved: bool = True) -> int:
        """Its body of ``size`` bytes ended now; returns the window to keep (it only grows).

        ``starved``: the consumer has taken every answer before this one, so it is waiting on
        the link; only then does the window grow.
        """
        now = self.clock()
        start = now if self._head is None else self._head
        if size >= _BURST_MIN and now > start:
            self._rates.append(min(size / (now - start), _MAX_RATE))
        if self._last_end is not None and now > self._last_end:
            self._rates.append(min(size / (now - self._last_end), _MAX_RATE))
        self._last_end = now
        self._answers += 1
        self._group_bytes += (size - self._group_bytes) / min(self._answers, _RECENT)
        self.rate = max(self._rates) if self._rates else None
        if starved:
            self.window = max(self.window, self._target())
        return self.window

    def _target(self) -> int:
        if (
            self.budget == 0
            or self.round_trip is None
            or self.rate is None
            or self._group_bytes <= 0
        ):
            return self.floor
        product = self.rate * self.round_trip / self._group_bytes
        most = max(self.floor, int(self.budget // self._group_bytes))
        return max(self.floor, min(math.ceil(product) + 1, most))
