"""Waiting for a store being primed: the ``X-Batchstash-Prime`` header of ``503 not_primed``.

A server answers a batch that is not encoded yet with ``503 not_primed``, ``Retry-After`` and
the header ``X-Batchstash-Prime: {"state": ..., "done": <int>, "total": <int>, "role": ...}``:
the store's prime job (``"idle"`` and zeros when there is none) and the server's role (absent
from older servers). A request that meets a *running* prime waits for it as long as it makes
progress (see :attr:`RetryPolicy.wait_for_prime`); one that meets *no* running prime fails at
once, saying what to do: prime through that server, or, when it has role ``serve`` (a read-only
replica that cannot prime), through a server with role ``all`` or the prime job. A server
without the header (an older one) gets the plain retries. Polls are spaced by the client's
:class:`~batchstash.client.policy.RetryPolicy` (``Retry-After``, else its backoff).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import httpx

from .errors import NotPrimedError
from .headers import PRIME_HEADER
from .policy import RetryPolicy
from .responses import error_code, error_from_response, retry_after

__all__ = ["LOG_EVERY_S", "PRIME_HEADER", "STALL_S", "PrimeLog", "PrimeWait", "prime_progress"]

logger = logging.getLogger(__name__)

STALL_S = 60.0
"""A running prime whose ``done`` has not grown for this long is stuck: stop waiting.

A prime with no batch done yet is still starting: only the client's ``wait_for_prime`` bounds
that wait."""
LOG_EVERY_S = 5.0
"""Log the wait at INFO at most this often (per client)."""

_NOT_RUNNING = frozenset({"idle", "failed", "cancelled", "interrupted"})


# who primes a store whose server has role serve (a read-only replica never does)
_PRIMERS = (
    "a server with role all (`batchstash prime --url <that server>`) or the prime job "
    "(`batchstash serve --role prime`)"
)
_REPLICA = "this server has role serve and only reads the store"


@dataclass(frozen=True)
class _Progress:
    """The prime job a ``503 not_primed`` describes, and the role of the server that said so."""

    state: str
    done: int
    total: int
    role: str | None = None

    def __str__(self) -> str:
        return f"{self.done}/{self.total} batches"


def prime_progress(response: httpx.Response) -> _Progress | None:
    """The prime job of a ``503 not_primed`` response's header; ``None`` when it has none.

    Any other response, a missing header or one that is not the expected JSON give ``None``.
    """
    if response.status_code != 503 or error_code(response) != "not_primed":
        return None
    raw = response.headers.get(PRIME_HEADER)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        role = doc.get("role")
        return _Progress(
            str(doc["state"]),
            int(doc["done"]),
            int(doc["total"]),
            role if isinstance(role, str) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class PrimeLog:
    """The client-wide INFO line of waiting requests, at most one every ``LOG_EVERY_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None

    def progress(self, progress: _Progress, now: float) -> None:
        """Log ``progress`` unless a line was logged less than ``LOG_EVERY_S`` ago."""
        with self._lock:
            if self._last is not None and now - self._last < LOG_EVERY_S:
                return
            self._last = now
        logger.info("waiting for the store to be primed: %s", progress)


def _not_running(progress: _Progress, url: str) -> str:
    """What to do about a store nothing is priming (the state is one of ``_NOT_RUNNING``).

    A server with role ``serve`` refuses to prime: the advice names the servers that prime.
    """
    what = {
        "failed": f"the prime failed at {progress}: see `batchstash status --url {url}` for its "
        "error, ",
        "cancelled": f"the prime was cancelled at {progress}: ",
        "interrupted": f"the priming process died at {progress}: ",
    }
    if progress.role == "serve":
        idle = "the store is not primed yet and nothing is priming it: "
        fix = {
            "failed": f"fix it and prime again with {_PRIMERS}",
            "cancelled": f"{_PRIMERS} finishes it",
            "interrupted": f"{_PRIMERS} resumes it",
        }.get(progress.state, f"{_PRIMERS} primes it")
        fix += f" ({_REPLICA})"
    else:
        idle, prime = "nothing is priming this store: ", f"`batchstash prime --url {url}`"
        fix = {
            "failed": f"fix it and run {prime} again",
            "cancelled": f"run {prime} to finish it",
            "interrupted": f"run {prime} to resume it",
        }.get(progress.state, f"run {prime}")
    return what.get(progress.state, idle) + fix


class PrimeWait:
    """One request's wait for a running prime, outside its retries.

    Args:
        policy: the longest wait (:attr:`RetryPolicy.wait_for_prime`, ``0``: never wait), the
            poll interval (:meth:`RetryPolicy.next_delay`: ``Retry-After``, else backoff) and
            the clock.
        log: the client's log line.
    """

    def __init__(self, policy: RetryPolicy, log: PrimeLog) -> None:
        self.policy = policy
        self.limit = policy.wait_for_prime
        self.log = log
        self.polls = 0
        self._started: float | None = None
        self._done = -1
        self._progressed = 0.0  # clock time ``done`` last changed

    def handles(self, response: httpx.Response) -> bool:
        """Whether :meth:`wait` decides about ``response``, rather than the plain retries.

        True for a ``503 not_primed`` whose header reports a running prime (waited for, unless
        the wait is off) or no running prime (raised at once).
        """
        progress = prime_progress(response)
        if progress is None:
            return False
        return progress.state in _NOT_RUNNING or (progress.state == "running" and self.limit > 0)

    def wait(self, response: httpx.Response, url: str) -> float:
        """How long to wait before asking again, for a response :meth:`handles`.

        Returns:
            The delay in seconds while the response reports a running prime that progresses
            within the limit.

        Raises:
            NotPrimedError: the response reports no running prime, or one that made no progress
                for ``STALL_S``, or the wait reached the limit; the message says what to do.
        """
        progress = prime_progress(response)
        if progress is None or not self.handles(response):
            raise error_from_response(response)
        if progress.state in _NOT_RUNNING:
            raise self._error(response, _not_running(progress, url))
        now = self.policy.clock()
        if self._started is None:
            self._started = self._progressed = now  # the job may have just started
        if progress.done != self._done or progress.done == 0:
            # it grew, a new job started over, or it is still starting (no batch done yet:
            # spawning workers, reading the data can take a while; ``limit`` bounds that)
            self._done, self._progressed = progress.done, now
        if now - self._progressed >= STALL_S:
            raise self._error(
                response,
                f"the prime has made no progress for {STALL_S:.0f} s (stuck at {progress}): "
                f"see `batchstash status --url {url}`",
            )
        waited = now - self._started
        if waited >= self.limit:
            raise self._error(
                response,
                f"the store is still being primed after {waited:.0f} s ({progress}): wait for "
                f"it (`batchstash prime --url {url} --wait`) or raise "
                "RetryPolicy(wait_for_prime=...)",
            )
        self.log.progress(progress, now)
        delay = self.policy.next_delay(min(self.polls, 16), retry_after(response))
        self.polls += 1
        return max(0.0, min(delay, self.limit - waited))

    @staticmethod
    def _error(response: httpx.Response, advice: str) -> NotPrimedError:
        return NotPrimedError(f"{error_from_response(response).message}; {advice}")
