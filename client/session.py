"""The request plumbing of :class:`~batchstash.client.http.BatchClient`.

Failover over the URLs, retries with backoff, waiting for a running prime, and the check that
every URL serves one store. ``BatchClient`` adds the batchstash API on top.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from .buffers import BufferPool
from .endpoints import Endpoint, Endpoints, parse_urls
from .errors import BatchstashError, PayloadError, PlanError, TransportError
from .priming import _PrimeLog, _PrimeWait
from .responses import error_code, error_from_response, fails_over, is_retryable, retry_after
from .transport import BODY_HOOK, BufferTransport

__all__: list[str] = []  # _Session is BatchClient's base, not an API of its own

logger = logging.getLogger("batchstash.client.http")  # what users configure for the client

FINGERPRINT_HEADER = "X-Batchstash-Fingerprint"
DATA_PORT_HEADER = "X-Batchstash-Data-Port"
DATA_CONNECT_TIMEOUT = 2.0
SOURCE = "batchstash.url"  # response extension: the base URL that answered


class _Session:
    """URLs, retries, failover, the prime wait and the store fingerprint of one client.

    See :class:`~batchstash.client.http.BatchClient` for the arguments.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        transport: httpx.BaseTransport | None,
        *,
        max_delay: float,
        cooldown: float,
        max_cooldown: float,
        wait_for_prime: float,
        data_listener: bool = True,
    ) -> None:
        if min(retries, backoff, max_delay, cooldown, max_cooldown, wait_for_prime) < 0:
            raise ValueError(
                "retries, backoff, max_delay, cooldown, max_cooldown and wait_for_prime must not "
                "be negative"
            )
        headers = {"Accept": "application/json, application/octet-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.urls = parse_urls(url)
        self.url = self.urls[0]
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.prime_wait = float(wait_for_prime)
        self.timeout = float(timeout)
        # one pool for every URL's transport (and the pipelined reader); ``None``: a caller's
        # own transport, which the pipelined reader does not bypass
        self._body_buffers = BufferPool() if transport is None else None

        def make_http(base: str, connect: float = timeout) -> httpx.Client:
            return httpx.Client(
                base_url=base,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(connect, timeout)),
                transport=transport or BufferTransport(buffers=self._body_buffers),
            )

        self._pool = Endpoints(
            self.urls,
            make_http,
            cooldown,
            max_cooldown,
            # a data listener that does not answer quickly is skipped, not waited for
            (lambda base: make_http(base, connect=DATA_CONNECT_TIMEOUT)) if data_listener else None,
        )
        self._sleep: Callable[[float], None] = time.sleep
        self._clock: Callable[[], float] = time.monotonic
        self._prime_log = _PrimeLog()
        self._lock = threading.Lock()
        self._fingerprint: tuple[str, str] | None = None  # (fingerprint, the URL that told it)

    # -- the store fingerprint ------------------------------------------------------------------

    def _observe(self, fingerprint: str | None, url: str) -> None:
        """Check that ``url`` serves the store the client knows; learn it on the first answer.

        With one URL a new fingerprint is the store changing, and is followed. With several, a
        new fingerprint is followed only when another URL confirms it: the URL that told the
        old one if it answers, else the first other URL that does.

        Raises:
            PlanError: two URLs serve different stores, or no other URL answers to confirm.
        """
        if not fingerprint:
            return
        with self._lock:
            known = self._fingerprint
            if known is None or (known[1] == url and len(self._pool) == 1):
                self._fingerprint = (fingerprint, url)
                return
            if known[0] == fingerprint:
                return
            others = sorted(
                (e for e in self._pool if e.url != url),
                key=lambda e: (e.url != known[1], e.failures > 0),
            )
        mine = self._probe(url) or fingerprint
        for other in others:
            theirs = self._probe(other.url)
            if theirs is None:
                continue
            if theirs != mine:
                raise PlanError(
                    f"{url} serves store {mine}, but {other.url} serves {theirs}: every URL of a "
                    "client must serve the same store (replicas of one data dir); batches of two "
                    "stores are not mixed"
                )
            with self._lock:
                self._fingerprint = (mine, url)
            logger.info("the store changed: %s and %s now serve %s", url, other.url, mine)
            return
        raise PlanError(
            f"{url} serves store {mine}, but {known[1]} served {known[0]} and no other URL "
            "answers now to confirm that the store changed: every URL of a client must serve "
            "the same store"
        )

    def _probe(self, url: str) -> str | None:
        """The fingerprint ``url`` serves now (one request, no retry); ``None`` if it fails."""
        endpoint = self._pool.get(url)
        try:
            response = endpoint.http.get("/v1/metadata")
            response.raise_for_status()
            return str(response.json()["fingerprint"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    # -- requests -------------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = None if response is None else retry_after(response)
        if hinted is not None:
            return min(hinted, self.max_delay)
        base = min(self.backoff * 2**attempt, self.max_delay)
        return float(base * random.uniform(0.5, 1.5))

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bool = False,
        on_body: Callable[[memoryview, int], None] | None = None,
        first: Endpoint | None = None,
    ) -> httpx.Response:
        """Send a request with failover and retries; return a 2xx response or raise the error.

        ``data``: a batch request, sent to each URL's data listener when it has one (see
        :meth:`_send`). ``on_body``: called as the body arrives (see
        :data:`~batchstash.client.transport.BODY_HOOK`). ``first``: the URL to try first
        (when it is not cooling down), e.g. the one whose pipelined connection just broke.

        Each attempt tries every URL once, in :meth:`Endpoints.route` order, until one answers with
        something other than a connection failure or a failing-over 5xx (:func:`fails_over`).
        A ``503 not_primed`` whose header reports a running prime is polled without counting
        against ``retries`` (see :class:`~batchstash.client.priming._PrimeWait`).
        The body of a successful response is left unread: take it with :func:`body_buffer`
        (the transport's own buffer, no copy) or ``response.read()``.
        """
        prime = _PrimeWait(
            self.prime_wait, self.backoff, self.max_delay, self._clock, self._prime_log
        )
        attempt = 0
        while True:
            last, waiting = attempt >= self.retries, False
            failures: list[tuple[str, str]] = []  # (url, what happened), this attempt
            failed: httpx.Response | httpx.TransportError | None = None
            for endpoint in self._pool.route(first if attempt == 0 else None):
                with self._lock:
                    endpoint.requests += 1
                try:
                    response = self._send(endpoint, method, path, params, json, data, on_body)
                    if not response.is_success:
                        response.read()
                except httpx.TransportError as exc:
                    failed, what = exc, f"{type(exc).__name__}: {exc}"
                    failures.append((endpoint.url, what))
                    self._pool.mark_down(endpoint, what)
                    continue
                if fails_over(response):
                    failed, what = response, _describe(response)
                    failures.append((endpoint.url, what))
                    self._pool.mark_down(endpoint, what)
                    continue
                self._pool.mark_up(endpoint)
                if response.is_success:
                    response.extensions[SOURCE] = endpoint.url
                    try:
                        self._observe(response.headers.get(FINGERPRINT_HEADER), endpoint.url)
                    except PlanError:
                        response.close()
                        raise
                    return response
                polled = prime.wait(response, endpoint.url)  # raises when nothing primes
                if polled is not None:
                    self._sleep(polled)
                    waiting = True
                    break
                if last or not is_retryable(response):
                    raise error_from_response(response)
                delay = self._delay(attempt, response)
                logger.info(
                    "%s %s answered %d; retry %d/%d in %.2fs",
                    method,
                    path,
                    response.status_code,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                self._sleep(delay)
                break
            else:  # every URL failed this attempt
                if last:
                    cause = failed if isinstance(failed, httpx.TransportError) else None
                    raise self._exhausted(method, path, attempt + 1, failures, failed) from cause
                response_failed = failed if isinstance(failed, httpx.Response) else None
                delay = self._delay(attempt, response_failed)
                logger.warning(
                    "%s %s failed (%s); retry %d/%d in %.2fs",
                    method,
                    path,
                    "; ".join(f"{url}: {what}" for url, what in failures),
                    attempt + 1,
                    self.retries,
                    delay,
                )
                self._sleep(delay)
            if not waiting:
                attempt += 1

    def _send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json: Any,
        data: bool,
        on_body: Callable[[memoryview, int], None] | None = None,
    ) -> httpx.Response:
        """One try on ``endpoint``: a batch request on its data listener, else on its API pool.

        A data listener that fails on the connection, or answers without a batchstash header
        or error body (another program on that port), is skipped for a while and the request
        goes to the API port at once; the API's answers name the listener (learned here).
        """
        extensions = {BODY_HOOK: on_body} if on_body is not None else None
        pool = self._pool.data_client(endpoint) if data else None
        if pool is not None:
            try:
                request = pool.build_request(
                    method, path, params=params, json=json, extensions=extensions
                )
                response = pool.send(request, stream=True)
            except httpx.TransportError as exc:
                self._pool.data_failed(endpoint, f"{type(exc).__name__}: {exc}")
            else:
                if FINGERPRINT_HEADER in response.headers:
                    return response
                response.read()
                if error_code(response) is not None:
                    return response
                response.close()
                self._pool.data_failed(endpoint, f"{_describe(response)}, not from batchstash")
        request = endpoint.http.build_request(
            method, path, params=params, json=json, extensions=extensions
        )
        response = endpoint.http.send(request, stream=True)
        self._pool.learn_data_port(endpoint, response.headers.get(DATA_PORT_HEADER))
        return response

    def _exhausted(
        self,
        method: str,
        path: str,
        attempts: int,
        failures: list[tuple[str, str]],
        failed: httpx.Response | httpx.TransportError | None,
    ) -> BatchstashError:
        """The error of a request every URL failed on its last attempt."""
        if isinstance(failed, httpx.Response) and len(self._pool) == 1:
            return error_from_response(failed)
        if len(self._pool) == 1:
            url, what = failures[0]
            error: BatchstashError = TransportError(
                f"{method} {url}{path}: {what} (after {attempts} attempts)"
            )
        else:
            tried = "; ".join(f"{url}: {what}" for url, what in failures)
            message = f"{method} {path} failed on every URL (after {attempts} attempts): {tried}"
            if isinstance(failed, httpx.Response):
                error = type(error_from_response(failed))(message)
            else:
                error = TransportError(message)
        return error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json_from(method, path, **kwargs)[0]

    def _json_from(self, method: str, path: str, **kwargs: Any) -> tuple[Any, str]:
        """The JSON body of a request and the base URL that answered it."""
        response = self._request(method, path, **kwargs)
        response.read()
        try:
            return response.json(), str(response.extensions.get(SOURCE, self.url))
        except ValueError:
            raise PayloadError(f"{method} {path}: the response is not JSON") from None


def _describe(response: httpx.Response) -> str:
    """``502 Bad Gateway`` or ``500 store_corrupt``: a failed response in one phrase."""
    return f"{response.status_code} {error_code(response) or response.reason_phrase}".rstrip()
