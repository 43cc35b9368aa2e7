"""What a server's response means to the client: which error, whether to fail over, Retry-After."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx

from .errors import (
    AuthError,
    BatchstashError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TransportError,
    error_for_code,
)

__all__ = ["error_code", "error_from_response", "fails_over", "retry_after"]

_FALLBACK_ERRORS: dict[int, type[BatchstashError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
    502: TransportError,
    503: TransportError,
    504: TransportError,
}
"""The error class by status, for an error response without a batchstash JSON body."""


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from_response(response: httpx.Response) -> BatchstashError:
    """Map an error response to the matching :class:`BatchstashError` subclass instance."""
    try:
        body = response.json()
        code, message = body["error"]["code"], body["error"]["message"]
        cls = error_for_code(str(code))
    except (ValueError, KeyError, TypeError):
        cls = _FALLBACK_ERRORS.get(response.status_code, BatchstashError)
        message = response.text[:200] or response.reason_phrase
    return cls(f"{response.request.method} {response.request.url.path}: {message}")


def error_code(response: httpx.Response) -> str | None:
    """The ``error.code`` of a batchstash JSON error body (``None`` for any other body)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)


def fails_over(response: httpx.Response) -> bool:
    """Whether another server may answer better: a 5xx other than ``503 not_primed``.

    ``not_primed`` is the state of the store every replica shares, so it is waited for or
    retried after its ``Retry-After``; any other 5xx (a proxy's 502, a replica's own fault) is the
    server's, and a client of several URLs tries the next one at once.
    """
    if response.status_code < 500:
        return False
    return not (response.status_code == 503 and error_code(response) == "not_primed")
