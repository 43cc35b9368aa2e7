"""uvicorn's HTTP protocol, answering the requests it refuses before the app in the API's JSON.

uvicorn answers a request its parser refuses with a plain-text ``400 Invalid HTTP request
received.`` that the app never sees. With httptools (what ``uvicorn[standard]`` runs, and so the
server) that is any request target over 65,535 bytes (``httptools.parse_url``'s limit), while
request headers have no limit at all. :func:`http_protocol` is uvicorn's httptools protocol
with limits of its own and the one error shape:

* a request target over :data:`MAX_TARGET` bytes: ``414 URI Too Long``;
* request headers over :data:`MAX_HEADERS` bytes in all: ``431 Request Header Fields Too Large``
  (a head still unfinished after :data:`MAX_HEAD_READ` bytes too, so that one endless header
  line cannot fill the memory before it ends);
* any other request the parser refuses: ``400``;

each with ``{"error": {"code": "invalid_request", "message": ...}}``, counted in
``batchstash_errors_total``, and the connection closed, as uvicorn does. A parser callback
refuses by raising: the parser stops at once and uvicorn calls ``send_400_response``, which
answers with the refusal's status. ``GET /v1/splits/{split}/payloads`` takes up to 1,024 ids
(about 20 KB of target at the most), well within :data:`MAX_TARGET`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEADERS", "MAX_HEAD_READ", "MAX_TARGET", "error_head", "http_protocol"]

logger = logging.getLogger(__name__)

MAX_TARGET = 65535
"""The longest request target (path and query) served: httptools' own URL limit."""
MAX_HEADERS = 64 * 1024
"""The most header bytes (names, values, separators) a request may carry."""
MAX_HEAD_READ = 1024 * 1024
"""Bytes received while a request's head is unfinished before it is refused (431)."""

CODE = "invalid_request"


def error_head(status: int, length: int, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The head of a closing JSON error response of ``length`` body bytes."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(length).encode("ascii"),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Refused(Exception):
    """Raised in a parser callback: the parser stops and the request is answered as refused."""


def http_protocol(count: Callable[[str], None] | None = None) -> type[asyncio.Protocol]:
    """The ``http=`` of ``uvicorn.run``: the protocol class, calling ``count(code)`` per refusal.

    (uvicorn builds the protocol itself, so ``count`` is bound in a class made here.)
    """

    class JsonErrorsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with request-size limits and JSON parser errors."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._refusal: tuple[int, str] | None = None
            self._header_bytes = 0
            self._head_read = 0  # bytes received since the head began and before it ended
            self._in_head = True

        def _refuse(self, status: int, message: str) -> None:
            self._refusal = (status, message)
            raise _Refused(message)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_read += len(data)
                if self._head_read > MAX_HEAD_READ and self._refusal is None:
                    self._refusal = (431, f"request headers over {MAX_HEADERS} bytes")
                    self.send_400_response("")
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes, self._in_head = 0, True

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > MAX_TARGET:
                self._refuse(414, f"request target over {MAX_TARGET} bytes")

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
            if self._header_bytes > MAX_HEADERS:
                self._refuse(431, f"request headers over {MAX_HEADERS} bytes")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_read = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True

        def send_400_response(self, msg: str) -> None:
            status, message = self._refusal or (400, f"malformed HTTP request: {msg}")
            if self._refusal is not None:
                logger.info("refused a request from %s: %s (%d)", self.client, message, status)
            if count is not None:
                count(CODE)
            body = json.dumps({"error": {"code": CODE, "message": message}}).encode()
            headers = self.server_state.default_headers
            self.transport.write(error_head(status, len(body), headers) + body)
            self.transport.close()

    return JsonErrorsProtocol
