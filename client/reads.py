"""A client's reads: batches fetched, verified, decoded and built with their store's metadata.

:class:`BatchReads` is what :class:`~batchstash.client.http.BatchClient` reads batches with:
one batch a request or several (each frame's checksums checked as its bytes land), the
pipelined reader of an iteration, and the store metadata each batch is built with, cached with
the fingerprint it belongs to (a batch of another fingerprint refreshes it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import torch

from . import wire
from .batch import Batch
from .decode import decode_body, decode_frames
from .endpoints import Endpoint
from .engine import Engine
from .framecheck import FrameChecker
from .metadata import BatchMetadata
from .pipeline import PipelinedReader
from .staging import DeviceStage
from .transport import body_buffer
from .widen import widened

__all__ = ["BatchReads"]


class BatchReads:
    """Reads batches of ``batch_type`` through ``engine``, converting ``widen``'s attributes.

    Args:
        engine: the request path.
        batch_type: the class of the batches built.
        widen: attributes converted to another dtype as batches are read.
        in_flight_bytes: a pipelined reader's budget beyond ``prefetch`` (see
            :class:`~batchstash.client.inflight.InFlight`).
    """

    def __init__(
        self,
        engine: Engine,
        batch_type: type[Batch],
        widen: Mapping[str, torch.dtype],
        in_flight_bytes: int,
    ) -> None:
        self.engine = engine
        self.batch_type = batch_type
        self.widen = widen
        self.in_flight_bytes = in_flight_bytes
        self._lock = threading.Lock()
        self._metadata: tuple[str, BatchMetadata] | None = None

    # -- metadata -------------------------------------------------------------------------------

    def metadata(self, refresh: bool = False) -> BatchMetadata:
        """The cached metadata, or the server's (``refresh``: the server's in any case)."""
        with self._lock:
            cached = self._metadata
        if cached is not None and not refresh:
            return cached[1]
        return self.fetch_metadata()[1]

    def fetch_metadata(self) -> tuple[str, BatchMetadata]:
        """The store's fingerprint and metadata, asked of a server and cached."""
        body, url = self.engine.json("GET", "/v1/metadata")
        self.engine.identity.observe(body.get("fingerprint"), url)
        entry = (str(body["fingerprint"]), BatchMetadata.from_dict(body["metadata"]))
        with self._lock:
            self._metadata = entry
        return entry

    def metadata_for(self, fingerprint: str) -> BatchMetadata:
        """The metadata of the store of ``fingerprint`` (asked again when the cache's differs)."""
        with self._lock:
            cached = self._metadata
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        return self.fetch_metadata()[1]

    # -- batches --------------------------------------------------------------------------------

    def batch(
        self,
        split: str,
        batch_id: int,
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
    ) -> Batch:
        """One batch, one request (see :meth:`BatchClient.batch`)."""
        wanted = None if attributes is None else sorted(set(attributes))
        params = None if wanted is None else {"attributes": ",".join(wanted)}
        path = f"/v1/splits/{split}/batches/{int(batch_id)}"
        response = self.engine.request("GET", path, params=params, data=True)
        body = body_buffer(response)
        payload = decode_body(body, path, split, int(batch_id), wanted, fingerprint)
        return self.build([payload], device)[0]

    def batches(
        self,
        split: str,
        batch_ids: Sequence[int],
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
        first: Endpoint | None = None,
    ) -> list[Batch]:
        """Several batches, one request, trying ``first`` first (see :meth:`Engine.request`)."""
        ids = [int(i) for i in batch_ids]
        if not ids:
            return []
        wanted = None if attributes is None else sorted(set(attributes))
        params = {"ids": ",".join(map(str, ids))}
        if wanted is not None:
            params["attributes"] = ",".join(wanted)
        path = f"/v1/splits/{split}/payloads"
        checker = FrameChecker()  # verifies each frame as it lands, while it is in cache
        response = self.engine.request(
            "GET", path, params=params, data=True, on_body=checker, first=first
        )
        body = body_buffer(response)
        payloads = decode_frames(body, checker, path, split, ids, wanted, fingerprint)
        return self.build(payloads, device)

    def build(
        self, payloads: Sequence[wire.Payload], device: str | torch.device | None = None
    ) -> list[Batch]:
        """The :attr:`batch_type` batches of verified payloads, with their store's metadata."""
        if self.widen:
            payloads = [widened(payload, self.widen) for payload in payloads]
        batches = [
            self.batch_type.from_payload(payload, self.metadata_for(payload.fingerprint))
            for payload in payloads
        ]
        return batches if device is None else [batch.to(device) for batch in batches]

    # -- pipelining -----------------------------------------------------------------------------

    def can_pipeline(self) -> bool:
        """Whether batch requests may be pipelined: own transports and a usable data listener."""
        if self.engine.buffers is None:
            return False
        endpoints = self.engine.endpoints
        return any(endpoints.data_client(endpoint) is not None for endpoint in endpoints)

    def pipelined_reader(
        self,
        split: str,
        wanted: list[str] | None,
        stage: DeviceStage | None,
        fingerprint: str,
        window: int,
    ) -> PipelinedReader | None:
        """A :class:`PipelinedReader` of ``split`` (``None`` unless :meth:`can_pipeline`).

        A group its connection does not deliver is fetched through the engine, first on the
        URL whose connection broke.
        """
        if not self.can_pipeline():
            return None

        def fallback(group: list[int], first: Endpoint | None) -> list[Batch]:
            return self.batches(split, group, wanted, fingerprint=fingerprint, first=first)

        return PipelinedReader(
            self.engine,
            split,
            wanted,
            stage,
            fingerprint,
            window,
            fallback=fallback,
            build=self.build,
            in_flight_bytes=self.in_flight_bytes,
        )
