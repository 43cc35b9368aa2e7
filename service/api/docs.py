"""``/docs``: Swagger UI from assets the server serves itself, so it renders offline (no CDN).

FastAPI's recipe for self-hosted docs assets: the app is built with ``docs_url=None``, the
Swagger UI files are mounted as static files, and ``/docs`` is FastAPI's own page
(``get_swagger_ui_html``) pointing at them. The files come from the ``fastapi-offline`` package,
which ships Swagger UI 5 (5.32 in 1.7.7; OpenAPI 3.1, what FastAPI writes, needs 5 or later);
only its files are used, not its ``FastAPIOffline`` app factory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "ASSETS_URL", "DOCS_URL", "assets_dir", "install_docs"]

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
ASSETS = {"js": "swagger-ui-bundle.js", "css": "swagger-ui.css", "favicon": "favicon.png"}
"""The asset files the page loads, by role."""


def assets_dir() -> Path:
    """The directory of the Swagger UI files (in the installed ``fastapi_offline`` package)."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at :data:`DOCS_URL`, its assets under :data:`ASSETS_URL`."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        assets = {role: f"{root}{ASSETS_URL}/{name}" for role, name in ASSETS.items()}
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=assets["js"],
            swagger_css_url=assets["css"],
            swagger_favicon_url=assets["favicon"],
        )
