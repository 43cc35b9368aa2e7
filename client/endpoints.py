"""The server URLs of a client: one keep-alive pool each, health, cooldowns and round robin."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx

from .policy import RetryPolicy

__all__ = [
    "DATA_CONNECT_TIMEOUT",
    "DATA_COOLDOWN",
    "Endpoint",
    "EndpointState",
    "Endpoints",
    "parse_urls",
]

logger = logging.getLogger(__name__)


def parse_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """``"http://a, http://b"`` or ``["http://a", "http://b"]`` -> the base URLs, ``/`` trimmed."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = tuple(str(u).strip().rstrip("/") for u in parts)
    if not urls or not all(urls):
        raise ValueError(f"no server URL, or an empty one, in {url!r}")
    if len(set(urls)) != len(urls):
        raise ValueError(f"a server URL is given twice in {url!r}")
    return urls


@dataclass(frozen=True)
class EndpointState:
    """What a client knows of one of its server URLs (see :meth:`BatchClient.endpoints`).

    Attributes:
        url: the base URL.
        down: its last request failed on the connection or with a failing-over 5xx, and it has
            not answered since.
        failures: how many times it was marked down since it last answered (each outage doubles
            the cooldown, up to ``max_cooldown``).
        cooldown: seconds left before it gets requests again (``0``: it gets its share); while
            every URL is cooling down each still gets tried.
        requests: requests sent to it so far (tries included).
        last_error: why it was last marked down (``None`` when it is up).
        data_url: where its batch requests go now: the server's data listener (learned from
            the ``X-Batchstash-Data-Port`` header); ``None``: the URL itself (no listener
            advertised, an ``https`` URL, or the listener unreachable lately).
    """

    url: str
    down: bool
    failures: int
    cooldown: float
    requests: int
    last_error: str | None
    data_url: str | None = None


class Endpoint:
    """One base URL: its own ``httpx`` client (keep-alive pool) and its health, under the lock.

    Its batch requests may go to the server's data listener instead (:attr:`data_http`), a
    second port that serves the same batch URLs at a lower cost per GB.
    """

    def __init__(self, url: str, http: httpx.Client) -> None:
        self.url = url
        self.http = http
        self.failures = 0
        self.down_until = 0.0  # clock time its cooldown ends
        self.requests = 0
        self.last_error: str | None = None
        self.data_port: int | None = None  # advertised by the server
        self.data_http: httpx.Client | None = None  # the data listener's pool
        self.data_down_until = 0.0  # clock time until which batches use the API port
        self.data_failures = 0  # failures of the data listener since it last answered
        # its link's (rate, round trip) as a pipelined reader measured them: the next starts there
        self.link: tuple[float, float] | None = None

    def data_url(self, now: float) -> str | None:
        """The data listener's base URL while it is usable (``None``: use :attr:`url`)."""
        if self.data_http is None or self.data_down_until > now:
            return None
        return str(self.data_http.base_url).rstrip("/")


DATA_COOLDOWN = 60.0
"""Seconds a URL's batches go to its API port after its data listener failed to connect."""
DATA_CONNECT_TIMEOUT = 2.0
"""Seconds to connect to a data listener: one that does not answer quickly is skipped."""


