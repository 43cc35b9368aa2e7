"""HTTP/1.1 framing for the data listener: requests parsed by httptools, response heads written.

The listener's requests are small GETs and its answers are megabytes of stored bytes, so what
HTTP costs there is a fixed cost a request: requests are parsed by httptools, the C parser
(llhttp) uvicorn itself runs on, and a head is a string join. The parser refuses heads longer
than ``max_head`` (``414`` for the request line, ``431`` for the headers), bodies longer than
``max_body`` (``413``) and anything malformed (``400``); keep-alive follows the request's
version and ``Connection`` header, pipelined requests are answered in order, and a reply's
header values are refused if they hold a line break.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

__all__ = ["ProtocolError", "Request", "RequestParser", "response_head"]


class ProtocolError(Exception):
    """The client broke HTTP: ``status`` is the answer it gets before the connection closes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One parsed request: the method, the raw target and the raw header pairs."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_alive: bool = True


class RequestParser:
    """The requests of one connection, complete ones queued in arrival order.

    Args:
        max_head: bytes a request head may take (request line plus headers).
        max_body: bytes a request body may take.
    """

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.ready: deque[Request] = deque()
        self.upgraded = False  # an upgrade request: nothing after it is HTTP to this listener
        self.failed: ProtocolError | None = None  # raised once the requests before it are taken
        self._unfinished = 0  # bytes of the reads since the last complete request
        self._parser = httptools.HttpRequestParser(self)
        self._begin()

    def _begin(self) -> None:
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body = 0

    def next(self) -> Request | None:
        """The oldest complete request not taken yet; ``None``: more bytes are needed.

        Raises:
            ProtocolError: the stream broke HTTP after the requests already taken.
        """
        if self.ready:
            return self.ready.popleft()
        if self.failed is not None:
            raise self.failed
        return None

    def feed(self, data: bytes) -> None:
        """Parse ``data``; complete requests are taken with :meth:`next`.

        An error is raised at once when no request came before it, else by :meth:`next` once
        those are taken (pipelined requests are answered in order, the error last).

        Raises:
            ProtocolError: the bytes are not an acceptable HTTP/1.1 request stream.
        """
        if self.failed is not None:
            raise self.failed
        try:
            self._feed(data)
        except ProtocolError as exc:
            self.failed = exc
            if not self.ready:
                raise

    def _feed(self, data: bytes) -> None:
        before = len(self.ready)  # nothing takes from it while feeding
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"unparsable request: {cause!r}") from None
        except httptools.HttpParserUpgrade:
            # the upgrade request itself is queued and answered; nothing after it is HTTP
            self.upgraded = True
        except httptools.HttpParserError as exc:
            raise ProtocolError(str(exc) or type(exc).__name__) from None
        # a head the parser still buffers is bounded too: the bytes of reads that completed no
        # request (complete lines were checked in the callbacks, exactly)
        self._unfinished = 0 if len(self.ready) != before else self._unfinished + len(data)
        if self._unfinished > self.max_head:
            if not self._headers and self._url_bytes > self.max_head // 2:
                raise ProtocolError("request target too long", 414)
            raise ProtocolError("request head too large", 431)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts."""
        self._begin()

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._url.append(url)
        self._url_bytes += len(url)
        if self._url_bytes > self.max_head:
            raise ProtocolError("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One complete header."""
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._url_bytes + self._head_bytes > self.max_head:
            raise ProtocolError("request headers too large", 431)

    def on_body(self, body: bytes) -> None:
        """A piece of a request body (counted, dropped)."""
        self._body += len(body)
        if self._body > self.max_body:
            raise ProtocolError("request body too large", 413)

    def on_message_complete(self) -> None:
        """A request is complete: queue it."""
        parser: Any = self._parser
        self.ready.append(
            Request(
                parser.get_method().decode("ascii", "replace"),
                b"".join(self._url),
                self._headers,
                bool(parser.should_keep_alive()),
            )
        )


def response_head(
    status: int, headers: list[tuple[str, str]], length: int, close: bool = False
) -> bytes:
    """The head of a response with a ``Content-Length`` body (``Connection: close`` if asked).

    Raises:
        ValueError: a header name or value holds a line break (it would split the head).
    """
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
