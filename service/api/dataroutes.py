"""The data listener's requests: route, check, read and answer, as the API's batch routes do.

Everything here is about one request; the sockets, threads and HTTP framing are
:mod:`.datapath`'s. The same helpers as the FastAPI routes do the work (:mod:`.reads` for query
parsing, ETags and frames; :func:`.deps.check_read_token`; :func:`.errors.error_headers`;
:meth:`.metrics.Metrics.observe_served`), so both ports answer alike.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from batchstash.client import BatchstashError, NotFoundError
from batchstash.client.frames import FRAMES_MEDIA_TYPE

from .deps import bearer_token, check_read_token
from .errors import error_body, error_headers
from .reads import (
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
from .state import ServerState

__all__ = [
    "BATCH_ROUTE",
    "HEALTH_ROUTE",
    "PAYLOADS_ROUTE",
    "DataRoutes",
    "Reply",
    "ValidationError",
    "error_reply",
]

logger = logging.getLogger(__name__)

PAYLOADS_ROUTE = "/v1/splits/{split}/payloads"
BATCH_ROUTE = "/v1/splits/{split}/batches/{batch_id}"
HEALTH_ROUTE = "/healthz"


class ValidationError(BatchstashError):
    """A path parameter of the wrong type: FastAPI's 422 ``validation_error`` on the API port."""

    code = "validation_error"
    status = 422


class Reply:
    """One response: status, headers, and the body as chunks.

    A chunk is a buffer (mapped store bytes included) or a stored file held open
    (a :class:`~batchstash.service.store.backend.Sendable`, sent with ``sendfile``).
    """

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        chunks: Sequence[Any] = (),
    ) -> None:
        self.status, self.headers, self.chunks = status, headers, chunks

    @classmethod
    def json(cls, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """A JSON response."""
        return cls(status, [("Content-Type", "application/json"), *headers], [body])


def error_reply(
    state: ServerState,
    status: int,
    code: str,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """A JSON error reply, counted in ``batchstash_errors_total``."""
    state.metrics.errors.labels(code).inc()
    return Reply.json(status, json.dumps(error_body(code, message)).encode(), headers)


class DataRoutes:
    """Answers the data listener's requests from the server's state.

    Args:
        state: the server's state (reader, settings, token, metrics, job).
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def handle(
        self, method: str, raw_target: bytes, raw_headers: Iterable[tuple[bytes, bytes]]
    ) -> Reply:
        """Answer one request (never raises: errors are replies), counted in the metrics."""
        start = time.perf_counter()
        route, reply = "unmatched", None
        try:
            target = urlsplit(raw_target.decode("ascii"))
            route, call = self._route(unquote(target.path))
            if method != "GET":
                reply = self._error(405, "method_not_allowed", f"{method} is not allowed here")
            else:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
                if route != HEALTH_ROUTE:
                    self._authorize(headers.get("authorization"))
                query = parse_qsl(target.query, keep_blank_values=True)
                check_single_values(key for key, _ in query)
                reply = call(dict(query), headers)
        except BatchstashError as exc:
            reply = self._batchstash_error(exc, method, raw_target)
        except UnicodeDecodeError:
            reply = self._error(400, "invalid_request", "the request target is not ASCII")
        except Exception as exc:  # a bug: logged, answered 500 like the API's handler
            logger.exception("unhandled error on %s %r", method, raw_target[:200])
            reply = self._error(500, "internal_error", f"internal error: {type(exc).__name__}")
        metrics = self.state.metrics
        metrics.requests.labels(route, method, str(reply.status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
        return reply

    def _route(self, path: str) -> tuple[str, Callable[[dict[str, str], dict[str, str]], Reply]]:
        parts = path.split("/")
        if path == HEALTH_ROUTE:
            return HEALTH_ROUTE, lambda query, headers: Reply.json(200, b'{"status":"ok"}')
        if len(parts) >= 5 and parts[:3] == ["", "v1", "splits"] and parts[3]:
            split = parts[3]
            if len(parts) == 5 and parts[4] == "payloads":
                return PAYLOADS_ROUTE, lambda q, h: self._payloads(split, q, h)
            if len(parts) == 6 and parts[4] == "batches":
                return BATCH_ROUTE, lambda q, h: self._batch(split, parts[5], q, h)
        raise NotFoundError(
            f"no such route on the data listener: {path[:200]} (it serves batch payloads; "
            "everything else is on the API port)"
        )

    def _authorize(self, header: str | None) -> None:
        check_read_token(self.state, bearer_token(header))

    def _payloads(self, split: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        if "ids" not in query:
            raise ValidationError("query.ids: Field required")
        reader, metrics = self.state.reader, self.state.metrics
        names, wanted = parse_attributes(query.get("attributes")), parse_ids(query["ids"])
        zstd = accepts_zstd(headers.get("accept-encoding"))
        start = time.perf_counter()
        body = frames(reader, split, wanted, names, files=True, zstd=zstd)
        metrics.observe_served(split, len(wanted), body.size, time.perf_counter() - start)
        out = [
            ("Content-Type", FRAMES_MEDIA_TYPE),
            (FINGERPRINT_HEADER, reader.fingerprint or ""),
            *body.headers(),
        ]
        return Reply(200, out, body.chunks)

    def _batch(
        self, split: str, raw_id: str, query: dict[str, str], headers: dict[str, str]
    ) -> Reply:
        if not raw_id.isdigit() or int(raw_id) > 2**62:
            raise ValidationError(f"path.batch_id: an integer in [0, 2**62], not {raw_id[:40]!r}")
        batch_id = int(raw_id)
        reader, names = self.state.reader, parse_attributes(query.get("attributes"))
        info = reader.check_fresh()
        etag = batch_etag(info, split, batch_id, names)
        out = [("ETag", etag), (FINGERPRINT_HEADER, info.fingerprint)]
        if etag_matches(etag, headers.get("if-none-match")) and reader.exists(
            split, batch_id, names
        ):
            return Reply(304, out)
        start = time.perf_counter()
        zstd = accepts_zstd(headers.get("accept-encoding"))
        body = payload(reader, split, batch_id, names, files=True, zstd=zstd)
        self.state.metrics.observe_served(split, 1, body.size, time.perf_counter() - start)
        out += body.headers()
        return Reply(200, [("Content-Type", PAYLOAD_MEDIA_TYPE), *out], body.chunks)

    def _batchstash_error(self, exc: BatchstashError, method: str, target: bytes) -> Reply:
        state = self.state
        headers = error_headers(exc, state.settings.retry_after_s, state.job, state.settings.role)
        if exc.status >= 500:
            logger.warning("%s %r: %s", method, target[:200], exc.message)
        return self._error(exc.status, exc.code, exc.message, list(headers.items()))

    def _error(
        self, status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        return error_reply(self.state, status, code, message, headers)
