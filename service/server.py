"""Run the server under uvicorn (httptools + uvloop when installed), or a one-shot prime job."""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

import uvicorn

from .api import create_app
from .api.state import build_stash
from .config import Settings

__all__ = ["prime_once", "serve"]

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


def prime_once(settings: Settings) -> int:
    """Role ``prime``: prime the store once, logging progress; returns the batches encoded.

    Raises:
        BatchstashError: the prime failed (a vectorizer, the store, another job holds the
            lease); the caller exits non-zero.
    """
    stash = build_stash(settings)
    stash.backend.check()
    started = last = time.monotonic()
    done: dict[str, tuple[int, int]] = {}

    def progress(split: str, count: int, total: int) -> None:
        nonlocal last
        done[split] = (count, total)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or count == total:
            last = now
            stored, planned = (sum(v[i] for v in done.values()) for i in (0, 1))
            logger.info("primed %d/%d batches (%s %d/%d)", stored, planned, split, count, total)

    logger.info("priming %s (fingerprint %s)", stash.path, stash.config_hash[:12])
    encoded = stash.prime(progress=progress)
    logger.info(
        "prime done: %d batches encoded in %.1f s, the store is primed",
        encoded,
        time.monotonic() - started,
    )
    return encoded


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """One format for batchstash's and uvicorn's loggers (uvicorn's ``log_config``)."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def serve(settings: Settings) -> None:
    """Serve the app built from ``settings`` until interrupted; role ``prime``: prime once."""
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.config.dictConfig(log_config(level))
    if settings.role == "prime":
        prime_once(settings)
        return
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(level),
        access_log=settings.access_log,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
