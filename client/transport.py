"""An httpx transport that reads response bodies straight into one preallocated buffer.

httpx's default transport (httpcore) receives a body as many small ``bytes`` chunks that are then
joined, and a payload decoded in place needs one more copy into a writable buffer; on loopback
that caps a client at a fraction of what the socket delivers. :class:`BufferTransport` speaks
HTTP/1.1 with the standard library's ``http.client`` (keep-alive connections, one per concurrent
request) and, when the response has a ``Content-Length``, ``readinto``s the body into a
``bytearray`` of that size: the socket writes into the buffer the tensors will view.

The buffer travels as the response extension ``"batchstash.buffer"``, so :func:`body_buffer`
gets it without a copy; everything else about the ``httpx.Response`` is as
usual (``.content``, ``.json()`` read the same bytes).

A ``200`` body with ``Content-Encoding: zstd`` (see :mod:`.encoding`) is received into one pooled
buffer and decompressed into another, of the ``X-Batchstash-Decoded-Length`` it announces; the
response then carries the decompressed body (no ``Content-Encoding``), and the bytes that
crossed the wire as the extension ``"batchstash.wire_bytes"``.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .buffers import BufferPool
from .encoding import content_size, decode_length, decompress_into
from .errors import PayloadError
from .headers import DECODED_LENGTH_HEADER
from .policy import IDEMPOTENT

__all__ = ["BufferStream", "BufferTransport", "body_buffer"]

_RETRY_ON_REUSE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class BufferStream(httpx.SyncByteStream):
    """A response body held in one writable buffer."""

    def __init__(self, buffer: Any) -> None:
        self.buffer: Any = buffer

    def __iter__(self) -> Iterator[bytes]:
        if self.buffer is not None:
            yield bytes(self.buffer)

    def close(self) -> None:
        """Drop the buffer (the response and its stream form a cycle that lives until GC)."""
        self.buffer = None


BUFFER_EXTENSION = "batchstash.buffer"
BODY_HOOK = "batchstash.on_body"
"""Request extension: ``hook(view, received)`` is called each time more of the body has landed
in its buffer (about every :data:`BODY_STEP` bytes), so a caller can check what has arrived
while it is still in the CPU cache. A hook must not raise."""
BODY_STEP = 1 << 20
WIRE_BYTES_EXTENSION = "batchstash.wire_bytes"
"""Response extension: the body's bytes on the wire (compressed), when it was decompressed."""


def body_buffer(response: httpx.Response) -> bytearray | memoryview:
    """The response body as a writable buffer: the transport's own when it has one (no copy).

    Takes the buffer out of the response (and closes it), so call it once per response.

    Raises:
        PayloadError: an encoded body that does not decode.
    """
    buffer = response.extensions.pop(BUFFER_EXTENSION, None)
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    if buffer is None or encoded:
        try:  # a caller's transport: httpx decodes the Content-Encoding
            return bytearray(response.read())
        except httpx.DecodingError as exc:
            raise PayloadError(f"the response body cannot be decoded: {exc}") from None
    # the caller owns the buffer now: the response must not keep it alive through its cycle
    response.close()
    return memoryview(buffer)


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("connect"), timeout.get("read")


