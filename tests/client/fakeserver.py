"""A fake batchstash server for ``httpx.MockTransport``, picklable for DataLoader workers."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import torch

from batchstash.client import (
    BatchClient,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    RetryPolicy,
    VectorizerMetadata,
    wire,
)
from batchstash.client.frames import frame_prefix

URL = "http://stash.test"
FINGERPRINT = "f" * 32
CLASSES = ("a", "b", "c")
WIDTH = 3


def make_metadata() -> BatchMetadata:
    """Two fields: ``x`` (float32, width 3) and ``label`` (int64 class index, 3 classes)."""
    mapping = BatchFeatureMapping(
        "label",
        [
            ManagerFeatureMapping(
                "fake_manager",
                (FieldFeatureMapping("label", "flabel", True), FieldFeatureMapping("x", "fx")),
            )
        ],
    )
    fields = {
        "label": BatchFieldMetadata(
            mapping.field("label"),
            VectorizerMetadata("flabel", "Category", dtype="int64", shape=(), classes=CLASSES),
        ),
        "x": BatchFieldMetadata(
            mapping.field("x"), VectorizerMetadata("fx", "Series", shape=(WIDTH,))
        ),
    }
    return BatchMetadata("tests.Point", "batchstash.client.Batch", mapping, fields)


def make_tensors(split: str, batch_id: int, rows: int = 4) -> dict[str, torch.Tensor]:
    """Separable data: ``x`` is a noisy one-hot of the label, shifted by the batch id."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{split}/{batch_id}".encode()))
    label = torch.randint(0, len(CLASSES), (rows,), generator=gen)
    x = torch.nn.functional.one_hot(label, WIDTH).float() * 3
    x += 0.3 * torch.randn(rows, WIDTH, generator=gen) + batch_id * 1e-3
    return {"label": label, "x": x}


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    """A batchstash JSON error response."""
    body = {"error": {"code": code, "message": message}}
    return httpx.Response(status, json=body, headers=headers)


