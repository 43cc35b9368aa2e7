"""The one exception handler: every error is ``{"error": {"code", "message"}}`` with its status."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchstash.client import BatchstashError

__all__ = [
    "PRIME_HEADER",
    "count",
    "error_body",
    "error_headers",
    "error_response",
    "install_error_handlers",
    "job_progress",
    "prime_progress",
]

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}

PRIME_HEADER = "X-Batchstash-Prime"


def prime_progress(request: Request) -> str:
    """The store's prime job as compact JSON: ``{"state", "done", "total", "role"}``."""
    return job_progress(_job(request), _role(request))


def _job(request: Request) -> Any:
    return getattr(getattr(request.app.state, "batchstash", None), "job", None)


def _role(request: Request) -> str | None:
    settings = getattr(getattr(request.app.state, "batchstash", None), "settings", None)
    return getattr(settings, "role", None)


def job_progress(job: Any, role: str | None = None) -> str:
    """A prime job's progress as compact JSON (the :data:`PRIME_HEADER` value).

    Args:
        job: the server's prime job.
        role: the server's role, given as ``"role"`` (omitted when ``None``): a client told
            ``serve`` knows that this server cannot prime the store, and says who can.
    """
    try:
        body = job.snapshot()
    except Exception:  # the header is a courtesy: never turn a 503 into a 500
        logger.debug("no prime progress for the %s header", PRIME_HEADER, exc_info=True)
        body = {"state": "unknown", "kind": None}
    splits = body.get("splits") or {}
    done = sum(int(e["done"]) for e in splits.values())
    total = sum(int(e["total"]) for e in splits.values())
    state = body["state"] if body.get("kind") in ("prime", None) else "idle"
    doc: dict[str, Any] = {"state": state, "done": done, "total": total}
    if role is not None:
        doc["role"] = role
    return json.dumps(doc, separators=(",", ":"))


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}


def error_headers(
    exc: BatchstashError, retry_after_s: int, job: Any, role: str | None = None
) -> dict[str, str]:
    """An error's headers: ``Retry-After`` and the prime's progress (503), a challenge (401).

    Args:
        exc: the error.
        retry_after_s: the ``Retry-After`` of a 503.
        job: the server's prime job (the progress of a ``not_primed``).
        role: the server's role, in the progress (see :func:`job_progress`).
    """
    headers: dict[str, str] = {}
    if exc.status == 503:
        headers["Retry-After"] = str(retry_after_s)
        if exc.code == "not_primed":
            # what a waiting trainer needs: is a prime running, is it getting anywhere, and
            # can this server start one
            headers[PRIME_HEADER] = job_progress(job, role)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def count(request: Request, code: str) -> None:
    """Count an error response by its code (``batchstash_errors_total``)."""
    state = getattr(request.app.state, "batchstash", None)
    if state is not None:
        state.metrics.errors.labels(code).inc()


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Render batchstash errors, validation errors and HTTP errors in the one JSON shape."""

    @app.exception_handler(BatchstashError)
    async def _batchstash(request: Request, exc: BatchstashError) -> JSONResponse:
        headers = error_headers(exc, retry_after_s, _job(request), _role(request)) or None
        if exc.status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
        count(request, exc.code)
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        count(request, "validation_error")
        return error_response(422, "validation_error", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        count(request, code)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        count(request, "internal_error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")
