"""RetryPolicy: which failures are tried again, how often, how long, and how far apart.

The one place the client decides about retrying (modelled on urllib3's ``Retry``): the request
engine asks it after each failed try, the prime wait for its poll interval, the URL pool for a
failed URL's cooldown. It is frozen, so one policy is safely shared by every thread and every
client, and it carries its clock, so tests move time instead of sleeping.

What is retried (``retries``):

* a **connection that was never made** (refused, DNS failure, connect timeout): the request
  never left, so every method is retried, ``POST`` included;
* a **request that may have been sent** whose answer broke off or timed out: only the
  idempotent ``methods`` (``GET``, ``HEAD``, ``OPTIONS``, ``PUT``, ``DELETE``), since the server
  may have acted on it;
* an **answer** with a status in ``statuses`` (``500``, ``502``, ``503``, ``504``): the idempotent
  methods; ``503`` and a ``409`` with ``Retry-After`` are the server refusing to act now, so
  those are retried for every method. Other statuses are raised at once.

How long: at most ``attempts`` tries in all (``None``: no count), and no retry starts later than
``budget`` seconds after the first try; the last wait is shortened to land on the budget. The
default budget rides out a minute's outage of every server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CONNECT", "IDEMPOTENT", "READ", "RETRY_STATUSES", "Failure", "RetryPolicy"]

IDEMPOTENT = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PUT"})
"""Methods a server may safely get twice: retried even when the first may have arrived."""
RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""Statuses that say "not now" rather than "never"."""
CONNECT: Literal["connect"] = "connect"
"""A try that never reached a server: refused, unknown host, connect timeout."""
READ: Literal["read"] = "read"
"""A try that may have reached the server: the answer broke off or timed out."""
REFUSALS = frozenset({409, 503})
"""Statuses by which a server says it did not act: retried for every method."""

Failure = Literal["connect", "read"] | int
"""What a try ran into: :data:`CONNECT`, :data:`READ` or the HTTP status of the answer."""


def _exponential(base: float, exponent: int, cap: float) -> float:
    """``base * 2**exponent``, at most ``cap`` (the exponent is bounded: no overflow)."""
    return float(min(base * 2.0 ** min(max(exponent, 0), 64), cap))


@dataclass(frozen=True)
class RetryPolicy:
    """When, how often and how long a client tries a failed request again.

    Example::

        policy = RetryPolicy(budget=300)            # ride out a five minute outage
        client = BatchClient("http://stash:8000", retry=policy)
        BatchClient(url, retry=RetryPolicy(attempts=1))   # never retry

    Args:
        attempts: the most tries of one request, the first included (``None``: as many as fit
            in ``budget``).
        budget: seconds after a request's first try within which retries may start; while
            every server is unreachable the client keeps trying for this long.
        backoff: the first retry delay; doubled on each retry (with jitter), at most
            ``max_delay``.
        max_delay: the longest backoff delay.
        jitter: each backoff delay is spread uniformly over ``delay * (1 ± jitter)``, so the
            clients of a restarted server do not all come back at once.
        retry_after_cap: the longest wait a server's ``Retry-After`` may ask for.
        methods: methods retried when the request may have reached the server.
        statuses: statuses retried (``409`` is retried only with ``Retry-After``).
        cooldown: seconds a URL that failed gets no requests while others answer (doubled
            each time it fails again before answering), at most ``max_cooldown``.
        max_cooldown: the longest cooldown.
        wait_for_prime: the longest a request waits for a running, progressing prime (``0``:
            do not wait; see :class:`~batchstash.client.priming.PrimeWait`).
        clock: the monotonic clock the budget and cooldowns are measured on.
        sleep: how to wait between tries.
        rand: a uniform random number in ``[0, 1)`` for the jitter.

    Raises:
        ValueError: a negative number, ``attempts`` below 1 or ``jitter`` above 1.
    """

    attempts: int | None = None
    budget: float = 90.0
    backoff: float = 0.2
    max_delay: float = 5.0
    jitter: float = 0.5
    retry_after_cap: float = 30.0
    methods: frozenset[str] = IDEMPOTENT
    statuses: frozenset[int] = RETRY_STATUSES
    cooldown: float = 1.0
    max_cooldown: float = 30.0
    wait_for_prime: float = 600.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        numbers = {
            "budget": self.budget,
            "backoff": self.backoff,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "retry_after_cap": self.retry_after_cap,
            "cooldown": self.cooldown,
            "max_cooldown": self.max_cooldown,
            "wait_for_prime": self.wait_for_prime,
        }
        for name, value in numbers.items():
            if value < 0:
                raise ValueError(f"RetryPolicy {name} must not be negative, not {value}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"RetryPolicy attempts must be at least 1, not {self.attempts}")
        if self.jitter > 1:
            raise ValueError(f"RetryPolicy jitter must be at most 1, not {self.jitter}")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def retries(self, method: str, failure: Failure, retry_after: float | None = None) -> bool:
        """Whether ``failure`` of a ``method`` request is retried at all (see the module doc)."""
        if failure == CONNECT:
            return True
        if failure == READ:
            return method.upper() in self.methods
        if failure == 409:
            return retry_after is not None
        if failure not in self.statuses:
            return False
        return failure in REFUSALS or method.upper() in self.methods

    def next_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed try ``attempt`` (0: the first): ``Retry-After`` or backoff.

        ``retry_after`` (a server's hint) is honoured up to :attr:`retry_after_cap`; without
        one the delay is ``backoff * 2**attempt`` with jitter, at most :attr:`max_delay`.
        """
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_cap)
        base = _exponential(self.backoff, attempt, self.max_delay)
        spread = 1.0 - self.jitter + 2.0 * self.jitter * self.rand()
        return min(base * spread, self.max_delay)

    def delay(
        self,
        method: str,
        failure: Failure,
        attempt: int,
        started: float,
        retry_after: float | None = None,
    ) -> float | None:
        """The wait before the next try, or ``None`` to give up.

        Args:
            method: the request's method.
            failure: what try ``attempt`` ran into.
            attempt: the failed try (0: the first).
            started: :attr:`clock` time of the first try.
            retry_after: the server's ``Retry-After`` in seconds, if it sent one.

        Returns:
            ``None`` when the failure is not retried, ``attempts`` are spent or the budget is;
            else :meth:`next_delay`, shortened to end when the budget does.
        """
        if not self.retries(method, failure, retry_after):
            return None
        if self.attempts is not None and attempt + 1 >= self.attempts:
            return None
        left = self.budget - (self.clock() - started)
        if left <= 0:
            return None
        return min(self.next_delay(attempt, retry_after), left)

    def cooldown_for(self, failures: int) -> float:
        """Seconds a URL marked down ``failures`` times in a row gets no requests."""
        return _exponential(self.cooldown, failures - 1, self.max_cooldown)

    def describe(self) -> str:
        """``up to 90 s`` or ``6 attempts within 90 s``: how long a request keeps trying."""
        if self.attempts is None:
            return f"up to {self.budget:.0f} s"
        return f"{self.attempts} attempts within {self.budget:.0f} s"
