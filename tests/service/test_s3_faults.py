"""S3 under throttling and stalls: a loopback proxy in front of moto injects 503 SlowDown and a
request that never answers in time; the backend's retries absorb both."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.s3 import S3Backend

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class Faults:
    """Which requests the proxy spoils: every ``every``-th gets a 503, the ``stall``-th hangs."""

    def __init__(self, every: int, stall: int, stall_s: float) -> None:
        self.every, self.stall, self.stall_s = every, stall, stall_s
        self.count = self.throttled = self.stalled = 0
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.count += 1
            if self.count == self.stall:
                self.stalled += 1
                return "stall"
            if self.count % self.every == 0:
                self.throttled += 1
                return "throttle"
            return "pass"


@pytest.fixture
def faulty_endpoint(s3_endpoint: str) -> Iterator[tuple[str, Faults]]:
    upstream = urlsplit(s3_endpoint)
    faults = Faults(every=7, stall=5, stall_s=2.5)

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            """Quiet."""

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fate = faults.next()
            if fate == "stall":
                time.sleep(faults.stall_s)  # longer than the client's timeout: it gives up
            if fate == "throttle":
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()


def test_a_prime_and_reads_through_throttling_and_a_stall_complete(
    faulty_endpoint, s3_bucket, monkeypatch
) -> None:
    endpoint, faults = faulty_endpoint
    url = s3_bucket + "/store"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # everything goes through the proxy
    stash = iris(path=url)
    stash.backend = S3Backend(url, timeout_s=1.0, retry_s=30.0)
    assert stash.prime() == 9
    assert faults.throttled >= 3 and faults.stalled == 1
    assert stash.is_primed
    keys = list(stash.backend.list(layout.BATCHES))
    assert len(keys) == 18
    batch = stash.load("train", 2)
    assert batch["flower_dims"].shape == (20, 4)
