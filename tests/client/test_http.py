"""BatchClient on httpx.MockTransport: decoding, query and auth, error mapping, retries."""

from __future__ import annotations

import httpx
import pytest
import torch

import batchstash.client as bc
from batchstash.client import Batch, BatchClient, RetryPolicy

from .fakeserver import FINGERPRINT, URL, FakeServer, error, make_client, make_tensors


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"train": range(4), "test": [10, 11]})


@pytest.fixture
def client(server: FakeServer) -> BatchClient:
    return make_client(server, retries=3, backoff=0.1)


def test_metadata_is_decoded_and_cached(server: FakeServer, client: BatchClient) -> None:
    meta = client.metadata()
    assert meta == server.metadata
    assert meta.label_classes == ("a", "b", "c")
    assert client.metadata() is meta
    assert [r.url.path for r in server.requests] == ["/v1/metadata"]
    assert client.fingerprint() == FINGERPRINT
    assert len(server.requests) == 2  # the fingerprint is never cached


def test_splits_and_batch_ids(client: BatchClient) -> None:
    splits = client.splits()
    assert splits["primed"] is True
    assert splits["splits"]["test"] == {"batches": 2, "data_points": 8, "stored": 2}
    assert client.batch_ids("test") == [10, 11]
    assert client.split_batch_ids("train") == (FINGERPRINT, [0, 1, 2, 3])


def test_batch_is_decoded_with_metadata(server: FakeServer, client: BatchClient) -> None:
    batch = client.batch("test", 11)
    assert isinstance(batch, Batch)
    assert (batch.id, batch.split_name, batch.state) == (11, "test", "d")
    assert batch.data_point_ids == tuple(f"test-11-{i}" for i in range(4))
    expected = make_tensors("test", 11)
    assert sorted(batch.attributes) == ["label", "x"]
    assert torch.equal(batch["x"], expected["x"]) and torch.equal(batch["label"], expected["label"])
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (4, 3)
    assert batch.metadata == server.metadata
    assert len(batch.get_label_classes()) == 4
    request = server.requests[0]
    assert request.url.path == "/v1/splits/test/batches/11"
    assert "attributes" not in request.url.params


def test_batch_tensors_are_writable(client: BatchClient) -> None:
    batch = client.batch("train", 0)
    batch["x"].add_(1)  # decoded from a bytearray: a read-only buffer would refuse
    assert torch.allclose(batch["x"], make_tensors("train", 0)["x"] + 1)


def test_attributes_query_param(server: FakeServer, client: BatchClient) -> None:
    batch = client.batch("train", 2, attributes={"x"})
    assert list(batch.attributes) == ["x"]
    client.batch("train", 2, attributes=["x", "label", "x"])
    queries = [r.url.params.get("attributes") for r in server.requests if "/batches/" in r.url.path]
    assert queries == ["x", "label,x"]
    with pytest.raises(bc.InvalidRequestError, match="unknown attributes"):
        client.batch("train", 2, attributes=["nope"])


def test_batch_device_copy(client: BatchClient) -> None:
    batch = client.batch("train", 1, device="cpu")
    assert batch.state == "t"
    assert batch["x"].device == torch.device("cpu")


@pytest.mark.cuda
def test_batch_device_copy_cuda(client: BatchClient) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    batch = client.batch("train", 1, device="cuda")
    assert batch["x"].is_cuda
    assert torch.equal(batch["x"].cpu(), make_tensors("train", 1)["x"])


