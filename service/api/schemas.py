"""Response models of the JSON error shape, for the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = [
    "ERROR_RESPONSES",
    "NOT_READY",
    "READ_ONLY_CONFLICT",
    "UNAUTHORIZED",
    "ErrorBody",
    "ErrorDetail",
]


class ErrorDetail(BaseModel):
    """One error: a stable code (the client maps it to its exception class) and a message."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed input (invalid_request)"),
    404: _error("Unknown split or batch (not_found)"),
    409: _error("Clashes with running work, or a stale store (conflict, store_stale)"),
    422: _error("A path or query parameter of the wrong type (validation_error)"),
    500: _error("A stored object failed verification (store_corrupt) or another server error"),
    503: _error("Not encoded yet (not_primed; retry after Retry-After)"),
}
"""The error responses every route may give, in the one JSON shape.

A ``401`` only where the server asks for a token (the OpenAPI document adds
:data:`UNAUTHORIZED` there, see :mod:`.openapi`).
"""

UNAUTHORIZED: dict[str, Any] = {
    "description": "Missing or wrong bearer token (unauthorized)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}
"""The ``401`` of an operation that needs the token, as it stands in the OpenAPI document."""

READ_ONLY_CONFLICT = _error(
    "Clashes with running work, a stale store, or this server has role serve: a read-only "
    "replica never primes, cancels or clears the store it shares (conflict, store_stale)"
)
"""The 409 of the admin routes that change the store or its job."""

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Not ready: the store has no readable plan of this server's "
        "configuration (status, reason)"
    }
}
"""The ``503`` of ``/readyz``."""
