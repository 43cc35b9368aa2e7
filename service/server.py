"""Run the server under uvicorn (httptools + uvloop when installed), or a one-shot prime job."""

from __future__ import annotations

import logging
import time
from typing import Any

import uvicorn

from .api import create_app
from .api.datapath import start_data_listener
from .api.protocol import http_protocol
from .api.state import prime_inputs
from .config import Settings
from .logs import configure_logging, log_config
from .prime.run import prime_store

__all__ = ["prime_once", "serve"]

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


def prime_once(settings: Settings) -> int:
    """Role ``prime``: prime the store once, logging progress; returns the batches encoded.

    Raises:
        BatchstashError: the prime failed (a vectorizer, the store, another job holds the
            lease); the caller exits non-zero.
    """
    inputs = prime_inputs(settings)
    inputs.backend.check()
    started = last = time.monotonic()
    done: dict[str, tuple[int, int]] = {}

    def progress(split: str, count: int, total: int) -> None:
        nonlocal last
        done[split] = (count, total)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or count == total:
            last = now
            stored, planned = (sum(v[i] for v in done.values()) for i in (0, 1))
            logger.info(
                "primed %d/%d batches (%s %d/%d)",
                stored,
                planned,
                split,
                count,
                total,
                extra={
                    "stored": stored,
                    "planned": planned,
                    "split": split,
                    "done": count,
                    "total": total,
                },
            )

    fingerprint, store = inputs.encoder.fingerprint[:12], inputs.backend.url
    logger.info(
        "priming %s (fingerprint %s)",
        store,
        fingerprint,
        extra={"store": store, "fingerprint": fingerprint},
    )
    try:
        encoded = prime_store(inputs, progress=progress)
    finally:
        inputs.executor.close()  # one prime: its workers need not wait for another
    seconds = time.monotonic() - started
    logger.info(
        "prime done: %d batches encoded in %.1f s, the store is primed",
        encoded,
        seconds,
        extra={"encoded": encoded, "seconds": round(seconds, 3)},
    )
    return encoded


def serve(settings: Settings) -> None:
    """Serve the app built from ``settings`` until interrupted; role ``prime``: prime once."""
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    configure_logging(level, settings.log_format)
    if settings.role == "prime":
        prime_once(settings)
        return
    app = create_app(settings)
    listener = start_data_listener(app.state.batchstash)
    try:
        _run_uvicorn(app, settings, level)
    finally:
        if listener is not None:
            listener.close()


def _run_uvicorn(app: Any, settings: Settings, level: str) -> None:
    errors = app.state.batchstash.metrics.errors  # requests refused before the app, too
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(level, settings.log_format),
        access_log=settings.access_log,
        http=http_protocol(lambda code: errors.labels(code).inc()),
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
