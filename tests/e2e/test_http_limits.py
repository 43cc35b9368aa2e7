"""Requests uvicorn refuses before the app get the API's JSON error, with the right 4xx."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from batchstash.service.api.protocol import MAX_HEADERS, MAX_TARGET

from .conftest import Server

pytestmark = pytest.mark.slow


def exchange(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes; status, headers, body."""
    address = urlsplit(server.url)
    data = b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the answer is already there
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes: what it sent first is what counts
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def get(target: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: t", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (get(b"/healthz?pad=" + b"a" * MAX_TARGET), 414, "request target over"),
        (get(b"/v1/splits/train/payloads?ids=" + b"0," * 500_000 + b"0"), 414, "request target"),
        (get(b"/healthz", b"X-Big: " + b"a" * MAX_HEADERS), 431, "request headers over"),
        (get(b"/healthz", *(b"X-%d: %s" % (i, b"b" * 60) for i in range(2000))), 431, "headers"),
        (get(b"/healthz", b"X-Endless: " + b"c" * (3 << 20)), 431, "request headers over"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
    ],
    ids=["long-target", "huge-ids", "long-header", "many-headers", "endless-header", "garbage"],
)
def test_refused_requests_get_the_api_json_error(
    primed_iris: Server, request_bytes: bytes, status: int, says: str
) -> None:
    got, headers, body = exchange(primed_iris, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request" and says in error["message"]


def test_the_longest_legitimate_urls_are_served(primed_iris: Server) -> None:
    # 1,024 ids (the most a request takes), each written with 19 digits: about 20 KB of URL
    ids = ",".join(str(i % 6).zfill(19) for i in range(1024))
    target = f"/v1/splits/train/payloads?ids={ids}&attributes=label".encode()
    assert 20_000 < len(target) < MAX_TARGET
    status, headers, body = exchange(primed_iris, get(target, b"X-Pad: " + b"p" * 30_000))
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/x-batchstash-frames"
    assert len(body) == int(headers["content-length"]) > 1024 * 8


def test_refusals_are_counted_and_the_server_keeps_serving(primed_iris: Server) -> None:
    def refused() -> float:
        text = httpx.get(f"{primed_iris.url}/metrics").text
        name = 'batchstash_errors_total{code="invalid_request"}'
        line = [s for s in text.splitlines() if s.startswith(name)]
        return float(line[0].split()[-1]) if line else 0.0

    before = refused()
    assert exchange(primed_iris, get(b"/healthz?" + b"q" * (MAX_TARGET + 1)))[0] == 414
    assert refused() == before + 1
    assert httpx.get(f"{primed_iris.url}/healthz").json() == {"status": "ok"}