def test_bearer_token_header() -> None:
    server = FakeServer(token="s3cret", read_token=True)
    with make_client(server, token="s3cret") as client:
        assert client.batch("train", 0).id == 0
        assert client.status()["state"] == "idle"
    assert {r.headers["Authorization"] for r in server.requests} == {"Bearer s3cret"}
    with make_client(server, retries=3) as anonymous:
        with pytest.raises(bc.AuthError, match="bearer token"):
            anonymous.prime()
    assert "Authorization" not in server.requests[-1].headers
    assert len(server.requests) == 4  # batch, metadata, status, prime: 401 is never retried


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (error(404, "not_found", "unknown batch"), bc.NotFoundError),
        (error(400, "invalid_request", "bad id"), bc.InvalidRequestError),
        (error(401, "unauthorized", "no token"), bc.AuthError),
        (error(409, "conflict", "priming"), bc.ConflictError),
        (error(409, "store_stale", "stale"), bc.StaleStoreError),
        (error(409, "plan_mismatch", "plan"), bc.PlanError),
        (error(418, "something_new", "teapot"), bc.BatchstashError),
        (httpx.Response(404, text="<html>nope</html>"), bc.NotFoundError),
        (httpx.Response(403, text="forbidden"), bc.AuthError),
    ],
)
def test_error_mapping_without_retry(response: httpx.Response, cls: type) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response

    client = BatchClient(URL, transport=httpx.MockTransport(handler), retries=3)
    with pytest.raises(cls) as info:
        client.splits()
    assert type(info.value) is cls
    assert info.value.message.startswith("GET /v1/splits: ")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (error(500, "store_corrupt", "bad file"), bc.CorruptStoreError),
        (error(503, "not_primed", "later", **{"Retry-After": "2"}), bc.NotPrimedError),
        (error(409, "conflict", "busy", **{"Retry-After": "1"}), bc.ConflictError),
        (httpx.Response(502, text="bad gateway"), bc.TransportError),
        (httpx.Response(503, text="unavailable"), bc.TransportError),
    ],
)
def test_transient_errors_are_retried_then_raised(response: httpx.Response, cls: type) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response

    sleeps: list[float] = []
    policy = RetryPolicy(sleep=sleeps.append)
    client = BatchClient(URL, transport=httpx.MockTransport(handler), retries=2, retry=policy)
    with pytest.raises(cls):
        client.splits()
    assert len(calls) == 3 and len(sleeps) == 2


def test_retry_on_not_primed_honours_retry_after(server: FakeServer, client: BatchClient) -> None:
    server.not_primed[("train", 1)] = 2
    server.retry_after = "3"
    batch = client.batch("train", 1)
    assert batch.id == 1
    assert server.batch_requests() == [("train", 1)] * 3
    assert client.sleeps == [3.0, 3.0]


def test_retry_after_is_capped(server: FakeServer) -> None:
    client = make_client(server, retries=2, max_delay=5.0)
    server.not_primed[("train", 0)] = 1
    server.retry_after = "120"
    assert client.batch("train", 0).id == 0
    assert client.sleeps == [5.0]


def test_retry_after_as_http_date(server: FakeServer, client: BatchClient) -> None:
    server.not_primed[("train", 0)] = 1
    server.retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: retry at once
    assert client.batch("train", 0).id == 0
    assert client.sleeps == [0.0]


def test_backoff_is_exponential_with_jitter(server: FakeServer, client: BatchClient) -> None:
    server.not_primed[("train", 0)] = 3
    server.retry_after = None
    assert client.batch("train", 0).id == 0
    assert len(client.sleeps) == 3
    for attempt, delay in enumerate(client.sleeps):
        base = 0.1 * 2**attempt
        assert 0.5 * base <= delay <= 1.5 * base


def test_retry_exhaustion_raises_mapped_error(server: FakeServer, client: BatchClient) -> None:
    server.not_primed[("train", 0)] = 100
    with pytest.raises(bc.NotPrimedError, match="not encoded"):
        client.batch("train", 0)
    assert len(server.batch_requests()) == 4  # 1 + retries
    assert len(client.sleeps) == 3


def test_connection_errors_are_retried(server: FakeServer, client: BatchClient) -> None:
    server.connect_errors = 2
    assert client.batch_ids("train") == [0, 1, 2, 3]
    assert len(server.requests) == 3