class FakeServer:
    """Serves the ``/v1`` API from memory; knobs make it fail in the ways tests need.

    Args:
        splits: batch ids by split.
        fingerprint: the store fingerprint.
        token: required for admin calls (and reads with ``read_token``) when set.
        rows: data points a batch.
    """

    def __init__(
        self,
        splits: dict[str, Iterable[int]] | None = None,
        fingerprint: str = FINGERPRINT,
        token: str | None = None,
        rows: int = 4,
        read_token: bool = False,
    ) -> None:
        self.splits = {k: list(v) for k, v in (splits or {"train": range(8)}).items()}
        self.fingerprint = fingerprint
        self.token = token
        self.read_token = read_token
        self.rows = rows
        self.metadata = make_metadata()
        self.requests: list[httpx.Request] = []
        self.not_primed: dict[tuple[str, int], int] = {}  # 503s left before the batch is ready
        self.retry_after: str | None = "1"
        self.corrupt: set[tuple[str, int]] = set()
        self.connect_errors = 0  # raise httpx.ConnectError this many times
        self.delay = 0.0  # seconds each batch request takes
        self.states = ["idle"]  # successive prime states reported by status
        self.priming = False
        self.primed = True
        self.serve_as: dict[tuple[str, int], tuple[str, int]] = {}  # wrong payload on purpose
        self.in_flight = 0
        self.max_in_flight = 0
        self.down = False  # raise httpx.ConnectError on every request while true
        self.answer: httpx.Response | None = None  # give this response to every request
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        state["requests"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def payload(self, split: str, batch_id: int, names: list[str] | None = None) -> bytes:
        """The wire payload of one batch (only ``names`` when given)."""
        tensors = make_tensors(split, batch_id, self.rows)
        if names is not None:
            tensors = {n: tensors[n] for n in names}
        meta = {
            "batchstash.split": split,
            "batchstash.batch_id": str(batch_id),
            "batchstash.data_point_ids": json.dumps(
                [f"{split}-{batch_id}-{i}" for i in range(self.rows)]
            ),
            "batchstash.fingerprint": self.fingerprint,
        }
        return wire.encode(tensors, meta)

    def batch_requests(self) -> list[tuple[str, int]]:
        """The (split, batch id) of every batch request received, in order."""
        found = []
        for request in self.requests:
            parts = request.url.path.split("/")
            if len(parts) == 6 and parts[4] == "batches":
                found.append((parts[3], int(parts[5])))
            if len(parts) == 5 and parts[4] == "payloads":
                found.extend((parts[3], int(i)) for i in request.url.params["ids"].split(","))
        return found

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.connect_errors > 0:
            self.connect_errors -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.answer is not None:  # a fresh copy: a response is consumed once
            answer = self.answer
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())
        parts = request.url.path.strip("/").split("/")
        admin = parts[:2] == ["v1", "admin"]
        if self.token and (admin or self.read_token):
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return error(401, "unauthorized", "missing or wrong bearer token")
        if admin:
            return self.admin(request, parts[2])
        return self.read(request, parts[1:])

    def status_body(self) -> dict[str, Any]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        failed = {"code": "vectorizer_error", "message": "bad row"} if state == "failed" else None
        return {
            "state": state,
            "splits": {s: {"done": len(ids), "total": len(ids)} for s, ids in self.splits.items()},
            "rate": None,
            "eta_s": None,
            "error": failed,
            "store_bytes": 0,
            "fingerprint": self.fingerprint,
            "stale": False,
            "started_at": None,
            "finished_at": None,
        }

    def admin(self, request: httpx.Request, action: str) -> httpx.Response:
        if action == "status":
            return httpx.Response(200, json=self.status_body())
        if action == "prime" and request.method == "POST":
            self.priming = True
            return httpx.Response(202, json={**self.status_body(), "state": "running"})
        if action == "prime" and request.method == "DELETE":
            self.priming = False
            return httpx.Response(202, json={**self.status_body(), "state": "cancelled"})
        if action == "clear":
            if self.priming:
                return error(409, "conflict", "cannot clear while a prime is running")
            return httpx.Response(200, json={"cleared": True})
        return error(404, "not_found", f"no admin action {action}")

    def read(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        if parts == ["metadata"]:
            body = {"fingerprint": self.fingerprint, "metadata": self.metadata.to_dict()}
            return httpx.Response(200, json=body)
        if parts == ["splits"]:
            counts = {
                s: {"batches": len(ids), "data_points": len(ids) * self.rows, "stored": len(ids)}
                for s, ids in self.splits.items()
            }
            primed = self.primed or self.states[0] == "done"
            body = {"fingerprint": self.fingerprint, "primed": primed, "splits": counts}
            return httpx.Response(200, json=body)
        split = parts[1] if len(parts) > 1 else ""
        if split not in self.splits:
            return error(404, "not_found", f"unknown split {split!r}")
        if len(parts) == 3 and parts[2] == "payloads":
            return self.payloads(request, split)
        if len(parts) == 3:
            ids = self.splits[split]
            body = {"split": split, "fingerprint": self.fingerprint, "batch_ids": ids}
            return httpx.Response(200, json=body)
        return self.batch(request, split, int(parts[3]))

    def payloads(self, request: httpx.Request, split: str) -> httpx.Response:
        """Several batches as length-prefixed frames; the first failing batch fails them all."""
        frames = []
        for batch_id in (int(i) for i in request.url.params["ids"].split(",")):
            response = self.batch(request, split, batch_id)
            if response.status_code != 200:
                return response
            frames += [frame_prefix(len(response.content)), response.content]
        headers = {"X-Batchstash-Fingerprint": self.fingerprint}
        return httpx.Response(200, content=b"".join(frames), headers=headers)

    def batch(self, request: httpx.Request, split: str, batch_id: int) -> httpx.Response:
        if batch_id not in self.splits[split]:
            return error(404, "not_found", f"unknown batch {split}/{batch_id}")
        key = (split, batch_id)
        if self.not_primed.get(key, 0) > 0:
            self.not_primed[key] -= 1
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return error(503, "not_primed", f"batch {split}/{batch_id} is not encoded", **headers)
        raw = request.url.params.get("attributes")
        names = None if raw is None else raw.split(",")
        if names is not None and not set(names) <= {"x", "label"}:
            return error(400, "invalid_request", f"unknown attributes {raw!r}")
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            body = bytearray(self.payload(*self.serve_as.get(key, key), names))
        finally:
            with self._lock:
                self.in_flight -= 1
        if key in self.corrupt:
            body[-1] ^= 0xFF
        headers = {"ETag": f'"{batch_id}"', "X-Batchstash-Fingerprint": self.fingerprint}
        return httpx.Response(200, content=bytes(body), headers=headers)


class FakeClock:
    """A monotonic clock that only moves when the client sleeps (thread-safe).

    Attributes:
        now: the clock's time; a test may move it.
        sleeps: every wait asked for, in order.
        on_sleep: also called with each wait (e.g. to bring a server back, or to really sleep).
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def policy(self, base: RetryPolicy | None = None) -> RetryPolicy:
        """``base`` on this clock, without jitter (its delays are exact)."""
        return replace(base or RetryPolicy(), clock=self.time, sleep=self.sleep, rand=lambda: 0.5)


def _timed(kwargs: dict[str, Any]) -> FakeClock:
    clock = FakeClock()
    kwargs["retry"] = clock.policy(kwargs.get("retry"))
    return clock


def make_client(server: FakeServer, **kwargs: Any) -> BatchClient:
    """A client of ``server`` on a :class:`FakeClock`: it records its waits instead of sleeping.

    The clock is ``client.clock`` and its waits ``client.sleeps``.
    """
    clock = _timed(kwargs)
    client = BatchClient(URL, transport=httpx.MockTransport(server), **kwargs)
    client.clock = clock  # type: ignore[attr-defined]
    client.sleeps = clock.sleeps  # type: ignore[attr-defined]
    return client


class Cluster:
    """Several fake servers behind one ``httpx.MockTransport``, picked by the request's host.

    Args:
        servers: the fake server of each base URL (``http://a.test``...).
    """

    def __init__(self, servers: dict[str, FakeServer]) -> None:
        self.servers = servers

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.servers[f"{request.url.scheme}://{request.url.host}"](request)


def make_cluster(
    count: int = 2, splits: dict[str, Iterable[int]] | None = None, **kwargs: Any
) -> tuple[BatchClient, list[FakeServer]]:
    """A client of ``count`` fake replicas of one store: ``http://a.test``, ``http://b.test``...

    It runs on a :class:`FakeClock`, as :func:`make_client`; ``kwargs`` go to the client.
    """
    urls = [f"http://{chr(ord('a') + i)}.test" for i in range(count)]
    servers = [FakeServer(splits) for _ in urls]
    clock = _timed(kwargs)
    client = BatchClient(
        urls,
        transport=httpx.MockTransport(Cluster(dict(zip(urls, servers, strict=True)))),
        **kwargs,
    )
    client.clock = clock  # type: ignore[attr-defined]
    client.sleeps = clock.sleeps  # type: ignore[attr-defined]
    return client, servers


class SocketServer:
    """A fake server on a real loopback socket (keep-alive HTTP/1.1), killable like a process.

    Args:
        fake: answers each request.
    """

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._connections.add(self.connection)

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = httpx.Request(
                    self.command,
                    f"http://{self.headers['Host']}{self.path}",
                    headers=dict(self.headers.items()),
                    content=body,
                )
                response = outer.fake(request)
                try:  # as encoded: a Content-Encoding the fake chose is kept
                    content = b"".join(response.iter_raw())
                except httpx.StreamConsumed:  # read already (a plain body)
                    content = response.content
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in {"content-length", "transfer-encoding"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = handle_one  # noqa: N815

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                # a client that hangs up mid-answer (a closed iterator) is no test failure
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # type: ignore[arg-type]

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def kill(self) -> None:
        """Stop listening and reset every open connection, as a killed process would."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
