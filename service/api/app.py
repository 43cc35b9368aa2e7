"""The application factory: ``create_app(settings)`` builds the stash and wires the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from batchstash.client import ConflictError
from batchstash.service.config import Settings
from batchstash.service.prime.job import PrimeJob
from batchstash.service.stash import BatchStash
from batchstash.service.store.backend import open_backend
from batchstash.service.store.reader import StoreReader

from .errors import install_error_handlers
from .metrics import Metrics, RequestMetrics
from .routes import admin, batches, health
from .state import ServerState, build_stash, object_cache

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, stash: BatchStash | None = None) -> FastAPI:
    """Build the FastAPI app serving the store at ``settings.data_dir``.

    With role ``all`` the dataset factory builds the stash (or ``stash`` is given, in tests),
    which primes the store and describes it on start if it has no plan yet; with role ``serve``
    no dataset code is imported: every read comes from the store alone.

    Args:
        settings: the server settings.
        stash: a ready stash (tests); by default the dataset factory builds one in ``data_dir``.

    Raises:
        StoreError: the store cannot be used (a file where a directory should be, unwritable).
    """
    if settings.role == "serve":
        stash = None
        backend = open_backend(settings.data_dir)
        expect, default = None, None
    else:
        stash = stash or build_stash(settings)
        backend = stash.backend
        expect, default = stash.config_hash, stash.decoded_attributes
    backend.check()
    reader = StoreReader(
        backend, expect, default, settings.records_refresh_s, cache=object_cache(settings, backend)
    )
    if stash is not None:
        stash.reader = reader  # in-process loads share the server's record cache
        try:
            stash.describe()
        except ConflictError:
            pass  # a job elsewhere holds the store's lease: it writes the plan
    metrics = Metrics()
    job = PrimeJob(backend, reader, stash, metrics.observe_job)
    state = ServerState(settings, reader, job, metrics, settings.admin_token(), stash)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_summary(state)
        if settings.prime_on_start:
            state.job.start()
        yield
        if state.job.local and state.job.cancel():
            logger.info("shutting down: cancelling the running prime")
            state.job.wait(timeout=30)

    # with read_requires_token the OpenAPI document and /docs would be the only open reads
    docs = settings.docs and not settings.read_requires_token
    app = FastAPI(
        title="batchstash",
        version="1",
        summary="Pre-encoded PyTorch batches over HTTP",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.batchstash = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def log_summary(state: ServerState) -> None:
    """One start-up line: what this server serves, from where, and whether it is ready."""
    settings, reader = state.settings, state.reader
    stash = state.stash
    logger.info(
        "batchstash %s: store %s, role %s, dataset %s, fingerprint %s, %s, token %s%s",
        settings.host + ":" + str(settings.port),
        reader.backend.url,
        settings.role,
        settings.dataset if stash is not None else "(none: serving the store alone)",
        (reader.fingerprint or "none yet")[:12],
        "primed" if reader.is_primed else (reader.problem() or "not primed yet"),
        "on" if state.token else "off (admin endpoints are open)",
        f", priming with {settings.executor} x{settings.workers}" if stash is not None else "",
    )
