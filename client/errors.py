"""The one error hierarchy of batchstash, shared by the engine, the server and the client.

```
BatchstashError                      code / HTTP status
├── BatchError                       batch_error / 500: anything about building or using a batch
│   ├── VectorizerError              vectorizer_error / 500: a vectorizer failed on a data point
│   └── PrimeCancelledError          prime_cancelled / 409: a prime was cancelled
├── PayloadError                     payload_error / 502: bytes that are not a valid batch payload
│   └── ChecksumError                checksum_mismatch / 502: a tensor's checksum does not match
├── StoreError                       store_error / 500: the on-disk store cannot serve the request
│   ├── StaleStoreError              store_stale / 409: the store was built by another configuration
│   ├── NotPrimedError               not_primed / 503: the batch is not encoded yet (retry later)
│   ├── StoreBusyError               store_busy / 503: no file descriptor left to open the batch
│   └── CorruptStoreError            store_corrupt / 500: a stored file failed verification
├── ConflictError                    conflict / 409: the request clashes with running work
├── NotFoundError                    not_found / 404: unknown split, batch or resource
├── InvalidRequestError              invalid_request / 400: malformed input
├── AuthError                        unauthorized / 401: missing or wrong bearer token
├── PlanError                        plan_mismatch / 409: a resume against a changed store or plan
└── TransportError                   transport_error / 503: the server could not be reached
```

Every class carries a stable ``code`` and an HTTP ``status``. The server renders any of them as
``{"error": {"code": ..., "message": ...}}`` and the client maps ``code`` back to the same
class with :func:`error_for_code`, so ``except NotFoundError`` works on both sides of the wire.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BatchError",
    "BatchstashError",
    "ChecksumError",
    "ConflictError",
    "CorruptStoreError",
    "InvalidRequestError",
    "NotFoundError",
    "NotPrimedError",
    "PayloadError",
    "PlanError",
    "PrimeCancelledError",
    "StaleStoreError",
    "StoreBusyError",
    "StoreError",
    "TransportError",
    "VectorizerError",
    "error_for_code",
]


class BatchstashError(Exception):
    """Base of every error raised by batchstash."""

    code = "internal_error"
    status = 500

    @property
    def message(self) -> str:
        """The human readable message (the first argument)."""
        return str(self.args[0]) if self.args else self.code


class BatchError(BatchstashError):
    """Thrown for any batch related error (the reference's ``BatchError``)."""

    code = "batch_error"


class VectorizerError(BatchError):
    """A feature vectorizer failed; the message names the split, batch, data point and field."""

    code = "vectorizer_error"


class PrimeCancelledError(BatchError):
    """A running prime was cancelled before it finished."""

    code = "prime_cancelled"
    status = 409


class PayloadError(BatchstashError):
    """Bytes that are not a valid batchstash payload (truncated, malformed, wrong metadata)."""

    code = "payload_error"
    status = 502


class ChecksumError(PayloadError):
    """A tensor's bytes do not match the checksum recorded beside it."""

    code = "checksum_mismatch"


class StoreError(BatchstashError):
    """The on-disk store cannot serve the request."""

    code = "store_error"


class StaleStoreError(StoreError):
    """The store was encoded with another mapping, vectorizer or dataset configuration."""

    code = "store_stale"
    status = 409


class NotPrimedError(StoreError):
    """The batch exists in the plan but is not encoded yet; retrying later can succeed."""

    code = "not_primed"
    status = 503


class StoreBusyError(StoreError):
    """The server has no file descriptor left to open a stored object (retry later)."""

    code = "store_busy"
    status = 503


class CorruptStoreError(StoreError):
    """A stored file is truncated or fails its checksum; it is never decoded."""

    code = "store_corrupt"


class ConflictError(BatchstashError):
    """The request clashes with work in progress (for example clear during a prime)."""

    code = "conflict"
    status = 409


class NotFoundError(BatchstashError):
    """Unknown split, batch or resource."""

    code = "not_found"
    status = 404


class InvalidRequestError(BatchstashError):
    """Malformed input: a bad id, attribute list or option."""

    code = "invalid_request"
    status = 400


class AuthError(BatchstashError):
    """Missing or wrong bearer token."""

    code = "unauthorized"
    status = 401


class PlanError(BatchstashError):
    """An epoch plan cannot be resumed: the store or the plan changed."""

    code = "plan_mismatch"
    status = 409


class TransportError(BatchstashError):
    """The server could not be reached after all retries."""

    code = "transport_error"
    status = 503


def _all_subclasses(cls: type[BatchstashError]) -> list[type[BatchstashError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


def error_for_code(code: str) -> type[BatchstashError]:
    """Return the error class for a wire ``code`` (``BatchstashError`` when unknown).

    Args:
        code: the ``error.code`` of a JSON error body.

    Returns:
        The class whose ``code`` is ``code``.
    """
    for cls in _all_subclasses(BatchstashError):
        if cls.code == code:
            return cls
    return BatchstashError
