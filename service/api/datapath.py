"""The data listener: batch bytes on their own port, one blocking thread per connection.

uvicorn's write path is non-blocking: what the socket does not take at once is copied into the
transport's buffer and written on later wake-ups, chunk by chunk, on the one event-loop thread.
For megabytes of mapped batch bytes a request, that is a copy and several wake-ups per batch,
where a blocking ``sendall`` hands the kernel the bytes once. This listener answers the two
batch routes,

* ``GET /v1/splits/{split}/payloads?ids=...&attributes=...``
* ``GET /v1/splits/{split}/batches/{batch_id}?attributes=...`` (``If-None-Match`` too)

plus ``GET /healthz``, with the API's bytes, headers, bearer-token check, JSON errors and
metrics, from the same :class:`StoreReader`: each connection is a thread that parses requests
with httptools (the C HTTP/1.1 parser uvicorn itself runs on; see :mod:`.http1`) and hands the
store bytes to the kernel with ``sendfile`` and ``sendmsg`` (few system calls, no copy in
Python, the GIL released while the kernel copies). This module is the sockets and threads; what
a request is answered is :class:`~.dataroutes.DataRoutes`'. Everything else stays on FastAPI;
the API port keeps serving the batch routes too, so a client that cannot reach this port loses
speed, not function.

The API advertises the port in the ``X-Batchstash-Data-Port`` header; clients send their batch
requests there (see :class:`batchstash.client.endpoints.Endpoint`).

A stored object that verified before reaches the listener unread: the reader holds it open at
the version that verified (a :class:`~batchstash.service.store.backend.Sendable`) and it goes
out from that descriptor, either with ``os.sendfile`` (the kernel sends from the page cache, no
mapping, no read, no copy in Python; the memory before it, head and frame prefix, goes with
``MSG_MORE``) or mapped and sent with ``sendmsg``; the descriptor is closed once the reply is
sent. Which way costs less CPU depends on the machine, so by default (``data_sendfile=auto``)
:class:`~.sending.SendWays` tries both while it serves and keeps the cheaper. A reply holds a
descriptor per object, so :func:`start_data_listener` raises the open-files soft limit.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from batchstash.client import InvalidRequestError
from batchstash.service.store.backend import Sendable, nbytes

from .dataroutes import DataRoutes, Reply, error_reply
from .http1 import ProtocolError, Request, RequestParser, response_head
from .reads import DATA_PORT_HEADER
from .sending import SendWays, close_files, send_all, send_chunks
from .state import ServerState

__all__ = ["DataListener", "advertise_data_port", "start_data_listener"]

logger = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
"""The longest request head (a request line with 1,024 ids is about 7 KB)."""
MAX_BODY = 64 * 1024
"""A batch request has no body; a client sending more than this is cut off."""
RECV_BYTES = 65536
OPEN_FILES = 65536
"""The open-files soft limit the data listener asks for (see :func:`raise_open_files_limit`)."""
OPEN_FILES_LOW = 4096
"""Below this many open files allowed, the data listener warns at start."""


def _drain(conn: socket.socket) -> None:
    """Half-close, then read what the client still sends (briefly), so closing sends no reset.

    A socket closed with unread bytes resets the connection, and the client may lose the
    error response it has not read yet.
    """
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(0.5)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and conn.recv(RECV_BYTES):
        pass


def _send_last(conn: socket.socket, reply: Reply, timeout: float) -> None:
    """Send the last response of a connection (``Connection: close``); errors are ignored."""
    try:
        conn.settimeout(timeout)
        size = sum(map(nbytes, reply.chunks))
        head = response_head(reply.status, reply.headers, size, close=True)
        send_all(conn, [head, *reply.chunks])
        _drain(conn)
    except OSError:
        pass


class DataListener:
    """Serves the batch routes on ``host:port`` in threads until :meth:`close`.

    Args:
        state: the server's state (reader, settings, token, metrics, job).
        host: the address to bind.
        port: the TCP port (``0``: any free one; see :attr:`port`).
        max_connections: connections served at once; more are answered ``503`` and closed.
        idle_timeout: seconds an idle keep-alive connection is kept.
        send_timeout: seconds a response may wait for a client that does not read.
        sendfile: send whole stored files with ``os.sendfile`` (``False``: their mapped pages
            with ``sendmsg``; ``"auto"``: the way that costs this process less CPU, measured
            as it serves by :class:`~.sending.SendWays`).

    Raises:
        OSError: the port cannot be bound.
    """

    def __init__(
        self,
        state: ServerState,
        host: str,
        port: int,
        *,
        max_connections: int = 256,
        idle_timeout: float = 60.0,
        send_timeout: float = 60.0,
        sendfile: bool | Literal["auto"] = True,
    ) -> None:
        self.state = state
        metrics = state.metrics
        self.ways: SendWays | None = None
        if sendfile == "auto":
            self.ways = SendWays(on_choice=lambda way: metrics.observe_send_way("auto", way))
            metrics.observe_send_way("auto", None)
        else:
            metrics.observe_send_way(str(sendfile).lower(), sendfile)
        self.sendfile = bool(sendfile)  # without a choice to make (no stored file), as if on
        self.routes = DataRoutes(state)
        self.idle_timeout, self.send_timeout = idle_timeout, send_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock = socket.create_server((host, port), backlog=128, reuse_port=False)
        self._sock.settimeout(0.25)  # the accept loop looks at the stop flag this often
        self.host, self.port = host, int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="batchstash-data", daemon=True)

    def start(self) -> DataListener:
        """Start accepting connections (in a daemon thread)."""
        self._thread.start()
        logger.info("data listener on %s:%d (batch payloads)", self.host, self.port)
        return self

    def close(self) -> None:
        """Stop accepting, cut open connections and wait for the accept thread."""
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> DataListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------------------

    def _accept(self) -> None:
        count = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                logger.warning("data listener: accept failed", exc_info=True)
                time.sleep(0.1)
                continue
            count += 1
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._connection, args=(conn,), name=f"batchstash-data-{count}", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket) -> None:
        reply = error_reply(
            self.state,
            503,
            "unavailable",
            "too many connections to the data listener; retry",
            [("Retry-After", "1")],
        )
        try:
            _send_last(conn, reply, timeout=1.0)
        finally:
            conn.close()

    def _connection(self, conn: socket.socket) -> None:
        parser = RequestParser(MAX_HEAD, MAX_BODY)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stop.is_set():
                request = self._next_request(conn, parser)
                if request is None:
                    return
                reply = self.routes.handle(request.method, request.target, request.headers)
                last = not request.keep_alive or (parser.upgraded and not parser.ready)
                self._respond(conn, reply, close=last)
                if last:
                    _drain(conn)
                    return
        except ProtocolError as exc:
            self._protocol_error(conn, exc)
        except OSError:
            pass  # the client went away or timed out: nothing to answer
        finally:
            with self._lock:
                self._conns.discard(conn)
            self._slots.release()
            conn.close()

    def _next_request(self, conn: socket.socket, parser: RequestParser) -> Request | None:
        """The next complete request; ``None`` when the client closed or idled.

        Requests a client pipelined are answered in order before an error that came after
        them is (:class:`ProtocolError`, raised once the queue is empty).
        """
        conn.settimeout(self.idle_timeout)
        while (request := parser.next()) is None:
            if parser.upgraded:
                return None
            try:
                data = conn.recv(RECV_BYTES)
            except TimeoutError:
                return None
            if not data:
                return None
            parser.feed(data)
        return request

    def _protocol_error(self, conn: socket.socket, exc: ProtocolError) -> None:
        message = f"malformed HTTP request: {exc}"
        reply = error_reply(self.state, exc.status, "invalid_request", message)
        _send_last(conn, reply, timeout=self.send_timeout)

    # -- responses ------------------------------------------------------------------------------

    def _respond(self, conn: socket.socket, reply: Reply, close: bool) -> None:
        start = time.perf_counter()
        try:
            self._send_reply(conn, reply, close)
            self.state.metrics.send_seconds.observe(time.perf_counter() - start)
        finally:
            close_files(reply.chunks)  # the stored files it held open, sent or not

    def _send_reply(self, conn: socket.socket, reply: Reply, close: bool) -> None:
        size = sum(map(nbytes, reply.chunks))
        buffers: list[Any] = [response_head(reply.status, reply.headers, size, close)]
        buffers.extend(reply.chunks)
        conn.settimeout(self.send_timeout)
        ways = self.ways
        if ways is None or not any(isinstance(c, Sendable) for c in reply.chunks):
            send_chunks(conn, buffers, self.sendfile)
            return
        sendfile = ways.way()
        send_chunks(conn, buffers, sendfile)
        ways.record(sendfile, size)


def advertise_data_port(app: Callable[..., Any], state: ServerState) -> Callable[..., Any]:
    """ASGI middleware: every API response names the data listener's port (when it runs)."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        port = state.data_port
        if scope["type"] != "http" or port is None:
            await app(scope, receive, send)
            return
        header = (DATA_PORT_HEADER.lower().encode(), str(port).encode())

        async def advertised(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await app(scope, receive, advertised)

    return middleware


def raise_open_files_limit(want: int = OPEN_FILES, low: int = OPEN_FILES_LOW) -> int:
    """Raise this process's soft limit on open files towards ``want`` (within the hard limit).

    A reply holds each verified stored file open until it is sent (``sendfile`` from that
    descriptor), so one request of 1,024 ids holds 1,024 descriptors or more: the usual soft
    limit of 1,024 is too low for a few of them at once. A limit still under ``low`` is
    logged as a warning. Returns the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < min(low, want):
        logger.warning(
            "open-files limit %d (hard limit %d): large multi-batch requests to the data "
            "listener may fail with 'too many open files'; raise it (ulimit -n, compose ulimits)",
            soft,
            hard,
        )
    return soft


def start_data_listener(state: ServerState) -> DataListener | None:
    """Start the data listener the settings ask for and advertise it; ``None`` if there is none.

    The default port (``port + 1``) being taken costs speed only: the listener is left out with a
    warning. A ``data_port`` that was asked for and cannot be bound is an error.

    Raises:
        InvalidRequestError: the configured ``data_port`` cannot be bound.
    """
    settings = state.settings
    if not settings.data_listener:
        return None
    raise_open_files_limit()
    default = settings.data_port is None
    port = settings.data_port if settings.data_port is not None else settings.port + 1
    if default and settings.port == 0:
        port = 0  # an API port picked by the system: pick the data port the same way
    try:
        listener = DataListener(state, settings.host, port, sendfile=settings.data_sendfile).start()
    except OSError as exc:
        if not default:
            raise InvalidRequestError(
                f"data_port {port}: cannot listen on {settings.host}:{port}: {exc.strerror}"
            ) from None
        logger.warning(
            "no data listener: %s:%d is taken (%s); batches are served on the API port only "
            "(set BATCHSTASH_DATA_PORT to another port)",
            settings.host,
            port,
            exc.strerror,
        )
        return None
    state.data_port = settings.data_advertise_port or listener.port
    return listener
