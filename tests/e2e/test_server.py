"""End to end against a real uvicorn server process: serving, priming, clearing, errors, auth."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch

from batchstash.client import (
    AuthError,
    BatchClient,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    NotPrimedError,
    wire,
)
from batchstash.service import BatchStash

from .conftest import TOKEN, Server

pytestmark = pytest.mark.slow

IRIS = "batchstash.service.examples:iris"
SLOW = "tests.e2e.factories:slow_iris"


def wait_state(client: BatchClient, predicate: Callable[[dict], bool], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status()
        if predicate(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"status never matched: {status}")


def test_every_served_batch_equals_the_engine_load(primed_iris: Server) -> None:
    engine = BatchStash.from_factory(IRIS, path=str(primed_iris.data_dir))
    with BatchClient(primed_iris.url) as client:
        splits = client.splits()
        assert splits["primed"] is True
        assert splits["fingerprint"] == engine.config_hash
        total = 0
        for split, counts in splits["splits"].items():
            ids = client.batch_ids(split)
            assert ids == list(range(counts["batches"])) and counts["stored"] == len(ids)
            for batch_id in ids:
                served, local = client.batch(split, batch_id), engine.load(split, batch_id)
                assert served.state_name == "decoded"
                assert served.split_name == split and served.id == batch_id
                assert served.data_point_ids == local.data_point_ids
                assert set(served.attributes) == {"label", "flower_dims"}
                for name, tensor in local.attributes.items():
                    assert torch.equal(served[name], tensor), (split, batch_id, name)
                total += len(served)
        assert total == 150
        assert served.get_label_classes() == local.get_label_classes()
        many = client.batches("train", [5, 0, 3], attributes=["label"])
        assert [b.id for b in many] == [5, 0, 3]
        for batch in many:
            assert list(batch.attributes) == ["label"]
            assert torch.equal(batch["label"], engine.load("train", batch.id)["label"])


def test_plain_http_payload_is_standard_safetensors(primed_iris: Server) -> None:
    response = httpx.get(f"{primed_iris.url}/v1/splits/test/batches/0?attributes=flower_dims")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    tensors = safetensors.torch.load(response.content)
    assert list(tensors) == ["flower_dims"] and tensors["flower_dims"].shape == (20, 4)
    ours = wire.decode(bytearray(response.content))
    assert ours.split == "test" and ours.batch_id == 0 and len(ours.data_point_ids) == 20
    assert torch.equal(ours.tensors["flower_dims"], tensors["flower_dims"])
    etag = response.headers["etag"]
    again = httpx.get(
        f"{primed_iris.url}/v1/splits/test/batches/0?attributes=flower_dims",
        headers={"If-None-Match": etag},
    )
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/splits/nope/batches", 404, "not_found"),
        ("/v1/splits/nope/batches/0", 404, "not_found"),
        ("/v1/splits/train/batches/999", 404, "not_found"),
        ("/v1/splits/train/batches/abc", 422, "validation_error"),
        ("/v1/splits/train/batches/-1", 422, "validation_error"),
        ("/v1/splits/train/batches/0?attributes=nope", 400, "invalid_request"),
        ("/v1/splits/train/batches/0?attributes=label;rm", 400, "invalid_request"),
        ("/v1/splits/train/batches/0?attributes=", 400, "invalid_request"),
        ("/v1/splits/..%2F..%2Fetc/batches/0", 404, "not_found"),
        ("/v1/splits/%2e%2e/batches/0", 404, "not_found"),
        ("/v1/nothing", 404, "not_found"),
    ],
)
def test_errors_are_json_with_the_right_status(
    primed_iris: Server, path: str, status: int, code: str
) -> None:
    response = httpx.get(primed_iris.url + path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_errors_map_back_to_client_exceptions(primed_iris: Server) -> None:
    with BatchClient(primed_iris.url, retries=0) as client:
        with pytest.raises(NotFoundError, match="unknown split"):
            client.batch("nope", 0)
        with pytest.raises(InvalidRequestError, match="unknown attributes"):
            client.batch("train", 0, attributes=["nope"])
        with pytest.raises(AuthError):
            client.clear()
    with BatchClient(primed_iris.url, token="wrong", retries=0) as client:
        with pytest.raises(AuthError):
            client.prime()


def test_admin_needs_the_token_and_reads_do_not(primed_iris: Server) -> None:
    for method, path in [
        ("POST", "/v1/admin/prime"),
        ("GET", "/v1/admin/status"),
        ("POST", "/v1/admin/clear"),
        ("DELETE", "/v1/admin/prime"),
    ]:
        for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}]:
            response = httpx.request(method, primed_iris.url + path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{primed_iris.url}/v1/metadata").status_code == 200
    status = httpx.get(f"{primed_iris.url}/v1/admin/status", headers=primed_iris.admin()).json()
    assert status["state"] == "done" and status["store_bytes"] > 0
    assert status["splits"]["train"] == {"done": 6, "total": 6}
    assert status["fingerprint"] and status["stale"] is False


def test_metadata_sizes_a_model(primed_iris: Server) -> None:
    with BatchClient(primed_iris.url) as client:
        meta = client.metadata()
    assert meta.label_classes == ("setosa", "versicolor", "virginica")
    assert meta.fields_by_attribute["flower_dims"].shape == (4,)
    assert meta.fields_by_attribute["label"].dtype == "int64"


def test_reads_require_the_token_when_configured(serve: Callable[..., Server]) -> None:
    server = serve(env={"BATCHSTASH_READ_REQUIRES_TOKEN": "true", "BATCHSTASH_WORKERS": "0"})
    assert httpx.get(f"{server.url}/v1/metadata").status_code == 401
    assert httpx.get(f"{server.url}/v1/metadata", headers=server.admin()).status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_serving_goes_on_while_priming_then_clear_and_cancel(
    serve: Callable[..., Server],
) -> None:
    server = serve(
        "--dataset", SLOW, "--workers", "1", env={"BATCHSTASH_DATASET_OPTIONS": '{"delay": 0.03}'}
    )
    with BatchClient(server.url, token=TOKEN, retries=0) as client:
        with pytest.raises(NotPrimedError):
            client.batch("train", 0)
        response = httpx.get(f"{server.url}/v1/splits/train/batches/0")
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert client.prime()["joined"] is False
        assert client.prime()["joined"] is True  # a second prime joins, never runs twice
        status = wait_state(client, lambda s: sum(e["done"] for e in s["splits"].values()) >= 2)
        assert status["state"] == "running"
        with pytest.raises(ConflictError):
            client.clear()
        stored = [
            (split, i)
            for split in ("dev", "test", "train")
            for i in client.batch_ids(split)
            if list(server.data_dir.glob(f"batches/*/{split}/{i}"))
        ]
        split, batch_id = stored[0]
        assert client.batch(split, batch_id).id == batch_id  # served during the prime
        cancelled = client.cancel()
        assert cancelled["cancelled"] is True
        status = wait_state(client, lambda s: s["state"] != "running")
        assert status["state"] == "cancelled"
        done_before = sum(e["done"] for e in status["splits"].values())
        assert done_before < 9
    with BatchClient(server.url, token=TOKEN, retries=40, backoff=0.1, max_delay=1) as client:
        client.prime()
        # a not-yet-encoded batch is retried (503 + Retry-After) until the resumed prime stores it
        assert len(client.batch("train", 5)) == 105 - 5 * 20
        final = wait_state(client, lambda s: s["state"] != "running")
        assert final["state"] == "done" and final["error"] is None
        assert client.splits()["primed"] is True
        assert client.clear() == {"cleared": True}
        assert client.splits()["splits"]["train"]["stored"] == 0
        assert not (server.data_dir / "batches").exists()
        assert client.status()["store_bytes"] == 0
    assert httpx.get(f"{server.url}/v1/splits/train/batches/0").status_code == 503


def test_a_failing_prime_reports_its_error(serve: Callable[..., Server], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,sepal_length,sepal_width,petal_length,petal_width,species\n0,1,2,3,4,tulip\n"
    )
    server = serve(
        "--dataset",
        "tests.e2e.factories:iris_from_csv",
        "--workers",
        "0",
        env={"BATCHSTASH_DATASET_OPTIONS": f'{{"csv_path": "{bad}"}}'},
    )
    with BatchClient(server.url, token=TOKEN) as client:
        client.prime()
        status = wait_state(client, lambda s: s["state"] != "running")
    assert status["state"] == "failed"
    assert status["error"]["code"] == "vectorizer_error"
    assert "tulip" in status["error"]["message"] and "data point" in status["error"]["message"]
