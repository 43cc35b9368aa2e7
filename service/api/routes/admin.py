"""Admin endpoints: prime (start, join, cancel), status and clear."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from ..deps import AdminAccess, State

__all__ = ["router", "status_body"]

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminAccess])


def status_body(state: State) -> dict[str, Any]:
    """The store's job (from its job record) plus store facts; never walks the batches."""
    reader, body = state.reader, state.job.snapshot()
    manifest = reader.manifest()
    body.update(
        store_bytes=manifest.bytes if manifest is not None else body.pop("bytes", 0),
        fingerprint=reader.fingerprint,
        stale=reader.is_stale,
        primed=reader.is_primed,
        problem=reader.problem(),
        role=state.settings.role,
    )
    body.pop("bytes", None)
    return body


@router.post("/prime", status_code=status.HTTP_202_ACCEPTED)
def prime(state: State) -> dict[str, Any]:
    """Start priming in the background (a running prime, here or elsewhere, is joined)."""
    started = state.job.start()
    return {**status_body(state), "joined": not started}


@router.delete("/prime", status_code=status.HTTP_202_ACCEPTED)
def cancel(state: State) -> dict[str, Any]:
    """Cancel the running prime, wherever it runs (stored batches stay valid; a prime resumes)."""
    cancelled = state.job.cancel()
    return {**status_body(state), "cancelled": cancelled}


@router.get("/status")
def get_status(state: State) -> dict[str, Any]:
    """Job state, per-split progress (done/total), rate, ETA, last error and store size."""
    return status_body(state)


@router.post("/clear")
def clear(state: State) -> dict[str, Any]:
    """Remove encoded batches and records (refused while any server primes this store)."""
    state.job.clear()
    return {"cleared": True}