def test_connection_errors_exhausted_raise_transport_error(server: FakeServer) -> None:
    server.connect_errors = 100
    client = make_client(server, retries=2)
    with pytest.raises(bc.TransportError, match="after 3 attempts") as info:
        client.metadata()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(server.requests) == 3


def test_no_retries_when_zero(server: FakeServer) -> None:
    client = make_client(server, retries=0)
    server.not_primed[("train", 0)] = 1
    with pytest.raises(bc.NotPrimedError):
        client.batch("train", 0)
    assert client.sleeps == []


def test_not_found_is_not_retried(server: FakeServer, client: BatchClient) -> None:
    with pytest.raises(bc.NotFoundError, match="unknown batch train/9"):
        client.batch("train", 9)
    with pytest.raises(bc.NotFoundError, match="unknown split"):
        client.batch_ids("nope")
    assert len(server.requests) == 2


def test_checksum_failure(server: FakeServer, client: BatchClient) -> None:
    server.corrupt.add(("train", 3))
    with pytest.raises(bc.ChecksumError, match="fails its checksum"):
        client.batch("train", 3)
    assert len(server.batch_requests()) == 1


def test_payload_of_another_batch_is_refused(server: FakeServer, client: BatchClient) -> None:
    server.serve_as[("train", 0)] = ("train", 1)
    with pytest.raises(bc.PayloadError, match="payload is batch train/1"):
        client.batch("train", 0)


def test_garbage_body_is_a_payload_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"\x00" * 3))
    with pytest.raises(bc.PayloadError):
        BatchClient(URL, transport=transport).batch("train", 0)


def test_batch_from_another_store(server: FakeServer, client: BatchClient) -> None:
    with pytest.raises(bc.PlanError, match="store changed"):
        client.batch("train", 0, fingerprint="0" * 32)


def test_metadata_follows_the_payload_fingerprint(server: FakeServer, client: BatchClient) -> None:
    client.metadata()
    server.fingerprint = "e" * 32
    client.batch("train", 0)
    assert [r.url.path for r in server.requests].count("/v1/metadata") == 2


def test_admin_calls(server: FakeServer, client: BatchClient) -> None:
    assert client.prime(workers=2, splits=["train"])["state"] == "running"
    prime = server.requests[-1]
    assert (prime.method, prime.url.path) == ("POST", "/v1/admin/prime")
    assert prime.read() == b'{"workers":2,"splits":["train"]}'
    with pytest.raises(bc.ConflictError, match="while a prime is running"):
        client.clear()
    assert client.cancel()["state"] == "cancelled"
    assert (server.requests[-1].method, server.requests[-1].url.path) == (
        "DELETE",
        "/v1/admin/prime",
    )
    assert client.clear() == {"cleared": True}
    status = client.status()
    assert set(status) >= {"state", "splits", "rate", "eta_s", "error", "store_bytes"}


def test_wait_for_prime(server: FakeServer, client: BatchClient) -> None:
    server.states = ["running", "running", "done"]
    seen: list[str] = []
    final = client.wait_for_prime(
        timeout=None, poll=0.5, on_status=lambda s: seen.append(s["state"])
    )
    assert final["state"] == "done"
    assert seen == ["running", "running", "done"]
    assert client.sleeps == [0.5, 0.5]


def test_wait_for_prime_failure_and_timeout(server: FakeServer, client: BatchClient) -> None:
    server.states = ["failed"]
    with pytest.raises(bc.VectorizerError, match="prime failed: bad row"):
        client.wait_for_prime()
    server.states = ["cancelled"]
    with pytest.raises(bc.NotPrimedError, match="prime cancelled"):
        client.wait_for_prime()
    server.states = ["running"]
    with pytest.raises(bc.NotPrimedError, match="still 'running' after 0"):
        client.wait_for_prime(timeout=0)


def test_context_manager_closes(server: FakeServer) -> None:
    with make_client(server) as client:
        client.splits()
    assert client.closed


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="negative"):
        BatchClient(URL, retries=-1)
