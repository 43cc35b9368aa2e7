"""The application factory: ``create_app(settings)`` builds the reader and the job, wires routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from batchstash.client import ConflictError
from batchstash.service.config import Settings
from batchstash.service.prime.inputs import PrimeInputs
from batchstash.service.prime.job import PrimeJob
from batchstash.service.store.backend import open_backend
from batchstash.service.store.reader import StoreReader

from .datapath import advertise_data_port
from .docs import install_docs
from .errors import install_error_handlers
from .metrics import Metrics, RequestMetrics
from .openapi import install_openapi
from .routes import admin, batches, health
from .state import ServerState, prime_inputs

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, inputs: PrimeInputs | None = None) -> FastAPI:
    """Build the FastAPI app serving the store at ``settings.data_dir``.

    With role ``all`` the dataset factory builds what the job primes with (or ``inputs`` are
    given, in tests), and the store is described on start if it has no plan yet; with role
    ``serve`` no dataset code is imported: every read comes from the store alone.

    Args:
        settings: the server settings.
        inputs: what the job primes with (tests); by default the dataset factory's, in
            ``data_dir``, with the settings' executor.

    Raises:
        StoreError: the store cannot be used (a file where a directory should be, unwritable).
    """
    if settings.role == "serve":
        inputs = None
        backend = open_backend(settings.data_dir)
        expect, default = None, None
    else:
        inputs = inputs or prime_inputs(settings)
        backend = inputs.backend
        expect, default = inputs.encoder.fingerprint, inputs.decoded_attributes
    backend.check()
    reader = StoreReader.serving(
        backend,
        expect,
        default,
        settings.records_refresh_s,
        cache_dir=settings.cache_dir,
        cache_max_bytes=settings.cache_max_bytes,
    )
    metrics = Metrics()
    job = PrimeJob(reader, inputs, metrics.observe_job)
    try:
        job.describe()
    except ConflictError:
        pass  # a job elsewhere holds the store's lease: it writes the plan
    state = ServerState(settings, reader, job, metrics, settings.admin_token())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_summary(state)
        warn_open_admin(state)
        if settings.prime_on_start:
            state.job.start()
        yield
        if state.job.local and state.job.cancel():
            logger.info("shutting down: cancelling the running prime")
            state.job.wait(timeout=30)
        if state.job.inputs is not None:
            state.job.inputs.executor.close()  # warm priming workers stop with the server

    # with read_requires_token the OpenAPI document and /docs would be the only open reads
    docs = settings.docs and not settings.read_requires_token
    app = FastAPI(
        title="batchstash",
        version="1",
        summary="Pre-encoded PyTorch batches over HTTP",
        lifespan=lifespan,
        docs_url=None,  # install_docs: Swagger UI from local assets, not a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.batchstash = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    if docs:
        install_openapi(app, state, [batches.router, admin.router, health.router])
        install_docs(app)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(advertise_data_port, state=state)
    return app


def log_summary(state: ServerState) -> None:
    """One start-up line: what this server serves, from where, and whether it is ready.

    The same facts are the line's fields (``log_format=json``).
    """
    settings, reader = state.settings, state.reader
    dataset = state.has_dataset
    primed, address = reader.is_primed, f"{settings.host}:{settings.port}"
    read_only = settings.role == "serve"  # its admin endpoints never change the store
    fields: dict[str, Any] = {
        "address": address,
        "data_port": state.data_port,
        "store": reader.backend.url,
        "role": settings.role,
        "dataset": settings.dataset if dataset else None,
        "fingerprint": (reader.fingerprint or "")[:12] or None,
        "primed": primed,
        "problem": None if primed else reader.problem(),
        "token": state.token is not None,
        "executor": settings.executor if dataset else None,
        "workers": settings.workers if dataset else None,
    }
    logger.info(
        "batchstash %s: store %s, role %s, dataset %s, fingerprint %s, %s, token %s%s",
        address + (f" (data {state.data_port})" if state.data_port is not None else ""),
        fields["store"],
        settings.role,
        settings.dataset if dataset else "(none: serving the store alone)",
        fields["fingerprint"] or "none yet",
        "primed" if primed else (fields["problem"] or "not primed yet"),
        "on" if state.token else ("off" if read_only else "off (admin endpoints are open)"),
        f", priming with {settings.executor} x{settings.workers}" if dataset else "",
        extra=fields,
    )


def warn_open_admin(state: ServerState) -> None:
    """Warn, once at start-up, when anyone who reaches the server can change the store.

    That is a server with no token whose admin endpoints prime, cancel and clear: every role
    but ``serve``, which refuses those (its status endpoint only reads) and is not warned about.
    """
    if state.token is not None or state.settings.role == "serve":
        return
    settings = state.settings
    logger.warning(
        "no token is set: anyone who reaches %s:%d can prime, cancel and clear the store "
        "through /v1/admin; set BATCHSTASH_TOKEN or BATCHSTASH_TOKEN_FILE (serve --token) "
        "to require it",
        settings.host,
        settings.port,
        extra={"setting": "BATCHSTASH_TOKEN", "role": settings.role},
    )
