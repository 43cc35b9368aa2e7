"""The application factory: ``create_app(settings)`` builds the stash and wires the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from batchstash.service.config import Settings
from batchstash.service.engine import BatchStash
from batchstash.service.prime.job import PrimeJob

from .errors import install_error_handlers
from .metrics import Metrics
from .routes import admin, batches, health
from .state import ServerState, build_stash

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, stash: BatchStash | None = None) -> FastAPI:
    """Build the FastAPI app serving ``stash`` (built from ``settings.dataset`` when not given).

    Args:
        settings: the server settings.
        stash: a ready stash (tests); by default the dataset factory builds one in ``data_dir``.
    """
    stash = stash or build_stash(settings)
    metrics = Metrics()
    state = ServerState(
        settings, stash, PrimeJob(stash, metrics.observe_job), metrics, settings.admin_token()
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.prime_on_start:
            state.job.start()
        yield
        if state.job.cancel():
            logger.info("shutting down: cancelling the running prime")
            state.job.wait(timeout=30)

    app = FastAPI(
        title="batchstash",
        version="1",
        summary="Pre-encoded PyTorch batches over HTTP",
        lifespan=lifespan,
    )
    app.state.batchstash = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app