class BufferTransport(httpx.BaseTransport):
    """HTTP/1.1 over keep-alive ``http.client`` connections, bodies read into one buffer each.

    Thread safe: each request takes an idle connection to its host or opens one.

    Args:
        verify: an ``ssl.SSLContext`` for ``https`` URLs (default: the system's trust store).
        max_idle: idle connections kept per host.
        buffers: where body buffers come from (default: a pool of its own, so a buffer is
            reused once the batch tensors viewing it are gone).
    """

    def __init__(
        self,
        verify: ssl.SSLContext | None = None,
        max_idle: int = 16,
        buffers: BufferPool | None = None,
    ) -> None:
        self._ssl = verify
        self._max_idle = max_idle
        self.buffers = buffers if buffers is not None else BufferPool()
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _connection(
        self, key: tuple[str, str, int], connect_timeout: float | None
    ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port = key
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
            return http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=context
            ), False
        return http.client.HTTPConnection(host, port, timeout=connect_timeout), False

    def _release(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole response body into one buffer."""
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        connect_timeout, read_timeout = _timeouts(request)
        body = request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        target = url.raw_path.decode("ascii")
        hook = request.extensions.get(BODY_HOOK)
        while True:
            conn, reused = self._connection(key, connect_timeout)
            try:
                return self._exchange(
                    key, conn, request.method, target, body, headers, read_timeout, hook
                )
            except _RETRY_ON_REUSE as exc:
                never_sent = conn.sock is None and not reused
                conn.close()
                what = str(exc) or type(exc).__name__
                if never_sent:
                    raise httpx.ConnectError(what, request=request) from exc
                if not (reused and request.method in IDEMPOTENT):
                    raise httpx.RemoteProtocolError(what, request=request) from exc
                # the server closed an idle keep-alive connection: retry once on a new one
            except TimeoutError as exc:
                kind = httpx.ReadTimeout if conn.sock is not None else httpx.ConnectTimeout
                conn.close()
                raise kind(str(exc) or "timed out", request=request) from exc
            except (OSError, http.client.HTTPException) as exc:
                # no socket yet: the connection was never made (refused, unknown host,
                # unreachable), so the request was never sent and any method may be retried
                never_sent = conn.sock is None and not reused
                conn.close()
                if isinstance(exc, ConnectionRefusedError) or (
                    never_sent and isinstance(exc, OSError)
                ):
                    raise httpx.ConnectError(str(exc), request=request) from exc
                raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    def _exchange(
        self,
        key: tuple[str, str, int],
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes,
        headers: list[tuple[str, str]],
        read_timeout: float | None,
        hook: Callable[[memoryview, int], None] | None = None,
    ) -> httpx.Response:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body and not any(name.lower() == "content-length" for name, _ in headers):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        response = conn.getresponse()
        headers_in = response.getheaders()
        zstd = response.status == 200 and _encoding(headers_in) == "zstd"
        buffer = _read_body(response, self.buffers, None if zstd else hook)
        if response.will_close:
            conn.close()
        else:
            self._release(key, conn)
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/1.1",
            "reason_phrase": response.reason.encode("latin-1"),
        }
        if zstd:  # the connection is released: a corrupt body fails this request only
            extensions[WIRE_BYTES_EXTENSION] = len(buffer)
            buffer, headers_in = decode_zstd(buffer, headers_in, self.buffers, hook)
        extensions[BUFFER_EXTENSION] = buffer
        return httpx.Response(
            response.status,
            headers=headers_in,
            stream=BufferStream(buffer),
            extensions=extensions,
        )

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def _encoding(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name.lower() == "content-encoding":
            return value.strip().lower()
    return "identity"


def decode_zstd(
    body: Any,
    headers: list[tuple[str, str]],
    buffers: BufferPool,
    hook: Callable[[memoryview, int], None] | None = None,
    pinned: bool = False,
) -> tuple[Any, list[tuple[str, str]]]:
    """A ``Content-Encoding: zstd`` body decompressed into a pooled buffer, and its new headers.

    The length comes from ``X-Batchstash-Decoded-Length`` (else the frame's own header); ``hook``
    sees the whole decompressed body once (the frames are checked while in cache).

    Raises:
        PayloadError: the body is not valid zstd, or not of the length announced.
    """
    announced = next((v for k, v in headers if k.lower() == DECODED_LENGTH_HEADER.lower()), None)
    length = decode_length(announced)
    if length is None:
        length = content_size(body)
    if length is None:
        raise PayloadError("a zstd body without its decoded length")
    out: Any = buffers.get(length, pinned=pinned)
    decompress_into(body, out)
    if hook is not None:
        hook(memoryview(out), length)
    skip = {"content-encoding", "content-length"}
    kept = [(k, v) for k, v in headers if k.lower() not in skip]
    return out, [*kept, ("Content-Length", str(length))]


def _read_body(
    response: http.client.HTTPResponse,
    buffers: BufferPool,
    hook: Callable[[memoryview, int], None] | None = None,
) -> Any:
    """The body in a pooled buffer.

    No receive low-water mark here (see :mod:`.lowwater`): one ``readinto`` of http.client's
    buffered reader makes several ``recv`` calls, so a mark could not follow what is still due
    and the last of them would wait for bytes that never come.
    """
    length = response.length  # None when chunked or read to close
    if length is None:
        return bytearray(response.read())
    buffer: Any = buffers.get(length)  # uninitialised: the socket writes every byte of it
    view, got = memoryview(buffer), 0
    step = BODY_STEP if hook is not None else length
    while got < length:
        n = response.readinto(view[got : min(length, got + step)])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:got]), length - got)
        got += n
        if hook is not None:
            hook(view, got)
    return buffer
