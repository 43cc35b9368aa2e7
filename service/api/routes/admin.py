"""Admin endpoints: prime (start, join, cancel), status and clear."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from batchstash.client import InvalidRequestError

from ..deps import AdminAccess, State
from ..schemas import ERROR_RESPONSES

__all__ = ["router", "status_body"]

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[AdminAccess], responses=ERROR_RESPONSES
)


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
async def prime(state: State, request: Request) -> dict[str, Any]:
    """Start priming in the background (a running prime, here or elsewhere, is joined).

    It takes no options: what to prime (splits, workers, executor) is the server's settings.
    """
    raw = await request.body()
    if raw.strip() not in (b"", b"{}", b"null"):
        try:
            given = json.loads(raw)
        except ValueError:
            given = raw[:80].decode("utf-8", "replace")
        names = sorted(given) if isinstance(given, dict) else given
        raise InvalidRequestError(
            f"prime takes no options (got {names}): splits, workers and the executor are the "
            "server's settings (BATCHSTASH_WORKERS, BATCHSTASH_EXECUTOR...)"
        )
    started = await run_in_threadpool(state.job.start)
    return {**await run_in_threadpool(status_body, state), "joined": not started}


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
