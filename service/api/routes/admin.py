"""Admin endpoints: prime (start, join, cancel), status and clear."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from batchstash.client import ConflictError

from ..deps import AdminAccess, State

__all__ = ["router", "status_body"]

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminAccess])


def status_body(state: State) -> dict[str, Any]:
    """The job's status plus store facts; before any prime, progress comes from the store."""
    stash, body = state.stash, state.job.snapshot()
    if not body["splits"]:
        counts = stash.split_counts()
        body["splits"] = {
            s: {"done": c["stored"], "total": c["batches"]} for s, c in counts.items()
        }
    body.update(
        store_bytes=stash.store.size_bytes(),
        fingerprint=stash.config_hash,
        stale=stash.is_stale,
        primed=stash.is_primed,
    )
    return body


@router.post("/prime", status_code=status.HTTP_202_ACCEPTED)
def prime(state: State) -> dict[str, Any]:
    """Start priming in the background process pool (a running prime is joined, not repeated)."""
    started = state.job.start()
    return {**status_body(state), "joined": not started}


@router.delete("/prime", status_code=status.HTTP_202_ACCEPTED)
def cancel(state: State) -> dict[str, Any]:
    """Cancel a running prime (stored batches stay valid; a later prime resumes)."""
    return {**status_body(state), "cancelled": state.job.cancel()}


@router.get("/status")
def get_status(state: State) -> dict[str, Any]:
    """Job state, per-split progress (done/total), rate, ETA, last error and store size."""
    return status_body(state)


@router.post("/clear")
def clear(state: State) -> dict[str, Any]:
    """Remove encoded batches, plan and manifest (refused while priming; the data set stays)."""
    if state.job.running:
        raise ConflictError("cannot clear while a prime is running; cancel it first")
    state.stash.clear_all()
    return {"cleared": True}
