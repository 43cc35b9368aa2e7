"""Admin endpoints: prime (start, join, cancel), status and clear.

A server with role ``serve`` is a read-only replica of a store others prime: it answers status
and joins a prime that runs elsewhere, but refuses to start one, to cancel one or to clear the
store (``409 conflict``), which would take the batches or the job away from every replica.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from batchstash.client import ConflictError, InvalidRequestError

from ..deps import AdminAccess, State
from ..schemas import ERROR_RESPONSES, READ_ONLY_CONFLICT
from ..state import ServerState

__all__ = ["refuse_on_replica", "router", "status_body"]

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[AdminAccess], responses=ERROR_RESPONSES
)

# the routes that change the store or its job, and so are refused on role serve
_WRITES: dict[int | str, dict[str, Any]] = {409: READ_ONLY_CONFLICT}


def refuse_on_replica(state: ServerState, action: str, instead: str) -> None:
    """Refuse a change of the shared store or its job on a server with role ``serve``.

    Args:
        state: the server state.
        action: what was asked, as in "it does not <action>".
        instead: where to ask for it.

    Raises:
        ConflictError: this server has role ``serve``.
    """
    if state.settings.role == "serve":
        raise ConflictError(
            f"this server has role serve, a read-only replica of the store: it does not "
            f"{action}; {instead}"
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


@router.post("/prime", status_code=status.HTTP_202_ACCEPTED, responses=_WRITES)
async def prime(state: State, request: Request) -> dict[str, Any]:
    """Start priming in the background (a running prime, here or elsewhere, is joined).

    It takes no options: what to prime (splits, workers, executor) is the server's settings.
    A server with role ``serve`` only joins a prime another server runs: with none running it
    answers ``409`` (prime from a server with role ``all``, or run the prime job).
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
    if state.settings.role == "serve" and not await run_in_threadpool(lambda: state.job.running):
        refuse_on_replica(
            state,
            "prime the store, and nothing primes it now",
            "prime it from a server with role all (`batchstash prime --url <that server>`) or "
            "run the prime job (`batchstash serve --role prime` with the store's --data-dir "
            "and --dataset)",
        )
    started = await run_in_threadpool(state.job.start)
    return {**await run_in_threadpool(status_body, state), "joined": not started}


@router.delete("/prime", status_code=status.HTTP_202_ACCEPTED, responses=_WRITES)
def cancel(state: State) -> dict[str, Any]:
    """Cancel the running prime, wherever it runs (stored batches stay valid; a prime resumes).

    Refused (``409``) by a server with role ``serve``: the cancel is written to the store's job
    record and stops the prime every replica waits for.
    """
    refuse_on_replica(
        state,
        "cancel the store's prime",
        "cancel it on a server with role all (`batchstash cancel --url <that server>`), or stop "
        "the prime job (role prime) that runs it",
    )
    cancelled = state.job.cancel()
    return {**status_body(state), "cancelled": cancelled}


@router.get("/status")
def get_status(state: State) -> dict[str, Any]:
    """Job state, per-split progress (done/total), rate, ETA, last error and store size."""
    return status_body(state)


@router.post("/clear", responses=_WRITES)
def clear(state: State) -> dict[str, Any]:
    """Remove encoded batches and records (refused while any server primes this store).

    Refused (``409``) by a server with role ``serve``: every replica of the store would have
    nothing left to serve.
    """
    refuse_on_replica(
        state,
        "clear the store that every replica serves",
        "clear it from a server with role all (`batchstash clear --url <that server>`)",
    )
    state.job.clear()
    return {"cleared": True}
