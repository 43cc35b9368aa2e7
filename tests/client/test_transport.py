"""BufferTransport against a real HTTP/1.1 server on loopback (stdlib http.server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from batchstash.client import BufferTransport, body_buffer
from batchstash.client.transport import BUFFER_EXTENSION

BODY = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        Handler.peers.append(self.client_address)
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(b"late")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True
        else:
            self._send(BODY)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        self._send(self.rfile.read(length)[::-1])

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.peers = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_body_lands_in_one_buffer_without_a_copy(server: str) -> None:
    with httpx.Client(transport=BufferTransport()) as client:
        response = client.send(client.build_request("GET", f"{server}/body"), stream=True)
        owned = response.extensions[BUFFER_EXTENSION]
        buffer = body_buffer(response)
        assert buffer.obj is owned  # a view of the transport's own buffer, not a copy
        assert not buffer.readonly and bytes(buffer) == BODY
        # the buffer left the response: its request/stream cycle cannot keep it alive
        assert BUFFER_EXTENSION not in response.extensions and response.is_closed
        plain = client.get(f"{server}/body")
        assert plain.content == BODY  # the usual httpx API still works


def test_keep_alive_reuses_one_connection(server: str) -> None:
    with httpx.Client(transport=BufferTransport()) as client:
        for _ in range(3):
            assert client.get(f"{server}/body").status_code == 200
    assert len(Handler.peers) == 3 and len(set(Handler.peers)) == 1


def test_chunked_post_and_connection_close(server: str) -> None:
    with httpx.Client(transport=BufferTransport()) as client:
        assert client.get(f"{server}/chunked").content == b"hello chunked world"
        assert client.post(f"{server}/echo", content=b"abc").content == b"cba"
        assert client.get(f"{server}/close").content == b"ok"
        assert client.get(f"{server}/body").content == BODY  # a new connection after the close


def test_a_connection_closed_by_the_server_while_idle_is_retried(server: str) -> None:
    transport = BufferTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{server}/body").status_code == 200
        for conns in transport._idle.values():  # the server drops the idle keep-alive socket
            for conn in conns:
                assert conn.sock is not None
                conn.sock.shutdown(2)
        assert client.get(f"{server}/body").content == BODY


def test_errors_are_httpx_errors(server: str) -> None:
    with httpx.Client(transport=BufferTransport(), timeout=httpx.Timeout(5, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"{server}/slow")
    with httpx.Client(transport=BufferTransport()) as client, pytest.raises(httpx.ConnectError):
        client.get("http://127.0.0.1:9/")
