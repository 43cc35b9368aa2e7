"""The FastAPI app in process (TestClient): routes, payload headers, metrics, stale stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from batchstash.client import wire
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.examples import iris

from .factories import stored_object

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = build_settings(data_dir=tmp_path / "data", workers=0, token=TOKEN)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def prime(client: TestClient) -> None:
    assert client.post("/v1/admin/prime", headers=AUTH).status_code == 202
    assert client.app.state.batchstash.job.wait(timeout=60)  # type: ignore[attr-defined]
    assert client.get("/v1/admin/status", headers=AUTH).json()["state"] == "done"


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/v1/metadata",
        "/v1/splits",
        "/v1/splits/{split}/batches",
        "/v1/splits/{split}/batches/{batch_id}",
        "/v1/splits/{split}/payloads",
        "/v1/admin/prime",
        "/v1/admin/status",
        "/v1/admin/clear",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert set(paths["/v1/admin/prime"]) == {"post", "delete"}
    batch = paths["/v1/splits/{split}/batches/{batch_id}"]["get"]
    assert "application/octet-stream" in batch["responses"]["200"]["content"]


def test_status_before_any_prime_counts_stored_batches(client: TestClient) -> None:
    status = client.get("/v1/admin/status", headers=AUTH).json()
    assert status["state"] == "idle" and status["primed"] is False
    assert status["splits"] == {
        "dev": {"done": 0, "total": 1},
        "test": {"done": 0, "total": 2},
        "train": {"done": 0, "total": 6},
    }


def test_payload_metadata_and_headers(client: TestClient) -> None:
    prime(client)
    response = client.get("/v1/splits/train/batches/2", params={"attributes": "label"})
    fingerprint = client.get("/v1/splits").json()["fingerprint"]
    assert response.headers["x-batchstash-fingerprint"] == fingerprint
    payload = wire.decode(bytearray(response.content))
    assert list(payload.tensors) == ["label"] and payload.fingerprint == fingerprint
    assert payload.split == "train" and payload.batch_id == 2
    other = client.get("/v1/splits/train/batches/2")
    assert other.headers["etag"] != response.headers["etag"]  # the attribute subset is in it
    assert set(wire.decode(bytearray(other.content)).tensors) == {"label", "flower_dims"}


def test_metrics_count_served_batches(client: TestClient) -> None:
    prime(client)
    for batch_id in range(3):
        assert client.get(f"/v1/splits/train/batches/{batch_id}").status_code == 200
    text = client.get("/metrics").text
    assert 'batchstash_batches_served_total{split="train"} 3.0' in text
    assert 'batchstash_prime_batches_done{split="train"} 6.0' in text


def test_metrics_cover_requests_errors_the_job_the_store_and_the_process(
    client: TestClient,
) -> None:
    assert client.get("/v1/splits/train/batches/0").status_code == 503
    assert client.get("/v1/splits/nope/batches").status_code == 404
    prime(client)
    for _ in range(2):
        assert client.get("/v1/splits/dev/batches/0").status_code == 200
    text = client.get("/metrics").text
    route = "/v1/splits/{split}/batches/{batch_id}"
    assert f'batchstash_requests_total{{method="GET",route="{route}",status="200"}} 2.0' in text
    assert f'batchstash_requests_total{{method="GET",route="{route}",status="503"}} 1.0' in text
    assert f'batchstash_request_seconds_count{{route="{route}"}} 3.0' in text
    assert 'batchstash_errors_total{code="not_primed"} 1.0' in text
    assert 'batchstash_errors_total{code="not_found"} 1.0' in text
    assert 'batchstash_prime_state{state="done"} 1.0' in text
    assert 'batchstash_prime_state{state="running"} 0.0' in text
    assert "batchstash_store_primed 1.0" in text
    stored = next(line for line in text.splitlines() if line.startswith("batchstash_store_bytes"))
    assert float(stored.split()[-1]) > 0
    assert "process_resident_memory_bytes" in text and "python_gc_objects_collected_total" in text


def test_a_corrupt_stored_file_is_a_500_never_served(client: TestClient, tmp_path: Path) -> None:
    prime(client)
    stored = stored_object(tmp_path / "data", "train", 1, "flower_dims")
    raw = bytearray(stored.read_bytes())
    raw[-3] ^= 0x40
    stored.write_bytes(bytes(raw))
    response = client.get("/v1/splits/train/batches/1")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "store_corrupt"
    assert client.get("/v1/splits/train/batches/1?attributes=label").status_code == 200
    prime(client)  # the resumed prime re-encodes the corrupt file
    assert client.get("/v1/splits/train/batches/1").status_code == 200


def test_a_store_of_another_configuration_is_stale(client: TestClient, tmp_path: Path) -> None:
    prime(client)
    other = iris(path=str(tmp_path / "data"), batch_size=10)
    with TestClient(
        create_app(build_settings(data_dir=tmp_path / "data", token=TOKEN), other.prime_inputs())
    ) as stale:
        assert stale.get("/readyz").status_code == 503
        response = stale.get("/v1/splits/train/batches/0")
        assert response.status_code == 409 and response.json()["error"]["code"] == "store_stale"
        assert stale.post("/v1/admin/prime", headers=AUTH).status_code == 409
        assert stale.get("/v1/admin/status", headers=AUTH).json()["stale"] is True
        assert stale.post("/v1/admin/clear", headers=AUTH).status_code == 200
        assert stale.get("/readyz").status_code == 200
        assert stale.get("/v1/splits/train/batches/0").status_code == 503  # cleared, not mixed
    # the clearing server described the store with its own configuration: stale for the first
    response = client.get("/v1/splits/train/batches/0")
    assert response.status_code == 409 and response.json()["error"]["code"] == "store_stale"


def test_several_batches_in_one_response_as_frames(client: TestClient) -> None:
    assert client.get("/v1/splits/train/payloads", params={"ids": "0"}).status_code == 503
    prime(client)
    response = client.get(
        "/v1/splits/train/payloads", params={"ids": "3,0,5", "attributes": "label"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-batchstash-frames"
    assert int(response.headers["content-length"]) == len(response.content)
    frames = wire.split_frames(bytearray(response.content))
    assert [wire.decode(f).batch_id for f in frames] == [3, 0, 5]
    single = client.get("/v1/splits/train/batches/3", params={"attributes": "label"}).content
    assert bytes(frames[0]) == single
    for params, status in [
        ({"ids": "0,99"}, 404),
        ({"ids": "0,x"}, 400),
        ({"ids": ""}, 400),
        ({"ids": ",".join(["0"] * 1025)}, 400),
        ({"ids": "-1"}, 400),
        ({"ids": "0", "attributes": "nope"}, 400),
    ]:
        bad = client.get("/v1/splits/train/payloads", params=params)
        assert bad.status_code == status, params
        assert bad.json()["error"]["code"] in {"not_found", "invalid_request"}
    assert client.get("/v1/splits/nope/payloads", params={"ids": "0"}).status_code == 404


def test_a_whole_group_file_is_served_byte_for_byte(tmp_path: Path) -> None:
    stash = iris(path=str(tmp_path / "one"), groups=[{"label", "flower_dims"}])
    stash.prime()
    with TestClient(
        create_app(build_settings(data_dir=tmp_path / "one"), stash.prime_inputs())
    ) as one:
        served = one.get("/v1/splits/test/batches/1").content
    stored = stored_object(tmp_path / "one", "test", 1, "flower_dims+label")
    assert served == stored.read_bytes()
    subset = wire.decode(bytearray(b"".join(stash.payload("test", 1, ["label"]))))
    assert list(subset.tensors) == ["label"] and subset.data_point_ids


def test_frames_join_small_chunks_and_pass_big_ones_through() -> None:
    from batchstash.service.api.routes.batches import COALESCE, coalesce

    big = memoryview(bytes(COALESCE))
    chunks: list[memoryview | bytes] = [b"a" * 10, b"b" * 20, big, b"c" * 5]
    out = coalesce(chunks)
    assert b"".join(bytes(c) for c in out) == b"".join(bytes(c) for c in chunks)
    assert len(out) == 3 and out[1] is big  # the mapped file is never copied


def test_the_api_contract_has_no_silent_gaps(client: TestClient, tmp_path: Path) -> None:
    repeated = client.get("/v1/splits/train/payloads?ids=0&ids=1")
    assert (
        repeated.status_code == 400
        and "given more than once" in repeated.json()["error"]["message"]
    )
    options = client.post("/v1/admin/prime", headers=AUTH, json={"splits": ["train"], "workers": 2})
    assert options.status_code == 400
    assert (
        "prime takes no options (got ['splits', 'workers'])" in options.json()["error"]["message"]
    )
    assert client.post("/v1/admin/prime", headers=AUTH, json={}).status_code == 202
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/splits/{split}/batches/{batch_id}"]["get"]["responses"]
    admin = schema["paths"]["/v1/admin/status"]["get"]["responses"]
    # reads are open on this server (a token, no read_requires_token): no 401 but on admin
    assert "401" not in responses
    for code, documented in [
        *[(c, responses) for c in ("400", "404", "409", "503")],
        ("401", admin),
    ]:
        ref = documented[code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody"), code
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    assert "detail" not in json.dumps(responses["404"])


def test_read_requires_token_covers_metrics_and_docs(tmp_path: Path) -> None:
    settings = build_settings(
        data_dir=tmp_path / "data", workers=0, token=TOKEN, read_requires_token=True
    )
    with TestClient(create_app(settings)) as locked:
        assert locked.get("/metrics").status_code == 401
        assert locked.get("/metrics", headers=AUTH).status_code == 200
        assert locked.get("/openapi.json").status_code == 404
        assert locked.get("/docs").status_code == 404
        assert locked.get("/healthz").status_code == 200  # liveness stays open for probes