class Endpoints:
    """The URLs of a client, in order: health, cooldowns and the order a request tries them.

    Args:
        urls: the base URLs.
        make_http: builds the ``httpx`` client (keep-alive pool) of one URL.
        policy: the cooldown of a URL that failed (:meth:`RetryPolicy.cooldown_for`) and the
            clock it is measured on.
        make_data_http: builds the pool of a URL's data listener (``None``: never use one).
    """

    def __init__(
        self,
        urls: Sequence[str],
        make_http: Callable[[str], httpx.Client],
        policy: RetryPolicy,
        make_data_http: Callable[[str], httpx.Client] | None = None,
    ) -> None:
        self.items = [Endpoint(url, make_http(url)) for url in urls]
        self.make_data_http = make_data_http
        self.policy = policy
        self.clock = policy.clock
        self._lock = threading.Lock()
        self._cursor = 0  # round robin over the URLs that are not cooling down

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.items)

    def get(self, url: str) -> Endpoint:
        """The endpoint of ``url``."""
        return next(e for e in self.items if e.url == url)

    def states(self) -> list[EndpointState]:
        """The state of each URL, in order."""
        now = self.clock()
        with self._lock:
            return [
                EndpointState(
                    e.url,
                    e.failures > 0,
                    e.failures,
                    max(0.0, e.down_until - now),
                    e.requests,
                    e.last_error,
                    e.data_url(now),
                )
                for e in self.items
            ]

    def route(self, first: Endpoint | None = None) -> list[Endpoint]:
        """Every URL, in the order one request tries them.

        The URLs not cooling down come first, starting round robin (or with ``first`` when it
        is one of them); then those cooling down, the soonest back first.
        """
        now = self.clock()
        with self._lock:
            ready = [e for e in self.items if e.down_until <= now]
            cooling = sorted(
                (e for e in self.items if e.down_until > now), key=lambda e: e.down_until
            )
            if first in ready:
                ready = [first, *(e for e in ready if e is not first)]
            elif ready:
                start = self._cursor % len(ready)
                self._cursor += 1
                ready = ready[start:] + ready[:start]
        return ready + cooling

    def count_request(self, endpoint: Endpoint) -> None:
        """One more request (or try) went to ``endpoint``."""
        with self._lock:
            endpoint.requests += 1

    def mark_down(self, endpoint: Endpoint, why: str) -> None:
        """``endpoint`` failed: no requests for its cooldown (one outage while cooling down).

        Said at WARNING once per outage of the URL (when it first fails), later failures of
        the same outage at DEBUG.
        """
        now = self.clock()
        with self._lock:
            endpoint.last_error = why
            if endpoint.down_until > now:
                return  # already cooling down: requests in flight that fail too are one outage
            endpoint.failures += 1
            first = endpoint.failures == 1
            pause = self.policy.cooldown_for(endpoint.failures)
            endpoint.down_until = now + pause
        if len(self.items) > 1:
            level = logging.WARNING if first else logging.DEBUG
            logger.log(level, "%s is down (%s); no requests for %.1fs", endpoint.url, why, pause)

    def mark_up(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered: it is up again."""
        with self._lock:
            was_down, endpoint.failures, endpoint.down_until = endpoint.failures > 0, 0, 0.0
            endpoint.last_error = None
        if was_down and len(self.items) > 1:
            logger.info("%s answers again", endpoint.url)

    # -- the data listener of each URL ----------------------------------------------------------

    def learn_data_port(self, endpoint: Endpoint, header: str | None) -> None:
        """Take note of the data listener a response of ``endpoint`` advertises.

        Only a plain ``http`` URL uses one (the listener speaks no TLS: an ``https`` client
        keeps its batches on the encrypted API port).
        """
        if header is None or self.make_data_http is None:
            return
        try:
            port = int(header)
        except ValueError:
            return
        if port == endpoint.data_port or not 0 < port < 65536:
            return
        base = httpx.URL(endpoint.url)
        if base.scheme != "http":
            return
        data_url = str(base.copy_with(port=port, raw_path=b"/")).rstrip("/")
        with self._lock:
            old, endpoint.data_port = endpoint.data_http, port
            endpoint.data_http = self.make_data_http(data_url)
            endpoint.data_down_until = 0.0
        if old is not None:
            old.close()
        logger.info("%s: batches from its data listener %s", endpoint.url, data_url)

    def data_client(self, endpoint: Endpoint) -> httpx.Client | None:
        """The pool ``endpoint``'s batch requests go to now (``None``: its API pool)."""
        now = self.clock()
        with self._lock:
            return endpoint.data_http if endpoint.data_url(now) is not None else None

    def data_failed(self, endpoint: Endpoint, why: str) -> None:
        """``endpoint``'s data listener failed: its batches use the API port for a while.

        Said at WARNING when it first fails, at DEBUG while it keeps failing (an outage of
        the whole server is said once, by the engine).
        """
        with self._lock:
            endpoint.data_down_until = self.clock() + DATA_COOLDOWN
            endpoint.data_failures += 1
            first = endpoint.data_failures == 1
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: its data listener failed (%s); batches from the API port for %.0f s",
            endpoint.url,
            why,
            DATA_COOLDOWN,
        )

    def data_answered(self, endpoint: Endpoint) -> None:
        """``endpoint``'s data listener answered as batchstash: a later failure is news."""
        with self._lock:
            endpoint.data_failures = 0

    def close(self) -> None:
        """Close every pool, the data listeners' included."""
        for endpoint in self.items:
            endpoint.http.close()
            if endpoint.data_http is not None:
                endpoint.data_http.close()
