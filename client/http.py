"""The HTTP client of a batchstash server: metadata, splits, batches, admin calls, with retries."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import torch

from . import wire
from .admin import AdminCalls
from .batch import Batch
from .errors import PayloadError, PlanError, TransportError
from .metadata import BatchMetadata
from .responses import error_from_response, is_retryable, retry_after
from .transport import BufferTransport, body_buffer

if TYPE_CHECKING:
    from .iterate import BatchIterator

__all__ = ["BatchClient"]

logger = logging.getLogger(__name__)


class BatchClient:
    """A thread-safe client of one batchstash server over one keep-alive connection pool.

    Requests that fail on the connection, with a 5xx (``503 not_primed`` included) or with a
    409 that carries ``Retry-After`` are retried ``retries`` times with exponential backoff and
    jitter; a ``Retry-After`` header sets the delay (capped at ``max_delay``). Other 4xx are
    raised at once. Errors are raised as the :mod:`batchstash.client.errors` class matching the
    server's ``error.code``; a connection that never succeeds raises :class:`TransportError`.

    Example::

        with BatchClient("http://stash:8000") as client:
            meta = client.metadata()
            for batch in client.iter_batches("train", epoch=0, device="cuda"):
                ...

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        token: a bearer token sent with every request (admin endpoints need one when the server
            is configured with a token).
        timeout: seconds for connecting and for each read.
        retries: how many times a failed request is retried (``0``: never).
        backoff: the first retry delay in seconds; doubled on each retry, with jitter.
        transport: an ``httpx`` transport; by default a :class:`BufferTransport`, which reads
            each body into one buffer the tensors view (tests pass ``httpx.MockTransport``).
        max_delay: the longest delay between two tries, whatever ``Retry-After`` says.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        *,
        max_delay: float = 30.0,
    ) -> None:
        if retries < 0 or backoff < 0 or max_delay < 0:
            raise ValueError("retries, backoff and max_delay must not be negative")
        headers = {"Accept": "application/json, application/octet-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport or BufferTransport(),
        )
        self._sleep: Callable[[float], None] = time.sleep
        # looked up at call time, so a replaced ``_sleep`` (tests) reaches the admin calls too
        self.admin = AdminCalls(
            lambda *a, **k: self._json(*a, **k), lambda seconds: self._sleep(seconds)
        )
        self._lock = threading.Lock()
        self._metadata: tuple[str, BatchMetadata] | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = None if response is None else retry_after(response)
        if hinted is not None:
            return min(hinted, self.max_delay)
        base = min(self.backoff * 2**attempt, self.max_delay)
        return float(base * random.uniform(0.5, 1.5))

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """Send a request with retries; return a 2xx response or raise the mapped error.

        The body of a successful response is left unread: take it with :func:`body_buffer`
        (the transport's own buffer, no copy) or ``response.read()``.
        """
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self._http.build_request(method, path, params=params, json=json)
                response = self._http.send(request, stream=True)
                if not response.is_success:
                    response.read()
            except httpx.TransportError as exc:
                if last:
                    raise TransportError(
                        f"{method} {self.url}{path}: {type(exc).__name__}: {exc} "
                        f"(after {attempt + 1} attempts)"
                    ) from exc
                delay = self._delay(attempt, None)
                logger.warning("%s %s failed (%s); retry in %.2fs", method, path, exc, delay)
                self._sleep(delay)
                continue
            if response.is_success:
                return response
            if last or not is_retryable(response):
                raise error_from_response(response)
            delay = self._delay(attempt, response)
            logger.info(
                "%s %s answered %d; retry %d/%d in %.2fs",
                method,
                path,
                response.status_code,
                attempt + 1,
                self.retries,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        response.read()
        try:
            return response.json()
        except ValueError:
            raise PayloadError(f"{method} {path}: the response is not JSON") from None

    # -- reads ----------------------------------------------------------------------------------

    def prime(self, **options: Any) -> dict[str, Any]:
        """Start priming in the background, or join the running prime (:class:`AdminCalls`)."""
        return self.admin.prime(**options)

    def status(self) -> dict[str, Any]:
        """The store's prime job status (see :meth:`AdminCalls.status`)."""
        return self.admin.status()

    def clear(self) -> dict[str, Any]:
        """Remove every encoded batch (``ConflictError`` while a prime runs)."""
        return self.admin.clear()

    def cancel(self) -> dict[str, Any]:
        """Ask the running prime to stop, wherever it runs; returns the status."""
        return self.admin.cancel()

    def wait_for_prime(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Poll the status until the prime ends (see :meth:`AdminCalls.wait_for_prime`)."""
        return self.admin.wait_for_prime(*args, **kwargs)

    def metadata(self, refresh: bool = False) -> BatchMetadata:
        """Return the batch metadata (fields, dtypes, shapes, label classes) to size a model.

        The metadata is cached with the store fingerprint it belongs to; a batch from another
        fingerprint refreshes it.

        Args:
            refresh: ask the server even when cached.
        """
        with self._lock:
            cached = self._metadata
        if cached is not None and not refresh:
            return cached[1]
        return self._fetch_metadata()[1]

    def _fetch_metadata(self) -> tuple[str, BatchMetadata]:
        body = self._json("GET", "/v1/metadata")
        entry = (str(body["fingerprint"]), BatchMetadata.from_dict(body["metadata"]))
        with self._lock:
            self._metadata = entry
        return entry

    def fingerprint(self) -> str:
        """Return the server's current store fingerprint (its configuration hash); not cached."""
        return self._fetch_metadata()[0]

    def splits(self) -> dict[str, Any]:
        """Return ``{"fingerprint", "primed", "splits": {name: {batches, data_points, stored}}}``.

        ``stored`` counts the batches encoded so far; ``primed`` is true once all are.
        """
        return dict(self._json("GET", "/v1/splits"))

    def split_batch_ids(self, split: str) -> tuple[str, list[int]]:
        """Return the store fingerprint and the batch ids of ``split`` in one request."""
        body = self._json("GET", f"/v1/splits/{split}/batches")
        return str(body["fingerprint"]), [int(i) for i in body["batch_ids"]]

    def batch_ids(self, split: str) -> list[int]:
        """Return the batch ids of ``split``.

        Raises:
            NotFoundError: unknown split.
        """
        return self.split_batch_ids(split)[1]

    def batch(
        self,
        split: str,
        batch_id: int,
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
    ) -> Batch:
        """Fetch, verify and decode one batch.

        Every tensor's checksum is verified; the tensors view the received bytes without a copy.

        Args:
            split: the split name.
            batch_id: the batch id.
            attributes: only these attributes (all the server decodes when ``None``).
            device: copy the batch there (pinned memory and ``non_blocking`` for CUDA).
            fingerprint: the store fingerprint the batch must come from (an epoch plan's).

        Raises:
            NotFoundError: unknown split or batch.
            InvalidRequestError: an unknown attribute.
            NotPrimedError: the batch is still not encoded after all retries.
            ChecksumError: a tensor's bytes are corrupt.
            PayloadError: malformed bytes, or a batch other than the one asked for.
            PlanError: the batch comes from another store than ``fingerprint``.
        """
        wanted = None if attributes is None else sorted(set(attributes))
        params = None if wanted is None else {"attributes": ",".join(wanted)}
        path = f"/v1/splits/{split}/batches/{int(batch_id)}"
        response = self._request("GET", path, params=params)
        payload = wire.decode(body_buffer(response))
        return self._checked(payload, path, split, int(batch_id), wanted, fingerprint, device)

    def batches(
        self,
        split: str,
        batch_ids: Sequence[int],
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
    ) -> list[Batch]:
        """Fetch several batches of a split in one request (one round trip, one buffer).

        The server answers ``GET /v1/splits/{split}/payloads?ids=...`` with one length-prefixed
        payload frame per id (see :func:`wire.split_frames`); each is verified and decoded in
        place like :meth:`batch`. Raises what :meth:`batch` raises.
        """
        ids = [int(i) for i in batch_ids]
        if not ids:
            return []
        wanted = None if attributes is None else sorted(set(attributes))
        params = {"ids": ",".join(map(str, ids))}
        if wanted is not None:
            params["attributes"] = ",".join(wanted)
        path = f"/v1/splits/{split}/payloads"
        frames = wire.split_frames(body_buffer(self._request("GET", path, params=params)))
        if len(frames) != len(ids):
            raise PayloadError(f"GET {path}: {len(frames)} payloads for {len(ids)} ids")
        return [
            self._checked(wire.decode(frame), path, split, batch_id, wanted, fingerprint, device)
            for frame, batch_id in zip(frames, ids, strict=True)
        ]

    def _checked(
        self,
        payload: wire.Payload,
        path: str,
        split: str,
        batch_id: int,
        wanted: list[str] | None,
        fingerprint: str | None,
        device: str | torch.device | None,
    ) -> Batch:
        if payload.split != split or payload.batch_id != batch_id:
            raise PayloadError(
                f"GET {path}: the payload is batch {payload.split}/{payload.batch_id}, "
                f"not {split}/{batch_id}"
            )
        if wanted is not None and sorted(payload.tensors) != wanted:
            raise PayloadError(f"GET {path}: the payload holds {sorted(payload.tensors)}")
        if fingerprint is not None and payload.fingerprint != fingerprint:
            raise PlanError(
                f"GET {path}: the batch comes from store {payload.fingerprint}, not "
                f"{fingerprint}; the store changed since the epoch was planned"
            )
        batch = Batch.from_payload(payload, self._metadata_for(payload.fingerprint))
        return batch if device is None else batch.to(device)

    def _metadata_for(self, fingerprint: str) -> BatchMetadata:
        with self._lock:
            cached = self._metadata
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        return self._fetch_metadata()[1]

    def iter_batches(
        self,
        split: str,
        epoch: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        state: Mapping[str, Any] | None = None,
        batches_per_request: int | None = None,
    ) -> BatchIterator:
        """Iterate over this rank's share of one epoch of ``split``, prefetching in threads.

        See :class:`~batchstash.client.iterate.BatchIterator` and
        :class:`~batchstash.client.plan.EpochPlan` for the order, the dealing to ranks and
        resuming (``state``, or ``load_state_dict`` before the first batch).

        Args:
            split: the split name.
            epoch: the epoch number (seeds the shuffle).
            shuffle: shuffle the batch order (deterministic for fingerprint, seed and epoch).
            seed: the shuffle seed, the same on every rank.
            rank: this process's rank in ``[0, world_size)``.
            world_size: the number of ranks sharing the epoch.
            prefetch: how many batches may be fetched ahead (``0``: fetch on demand).
            attributes: only these attributes.
            device: copy each batch there (pinned memory and ``non_blocking`` for CUDA).
            state: a :meth:`BatchIterator.state_dict` to resume from.
            batches_per_request: batches fetched in one request (default ``prefetch // 3``).
        """
        from .iterate import BatchIterator

        return BatchIterator(
            self,
            split,
            epoch=epoch,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            prefetch=prefetch,
            attributes=attributes,
            device=device,
            state=state,
            batches_per_request=batches_per_request,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
