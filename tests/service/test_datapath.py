"""The data listener: the batch routes on their own port, answered like the API answers them."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from batchstash.client import InvalidRequestError, wire
from batchstash.client.frames import split_frames
from batchstash.service.api import create_app
from batchstash.service.api.datapath import (
    DataListener,
    raise_open_files_limit,
    start_data_listener,
)
from batchstash.service.api.dataroutes import BATCH_ROUTE, PAYLOADS_ROUTE
from batchstash.service.api.reads import DATA_PORT_HEADER
from batchstash.service.config import build_settings

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_api(tmp_path: Path, prime: bool = True, **settings: Any) -> TestClient:
    options = {"data_dir": tmp_path / "data", "workers": 0, "token": TOKEN, **settings}
    api = TestClient(create_app(build_settings(**options)))
    api.__enter__()
    if prime:
        assert api.post("/v1/admin/prime", headers=AUTH).status_code == 202
        assert api.app.state.batchstash.job.wait(timeout=60)  # type: ignore[attr-defined]
    return api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    api = make_api(tmp_path)
    yield api
    api.__exit__(None, None, None)


@pytest.fixture
def data(api: TestClient) -> Iterator[httpx.Client]:
    with DataListener(api.app.state.batchstash, "127.0.0.1", 0) as listener:  # type: ignore[attr-defined]
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as http:
            yield http


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_batches_and_payloads_are_the_apis_bytes_and_headers(
    api: TestClient, data: httpx.Client
) -> None:
    for split, count in (("train", 6), ("dev", 1), ("test", 2)):
        for batch_id in range(count):
            path = f"/v1/splits/{split}/batches/{batch_id}"
            mine, theirs = data.get(path), api.get(path)
            assert mine.status_code == theirs.status_code == 200
            assert mine.content == theirs.content
            for name in ("content-type", "etag", "x-batchstash-fingerprint"):
                assert mine.headers[name] == theirs.headers[name]
    query = {"ids": "5,0,3", "attributes": "label"}
    mine = data.get("/v1/splits/train/payloads", params=query)
    theirs = api.get("/v1/splits/train/payloads", params=query)
    assert mine.content == theirs.content
    assert mine.headers["content-type"] == theirs.headers["content-type"]
    payloads = [wire.decode(bytearray(f)) for f in split_frames(bytearray(mine.content))]
    assert [(p.batch_id, list(p.tensors)) for p in payloads] == [
        (5, ["label"]),
        (0, ["label"]),
        (3, ["label"]),
    ]


def test_not_modified_only_for_the_same_etag(data: httpx.Client) -> None:
    first = data.get("/v1/splits/train/batches/1")
    again = data.get("/v1/splits/train/batches/1", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = data.get("/v1/splits/train/batches/2", headers={"If-None-Match": first.headers["etag"]})
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/splits/nope/batches/0", 404, "not_found"),
        ("/v1/splits/train/batches/99", 404, "not_found"),
        ("/v1/splits/train/batches/x", 422, "validation_error"),
        ("/v1/splits/train/payloads?ids=1,a", 400, "invalid_request"),
        ("/v1/splits/train/payloads", 422, "validation_error"),
        ("/v1/splits/train/payloads?ids=0&ids=1", 400, "invalid_request"),
        ("/v1/splits/train/payloads?ids=0&attributes=no-such!", 400, "invalid_request"),
        ("/v1/splits/train/batches/0?attributes=nope", 400, "invalid_request"),
        ("/v1/admin/status", 404, "not_found"),
    ],
)
def test_errors_are_the_apis_json(
    api: TestClient, data: httpx.Client, path: str, status: int, code: str
) -> None:
    response = data.get(path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if not path.startswith("/v1/admin"):  # the API has admin routes, of course
        assert api.get(path).status_code == status
        assert api.get(path).json()["error"]["code"] == code


def test_other_methods_are_refused(data: httpx.Client) -> None:
    response = data.post("/v1/splits/train/payloads?ids=0")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_health_on_the_data_port(data: httpx.Client) -> None:
    assert data.get("/healthz").json() == {"status": "ok"}


def test_a_batch_not_encoded_yet_says_how_priming_goes(tmp_path: Path) -> None:
    api = make_api(tmp_path, prime=False)
    try:
        with DataListener(api.app.state.batchstash, "127.0.0.1", 0) as listener:  # type: ignore[attr-defined]
            response = httpx.get(f"http://127.0.0.1:{listener.port}/v1/splits/train/batches/0")
    finally:
        api.__exit__(None, None, None)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_primed"
    assert response.headers["retry-after"] == "2"
    assert json.loads(response.headers["x-batchstash-prime"]) == {
        "state": "idle",
        "done": 0,
        "total": 9,
        "role": "all",
    }


def test_reads_need_the_token_when_the_api_needs_it(tmp_path: Path) -> None:
    api = make_api(tmp_path, read_requires_token=True)
    try:
        with DataListener(api.app.state.batchstash, "127.0.0.1", 0) as listener:  # type: ignore[attr-defined]
            url = f"http://127.0.0.1:{listener.port}"
            refused = httpx.get(f"{url}/v1/splits/train/batches/0")
            wrong = httpx.get(
                f"{url}/v1/splits/train/batches/0", headers={"Authorization": "Bearer nope"}
            )
            allowed = httpx.get(f"{url}/v1/splits/train/batches/0", headers=AUTH)
            health = httpx.get(f"{url}/healthz")
    finally:
        api.__exit__(None, None, None)
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == "unauthorized"
    assert allowed.status_code == 200 and health.status_code == 200


def test_requests_are_counted_in_the_apis_metrics(api: TestClient, data: httpx.Client) -> None:
    data.get("/v1/splits/train/payloads", params={"ids": "0,1"})
    data.get("/v1/splits/train/batches/2")
    data.get("/v1/splits/nope/batches/0")
    text = api.get("/metrics").text
    assert f'route="{PAYLOADS_ROUTE}",status="200"' in text
    assert f'route="{BATCH_ROUTE}",status="200"' in text
    assert f'route="{BATCH_ROUTE}",status="404"' in text
    served = [
        line for line in text.splitlines() if line.startswith("batchstash_batches_served_total")
    ]
    assert served == ['batchstash_batches_served_total{split="train"} 3.0']
    assert 'batchstash_errors_total{code="not_found"} 1.0' in text
    assert "batchstash_send_seconds_count 3.0" in text  # every answer's send timed


def test_keep_alive_answers_each_request_on_one_connection(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    with DataListener(state, "127.0.0.1", 0) as listener:
        request = b"GET /v1/splits/train/batches/0 HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply = raw_exchange(listener.port, request * 2 + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/v1/splits/train/payloads?ids=" + ",".join(["1"] * 40000), "", 414),
        ("/healthz", "X-Big: " + "y" * 70000 + "\r\n", 431),
    ],
)
def test_a_head_too_large_gets_a_json_error(
    api: TestClient, target: str, headers: str, status: int
) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    with DataListener(state, "127.0.0.1", 0) as listener:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
        reply = raw_exchange(listener.port, request)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head[:40]
    assert json.loads(body)["error"]["code"] == "invalid_request"


def test_garbage_gets_a_json_400(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    with DataListener(state, "127.0.0.1", 0) as listener:
        reply = raw_exchange(listener.port, b"NOT HTTP AT ALL\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert "malformed HTTP request" in json.loads(body)["error"]["message"]


def test_connections_beyond_the_limit_get_503(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    with DataListener(state, "127.0.0.1", 0, max_connections=1) as listener:
        with socket.create_connection(("127.0.0.1", listener.port)) as held:
            held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in held.recv(4096)  # served and idle: it holds the one slot
            reply = raw_exchange(listener.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 ")
    assert b"too many connections" in reply


def test_close_stops_accepting_and_cuts_idle_connections(api: TestClient) -> None:
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    listener = DataListener(state, "127.0.0.1", 0).start()
    idle = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in idle.recv(4096)
    listener.close()
    assert idle.recv(4096) == b""  # the server hung up
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=5)


def _taken_port() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


def test_the_default_port_taken_costs_the_listener_not_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        api = make_api(tmp_path, prime=False, port=port - 1)
        try:
            with caplog.at_level(logging.WARNING):
                assert start_data_listener(api.app.state.batchstash) is None  # type: ignore[attr-defined]
            assert api.app.state.batchstash.data_port is None  # type: ignore[attr-defined]
            assert DATA_PORT_HEADER.lower() not in api.get("/healthz").headers
        finally:
            api.__exit__(None, None, None)
    assert f"127.0.0.1:{port} is taken" in caplog.text


def test_an_explicit_port_taken_is_an_error(tmp_path: Path) -> None:
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        api = make_api(tmp_path, prime=False, data_port=port)
        try:
            with pytest.raises(InvalidRequestError, match=f"data_port {port}"):
                start_data_listener(api.app.state.batchstash)  # type: ignore[attr-defined]
        finally:
            api.__exit__(None, None, None)


def test_the_api_advertises_the_listener(tmp_path: Path) -> None:
    api = make_api(tmp_path, prime=False, data_port=0, data_advertise_port=9123)
    try:
        listener = start_data_listener(api.app.state.batchstash)  # type: ignore[attr-defined]
        assert listener is not None
        try:
            for path in ("/healthz", "/v1/splits", "/v1/splits/train/batches/0"):
                assert api.get(path).headers[DATA_PORT_HEADER] == "9123"
        finally:
            listener.close()
    finally:
        api.__exit__(None, None, None)


def test_no_listener_when_switched_off(tmp_path: Path) -> None:
    api = make_api(tmp_path, prime=False, data_listener=False)
    try:
        assert start_data_listener(api.app.state.batchstash) is None  # type: ignore[attr-defined]
    finally:
        api.__exit__(None, None, None)


@pytest.mark.parametrize("sendfile", [True, False, "auto"])
def test_verified_files_are_sent_again_identically_and_closed(
    api: TestClient, sendfile: bool | str
) -> None:
    """The first read verifies the bytes; later ones send the file held open, then close it."""
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    # one stored group a batch: each payload is its stored file (several are composed)
    query = {"ids": "0,1,2,3,4,5", "attributes": "flower_dims"}
    expected = api.get("/v1/splits/train/payloads", params=query).content
    with DataListener(state, "127.0.0.1", 0, sendfile=sendfile) as listener:
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as http:
            http.get("/healthz")  # the connection and its thread exist before counting
            before = len(os.listdir("/proc/self/fd"))
            for _ in range(3):
                got = http.get("/v1/splits/train/payloads", params=query)
                assert got.status_code == 200 and got.content == expected
                single = http.get("/v1/splits/train/batches/4")
                assert single.content == api.get("/v1/splits/train/batches/4").content
            assert len(os.listdir("/proc/self/fd")) == before  # no descriptor left open


def test_the_open_files_limit_is_raised_within_the_hard_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        want = 512 if hard == resource.RLIM_INFINITY else min(512, hard)
        assert raise_open_files_limit(want) == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want
        if hard != resource.RLIM_INFINITY:
            with caplog.at_level(logging.WARNING):
                # as far as allowed, then a word when that is still low
                assert raise_open_files_limit(hard + 1, low=hard + 1) == hard
            assert "open-files limit" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_no_descriptor_left_is_a_503_with_retry_after(
    api: TestClient, data: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = api.app.state.batchstash.reader.backend  # type: ignore[attr-defined]

    def no_fds(key: str) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(backend, "open_versioned", no_fds)
    got = data.get("/v1/splits/train/payloads", params={"ids": "0,1"})
    assert got.status_code == 503 and "retry-after" in got.headers
    assert got.json()["error"]["code"] == "store_busy"
    monkeypatch.undo()
    assert data.get("/v1/splits/train/payloads", params={"ids": "0,1"}).status_code == 200
