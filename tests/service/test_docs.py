"""``/docs``: Swagger UI from the server's own assets (no CDN), off with read_requires_token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from batchstash.service.api import create_app
from batchstash.service.api.docs import ASSETS, ASSETS_URL, assets_dir
from batchstash.service.config import build_settings

LINKS = re.compile(r"""(?:href|src)="([^"]*)"|url: '([^']*)'""")


def docs_client(tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(build_settings(data_dir=tmp_path / "data", workers=0, **settings)))


def test_docs_load_only_local_assets_that_are_served(tmp_path: Path) -> None:
    with docs_client(tmp_path) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        links = [a or b for a, b in LINKS.findall(page.text)]
        assert sorted(links) == sorted(
            [f"{ASSETS_URL}/{name}" for name in ASSETS.values()] + ["/openapi.json"]
        )
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, no fonts
        types = {"js": "text/javascript", "css": "text/css", "favicon": "image/png"}
        for role, name in ASSETS.items():
            asset = client.get(f"{ASSETS_URL}/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(types[role]), asset.headers
            assert asset.content == (assets_dir() / name).read_bytes()
        bundle = client.get(f"{ASSETS_URL}/{ASSETS['js']}").text
        assert "SwaggerUIBundle" in bundle
        assert ".swagger-ui" in client.get(f"{ASSETS_URL}/{ASSETS['css']}").text
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        missing = client.get(f"{ASSETS_URL}/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_shipped_swagger_ui_renders_openapi_3_1() -> None:
    # FastAPI writes OpenAPI 3.1, which needs Swagger UI 5 or later (4 shows an error instead)
    bundle = (assets_dir() / ASSETS["js"]).read_text(encoding="utf-8")
    found = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert found is not None, "the bundle names no Swagger UI version"
    assert tuple(int(p) for p in found.groups()) >= (5, 0, 0)


@pytest.mark.parametrize("settings", [{"docs": False}, {"token": "t", "read_requires_token": True}])
def test_docs_and_their_assets_are_off_when_docs_are(tmp_path: Path, settings: dict) -> None:
    with docs_client(tmp_path, **settings) as client:
        for path in ("/docs", "/openapi.json", f"{ASSETS_URL}/{ASSETS['js']}"):
            assert client.get(path).status_code == 404, path
