"""Read endpoints: metadata, splits, batch ids and batch payloads."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from batchstash.client.frames import FRAMES_MEDIA_TYPE

from ..deps import ReadAccess, State
from ..reads import (
    FINGERPRINT_HEADER,
    PAYLOAD_MEDIA_TYPE,
    accepts_zstd,
    batch_etag,
    check_single_values,
    etag_matches,
    frames,
    parse_attributes,
    parse_ids,
    payload,
)
from ..schemas import ERROR_RESPONSES

__all__ = ["router"]


def single_query_values(request: Request) -> None:
    """Refuse a query parameter given twice (see :func:`check_single_values`)."""
    check_single_values(key for key, _ in request.query_params.multi_items())


router = APIRouter(
    prefix="/v1",
    tags=["batches"],
    dependencies=[ReadAccess, Depends(single_query_values)],
    responses=ERROR_RESPONSES,
)


@router.get("/metadata")
def metadata(state: State) -> dict[str, Any]:
    """Batch metadata: fields, vectorizers, dtypes, shapes and label classes."""
    info = state.reader.check_fresh()
    return {"fingerprint": info.fingerprint, "metadata": info.metadata}


@router.get("/splits")
def splits(state: State) -> dict[str, Any]:
    """Splits with their batch and data point counts and how many batches are stored."""
    reader = state.reader
    counts = reader.split_counts()
    return {"fingerprint": reader.fingerprint, "primed": reader.is_primed, "splits": counts}


@router.get("/splits/{split}/batches")
def batch_ids(state: State, split: str) -> dict[str, Any]:
    """The batch ids of a split."""
    reader = state.reader
    return {"split": split, "fingerprint": reader.fingerprint, "batch_ids": reader.keys(split)}


COALESCE = 1 << 20


def coalesce(chunks: list[memoryview | bytes]) -> list[memoryview | bytes]:
    """Join small chunks into about 1 MiB messages; big ones (mapped files) pass untouched.

    Each ASGI message crosses every middleware: copying a few KiB is cheaper than a message.
    """
    out: list[memoryview | bytes] = []
    pending = bytearray()
    for chunk in chunks:
        if memoryview(chunk).nbytes >= COALESCE // 4:
            if pending:
                out.append(memoryview(pending))
                pending = bytearray()
            out.append(chunk)
            continue
        pending += chunk
        if len(pending) >= COALESCE:
            out.append(memoryview(pending))
            pending = bytearray()
    if pending:
        out.append(memoryview(pending))
    return out


class ChunksResponse(Response):
    """A body already in memory (or mapped) as several chunks, each sent as it is.

    Unlike ``StreamingResponse`` it starts no task group and no disconnect listener per
    response: the body is finite and ready, and the server drops sends after a disconnect.
    """

    def __init__(
        self, chunks: list[memoryview | bytes], media_type: str, headers: dict[str, str]
    ) -> None:
        super().__init__(None, media_type=media_type, headers=headers)
        self.chunks = chunks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.chunks) - 1
        for i, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < last})
        if last < 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


@router.get(
    "/splits/{split}/payloads",
    response_class=Response,
    responses={
        200: {
            "content": {FRAMES_MEDIA_TYPE: {}},
            "description": "For each id in order: its payload's length as an unsigned "
            "64-bit little-endian integer, then the payload",
        },
        503: {**ERROR_RESPONSES[503], "description": "A batch is not encoded yet; retry later"},
    },
)
async def payloads(
    state: State,
    split: str,
    ids: Annotated[str, Query(description="comma separated batch ids, at most 1024")],
    attributes: Annotated[str | None, Query(description="comma separated attribute names")] = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """Several batches in one response (saves a round trip per batch), each a payload frame."""
    reader, names, wanted = state.reader, parse_attributes(attributes), parse_ids(ids)
    zstd = accepts_zstd(accept_encoding)
    start = time.perf_counter()

    body = await run_in_threadpool(frames, reader, split, wanted, names, False, zstd)
    chunks = coalesce(body.chunks)
    size = sum(memoryview(c).nbytes for c in chunks)
    state.metrics.observe_served(split, len(wanted), size, time.perf_counter() - start)
    headers = {"Content-Length": str(size), FINGERPRINT_HEADER: reader.fingerprint or ""}
    headers.update(body.headers())
    return ChunksResponse(chunks, media_type=FRAMES_MEDIA_TYPE, headers=headers)


@router.get(
    "/splits/{split}/batches/{batch_id}",
    response_class=Response,
    responses={
        200: {
            "content": {PAYLOAD_MEDIA_TYPE: {}},
            "description": "The batch as a safetensors payload (see client/wire.py)",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        503: {**ERROR_RESPONSES[503], "description": "Not encoded yet; retry after Retry-After"},
    },
)
async def batch(
    state: State,
    split: str,
    batch_id: Annotated[int, Path(ge=0, le=2**62)],
    attributes: Annotated[str | None, Query(description="comma separated attribute names")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """One batch as a binary safetensors payload (only the requested or decoded attributes)."""
    reader, names = state.reader, parse_attributes(attributes)
    info = reader.check_fresh()
    etag = batch_etag(info, split, batch_id, names)
    headers = {"ETag": etag, FINGERPRINT_HEADER: info.fingerprint}
    if etag_matches(etag, if_none_match):
        # only a batch that exists and is stored is "not modified": else its 404 or 503
        if await run_in_threadpool(reader.exists, split, batch_id, names):
            return Response(status_code=304, headers=headers)
    start = time.perf_counter()
    zstd = accepts_zstd(accept_encoding)
    body = await run_in_threadpool(payload, reader, split, batch_id, names, False, zstd)
    chunks = body.chunks
    content = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    size = content.nbytes
    state.metrics.observe_served(split, 1, size, time.perf_counter() - start)
    headers.update(body.headers())
    return Response(content, media_type=PAYLOAD_MEDIA_TYPE, headers=headers)
