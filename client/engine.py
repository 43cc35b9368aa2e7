"""Send one request: prime wait -> retries -> failover over the URLs -> transport.

Each layer calls only the one below it, as httpx's client -> auth -> redirects -> send:

* :meth:`Engine.request` waits for a running prime (:class:`~.priming.PrimeWait`) around
* the retries (:meth:`Engine._retrying`), which ask the :class:`~.policy.RetryPolicy` after
  each failed pass, around
* the failover (:meth:`Engine._failover`), one pass over the URLs in
  :meth:`~.endpoints.Endpoints.route` order, around
* one try on one URL (:meth:`Engine._send`): its data listener or its API port.

A successful answer's store fingerprint is checked (:class:`~.identity.StoreIdentity`). While
every URL fails on the connection, the engine says so once at WARNING, and once at INFO when
a server answers again (:class:`~.outage.Outage`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .buffers import BufferPool
from .encoding import accept_encoding
from .endpoints import DATA_CONNECT_TIMEOUT, Endpoint, Endpoints, parse_urls
from .errors import BatchstashError, PayloadError, PlanError, TransportError
from .headers import DATA_PORT_HEADER, FINGERPRINT_HEADER
from .identity import StoreIdentity
from .outage import Outage
from .policy import CONNECT, READ, Failure, RetryPolicy
from .priming import PrimeLog, PrimeWait
from .responses import error_code, error_from_response, fails_over, retry_after
from .transport import BODY_HOOK, BufferTransport

__all__ = ["SOURCE", "Engine"]

logger = logging.getLogger("batchstash.client.http")  # what users configure for the client

SOURCE = "batchstash.url"
"""Response extension: the base URL that answered."""
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

OnBody = Callable[[memoryview, int], None]


@dataclass
class _Pass:
    """What one pass over the URLs got: an answer, or a failure on every URL it tried."""

    response: httpx.Response | None = None  # an answer that does not fail over
    url: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, what happened)
    failure: Failure = CONNECT  # the failure the retry is decided on
    error: httpx.TransportError | None = None  # the last failure on the connection
    failed: httpx.Response | None = None  # the last failing-over answer


class Engine:
    """The request path of a client of one or several URLs serving one store.

    Args:
        url: the base URL, or several (a sequence or one comma separated string).
        policy: retries, cooldowns, the prime wait and the clock.
        token: a bearer token sent with every request.
        timeout: seconds for connecting and for each read.
        transport: an ``httpx`` transport shared by every URL (default: a
            :class:`BufferTransport` each, bodies read into :attr:`buffers`).
        data_listener: send batch requests to a server's advertised data listener.

    Attributes:
        urls: the base URLs, in order.
        url: the first of them.
        endpoints: the URLs' pools and health.
        identity: the store fingerprint they serve.
        outage: whether every URL is unreachable now (said once per outage).
        buffers: the pool of body buffers (``None`` with a caller's own transport).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        policy: RetryPolicy,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        data_listener: bool = True,
    ) -> None:
        # zstd only where it can be decoded (the zstd extra); else the server decompresses
        headers = {
            "Accept": "application/json, application/octet-stream",
            "Accept-Encoding": accept_encoding(),
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.urls = parse_urls(url)
        self.url = self.urls[0]
        self.policy = policy
        self.timeout = float(timeout)
        self.buffers = BufferPool() if transport is None else None

        def make_http(base: str, connect: float = timeout) -> httpx.Client:
            return httpx.Client(
                base_url=base,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(connect, timeout)),
                transport=transport or BufferTransport(buffers=self.buffers),
            )

        self.endpoints = Endpoints(
            self.urls,
            make_http,
            policy,
            # a data listener that does not answer quickly is skipped, not waited for
            (lambda base: make_http(base, connect=DATA_CONNECT_TIMEOUT)) if data_listener else None,
        )
        self.identity = StoreIdentity(self.endpoints)
        self.outage = Outage(self.urls, policy.clock, policy.describe)
        self._prime_log = PrimeLog()

    # -- prime wait ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bool = False,
        on_body: OnBody | None = None,
        first: Endpoint | None = None,
    ) -> httpx.Response:
        """Send a request; return a 2xx response or raise the matching error.

        Args:
            method: the HTTP method.
            path: the path under the base URL.
            params: query parameters.
            json: a JSON body.
            data: a batch request, sent to each URL's data listener when it has one.
            on_body: called as the body arrives (see
                :data:`~batchstash.client.transport.BODY_HOOK`).
            first: the URL to try first (when it is not cooling down), e.g. the one whose
                pipelined connection just broke.

        The body of a successful response is left unread: take it with :func:`body_buffer`
        (the transport's own buffer, no copy) or ``response.read()``.

        Raises:
            BatchstashError: the class matching the server's ``error.code``;
                :class:`TransportError` when no URL could be reached within the policy;
                :class:`PlanError` when a URL serves another store.
        """
        wait = PrimeWait(self.policy, self._prime_log)
        while True:
            response, url = self._retrying(
                method, path, (params, json, data, on_body), first, wait.handles
            )
            if response.is_success:
                response.extensions[SOURCE] = url
                try:
                    self.identity.observe(response.headers.get(FINGERPRINT_HEADER), url)
                except PlanError:
                    response.close()
                    raise
                return response
            self.policy.sleep(wait.wait(response, url))  # raises when it does not wait
            first = None

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[Any, str]:
        """The JSON body of a :meth:`request` and the base URL that answered it."""
        response = self.request(method, path, **kwargs)
        response.read()
        try:
            return response.json(), str(response.extensions.get(SOURCE, self.url))
        except ValueError:
            raise PayloadError(f"{method} {path}: the response is not JSON") from None

    def answered(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered (on this engine's path or another's): it and the servers are up."""
        self.endpoints.mark_up(endpoint)
        self.outage.reached()

    # -- retries ------------------------------------------------------------------------------

    def _retrying(
        self,
        method: str,
        path: str,
        args: tuple[Mapping[str, str] | None, Any, bool, OnBody | None],
        first: Endpoint | None,
        settles: Callable[[httpx.Response], bool],
    ) -> tuple[httpx.Response, str]:
        """Passes over the URLs until one answers with success or with what ``settles``."""
        started, attempt = self.policy.clock(), 0
        while True:
            begun = self.policy.clock()
            tried = self._failover(method, path, args, first if attempt == 0 else None)
            response = tried.response
            if response is not None:
                self.outage.reached()
                if response.is_success or settles(response):
                    return response, tried.url
                hint = retry_after(response)
                delay = self.policy.delay(method, response.status_code, attempt, started, hint)
                if delay is None:
                    raise error_from_response(response)
                logger.info(
                    "%s %s answered %d; retry %d in %.2fs",
                    method,
                    path,
                    response.status_code,
                    attempt + 1,
                    delay,
                )
            else:
                if tried.failed is None:
                    self.outage.unreachable(tried.failures, begun)
                hint = None if tried.failed is None else retry_after(tried.failed)
                delay = self.policy.delay(method, tried.failure, attempt, started, hint)
                if delay is None:
                    error = self._exhausted(method, path, attempt + 1, started, tried)
                    raise error from tried.error
                logger.debug(
                    "%s %s failed (%s); retry %d in %.2fs",
                    method,
                    path,
                    "; ".join(f"{url}: {what}" for url, what in tried.failures),
                    attempt + 1,
                    delay,
                )
            self.policy.sleep(delay)
            attempt += 1

    def _exhausted(
        self, method: str, path: str, attempts: int, started: float, tried: _Pass
    ) -> BatchstashError:
        """The error of a request whose last pass failed on every URL it tried."""
        failed = tried.failed
        if failed is not None and len(self.endpoints) == 1:
            return error_from_response(failed)
        waited = self.policy.clock() - started
        after = f"after {attempts} attempts in {waited:.1f} s"
        if len(self.endpoints) == 1:
            url, what = tried.failures[0]
            return TransportError(f"{method} {url}{path}: {what} ({after})")
        every = "every URL" if len(tried.failures) == len(self.endpoints) else "the URLs tried"
        listed = "; ".join(f"{url}: {what}" for url, what in tried.failures)
        message = f"{method} {path} failed on {every} ({after}): {listed}"
        if failed is not None:
            return type(error_from_response(failed))(message)
        return TransportError(message)

    # -- failover -----------------------------------------------------------------------------

    def _failover(
        self,
        method: str,
        path: str,
        args: tuple[Mapping[str, str] | None, Any, bool, OnBody | None],
        first: Endpoint | None,
    ) -> _Pass:
        """One pass: each URL in route order until one answers without failing over.

        A failure the policy would not retry for ``method`` (a ``POST`` that may have reached
        a server) ends the pass at once: it is not sent to the next URL either.
        """
        tried = _Pass()
        for endpoint in self.endpoints.route(first):
            self.endpoints.count_request(endpoint)
            try:
                response = self._send(endpoint, method, path, *args)
                if not response.is_success:
                    response.read()
            except httpx.TransportError as exc:
                what = f"{type(exc).__name__}: {exc}"
                tried.error, tried.failure = exc, CONNECT if isinstance(exc, _NEVER_SENT) else READ
            else:
                if not fails_over(response):
                    self.endpoints.mark_up(endpoint)
                    tried.response, tried.url = response, endpoint.url
                    return tried
                what = _describe(response)
                tried.failed, tried.failure = response, response.status_code
            tried.failures.append((endpoint.url, what))
            self.endpoints.mark_down(endpoint, what)
            if not self.policy.retries(method, tried.failure):
                break
        return tried

    # -- one try ------------------------------------------------------------------------------

    def _send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json: Any,
        data: bool,
        on_body: OnBody | None = None,
    ) -> httpx.Response:
        """One try on ``endpoint``: a batch request on its data listener, else on its API pool.

        A data listener that fails on the connection, or answers without a batchstash header
        or error body (another program on that port), is skipped for a while and the request
        goes to the API port at once; the API's answers name the listener (learned here).
        """
        extensions = {BODY_HOOK: on_body} if on_body is not None else None
        pool = self.endpoints.data_client(endpoint) if data else None
        if pool is not None:
            try:
                request = pool.build_request(
                    method, path, params=params, json=json, extensions=extensions
                )
                response = pool.send(request, stream=True)
            except httpx.TransportError as exc:
                self.endpoints.data_failed(endpoint, f"{type(exc).__name__}: {exc}")
            else:
                if FINGERPRINT_HEADER in response.headers:
                    self.endpoints.data_answered(endpoint)
                    return response
                response.read()
                if error_code(response) is not None:
                    self.endpoints.data_answered(endpoint)
                    return response
                response.close()
                self.endpoints.data_failed(endpoint, f"{_describe(response)}, not from batchstash")
        request = endpoint.http.build_request(
            method, path, params=params, json=json, extensions=extensions
        )
        response = endpoint.http.send(request, stream=True)
        self.endpoints.learn_data_port(endpoint, response.headers.get(DATA_PORT_HEADER))
        return response

    def close(self) -> None:
        """Close the pool of every URL (their data listeners' included)."""
        self.endpoints.close()


def _describe(response: httpx.Response) -> str:
    """``502 Bad Gateway`` or ``500 store_corrupt``: a failed response in one phrase."""
    return f"{response.status_code} {error_code(response) or response.reason_phrase}".rstrip()
