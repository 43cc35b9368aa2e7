"""Run the server under uvicorn (httptools + uvloop when installed, as ``uvicorn[standard]``)."""

from __future__ import annotations

import logging

import uvicorn

from .api import create_app
from .config import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    """Build the app from ``settings`` and serve it until interrupted."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
