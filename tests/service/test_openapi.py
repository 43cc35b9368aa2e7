"""The OpenAPI document says what the server does in its configuration: token, role, inputs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from batchstash.service.api import create_app
from batchstash.service.api.reads import MAX_IDS, parse_ids
from batchstash.service.config import build_settings

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {("post", "/v1/admin/prime"), ("delete", "/v1/admin/prime")}
ADMIN |= {("get", "/v1/admin/status"), ("post", "/v1/admin/clear")}


def app_client(tmp_path: Path, **settings: object) -> TestClient:
    options = {"workers": 0} if settings.get("role") != "serve" else {}
    return TestClient(create_app(build_settings(data_dir=tmp_path / "data", **options, **settings)))


def operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def query_schema(doc: dict, path: str, name: str) -> dict:
    (parameter,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
    schema = parameter["schema"]
    return next(s for s in schema.get("anyOf", [schema]) if s.get("type") == "string")


def test_without_a_token_nothing_asks_for_one(tmp_path: Path) -> None:
    with app_client(tmp_path) as client:
        doc = client.get("/openapi.json").json()
        assert "securitySchemes" not in doc.get("components", {})
        for method, path, op in operations(doc):
            assert "security" not in op, (method, path)
            assert "401" not in op["responses"], (method, path)
            assert all(
                p["in"] != "header" or p["name"] != "Authorization"
                for p in op.get("parameters", [])
            ), (method, path)
        # and the server indeed takes every one of them without a token
        assert client.get("/v1/admin/status").status_code == 200
        assert client.get("/v1/metadata").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("role", ["all", "serve"])
def test_with_a_token_the_admin_operations_ask_for_it_and_only_they(
    tmp_path: Path, role: str
) -> None:
    if role == "serve":  # a replica serves a store described elsewhere
        with app_client(tmp_path):
            pass
    with app_client(tmp_path, token=TOKEN, role=role) as client:
        doc = client.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"] == {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The server's token (BATCHSTASH_TOKEN)",
            }
        }
        guarded = {(m, p) for m, p, op in operations(doc) if "security" in op}
        assert guarded == ADMIN
        for method, path, op in operations(doc):
            if (method, path) in ADMIN:
                assert op["security"] == [{"bearer": []}]
                assert op["responses"]["401"]["description"].startswith("Missing or wrong")
            else:
                assert "401" not in op["responses"], (method, path)
        assert client.get("/v1/admin/status").status_code == 401
        assert client.get("/v1/admin/status", headers=AUTH).status_code == 200
        assert client.get("/v1/metadata").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("ids", "accepted"),
    [
        ("0", True),
        ("3,0,5", True),
        (" 1 , 2", True),
        (",".join(["0"] * MAX_IDS), True),
        ("", False),
        ("x", False),
        ("0,", False),
        ("-1", False),
        ("0.5", False),
        (",".join(["0"] * (MAX_IDS + 1)), False),
    ],
)
def test_the_ids_pattern_is_what_the_server_parses(
    tmp_path: Path, ids: str, accepted: bool
) -> None:
    with app_client(tmp_path) as client:
        doc = client.get("/openapi.json").json()
        pattern = query_schema(doc, "/v1/splits/{split}/payloads", "ids")["pattern"]
        assert bool(re.search(pattern, ids)) is accepted
        try:
            parse_ids(ids)
            parsed = True
        except Exception:
            parsed = False
        assert parsed is accepted
        status = client.get("/v1/splits/train/payloads", params={"ids": ids}).status_code
        assert (status != 400) is accepted  # 503: planned, not encoded yet


@pytest.mark.parametrize(
    ("attributes", "accepted"),
    [
        ("label", True),
        ("flower_dims,label", True),
        (" label , label", True),
        ("", False),
        ("nope", False),
        ("label,", False),
        ("label;flower_dims", False),
    ],
)
def test_the_attributes_pattern_names_what_the_store_serves(
    tmp_path: Path, attributes: str, accepted: bool
) -> None:
    with app_client(tmp_path) as client:
        doc = client.get("/openapi.json").json()
        for path in ("/v1/splits/{split}/payloads", "/v1/splits/{split}/batches/{batch_id}"):
            pattern = query_schema(doc, path, "attributes")["pattern"]
            assert bool(re.search(pattern, attributes)) is accepted, path
        status = client.get(
            "/v1/splits/train/batches/0", params={"attributes": attributes}
        ).status_code
        assert (status != 400) is accepted  # 503: planned, not encoded yet


def test_a_replica_of_an_undescribed_store_takes_any_attribute_name(tmp_path: Path) -> None:
    with app_client(tmp_path, role="serve") as client:
        doc = client.get("/openapi.json").json()
        pattern = query_schema(doc, "/v1/splits/{split}/payloads", "attributes")["pattern"]
        assert re.search(pattern, "anything_at_all,x") and not re.search(pattern, "9x")


def test_readyz_documents_its_503(tmp_path: Path) -> None:
    with app_client(tmp_path, role="serve") as client:
        doc = client.get("/openapi.json").json()
        assert client.get("/readyz").status_code == 503
        assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
