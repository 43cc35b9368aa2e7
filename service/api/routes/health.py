"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ReadAccess, State
from ..schemas import NOT_READY

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=NOT_READY)
def readyz(state: State) -> dict[str, Any] | JSONResponse:
    """Readiness: the store has a readable plan of this server's configuration (primed or not)."""
    reader = state.reader
    body: dict[str, Any] = {"status": "ready", "primed": reader.is_primed}
    body["priming"] = state.job.running
    problem = reader.problem()
    if problem is not None:
        body.update(status="stale" if reader.is_stale else "unavailable", reason=problem)
        return JSONResponse(body, status_code=503)
    return body


@router.get("/metrics", response_class=Response, dependencies=[ReadAccess])
def metrics(state: State) -> Response:
    """Prometheus metrics: requests, errors, batches served, the prime job, store and process."""
    state.metrics.observe_store(state.job, state.reader)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
