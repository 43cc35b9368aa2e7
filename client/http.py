"""The HTTP client of batchstash servers: metadata, splits, batches, admin calls, with retries.

One :class:`BatchClient` may know several server URLs (replicas of one store): it spreads its
requests over them round robin and fails over from one that is down to the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import torch

from .admin import AdminCalls
from .batch import Batch, check_batch_type
from .buffers import BufferPool
from .endpoints import EndpointState
from .engine import Engine
from .inflight import DEFAULT_IN_FLIGHT_BYTES
from .iterate import BatchIterator
from .metadata import BatchMetadata
from .pipeline import PipelinedReader
from .policy import RetryPolicy
from .reads import BatchReads
from .redeal import field_rules
from .retryargs import with_shorthands
from .staging import DeviceStage
from .widen import widen_dtypes

__all__ = ["BatchClient", "EndpointState"]  # EndpointState: re-exported from .endpoints


class BatchClient:
    """A thread-safe client of one batchstash server, or of several replicas of one store.

    **Retries, several URLs, a store being primed.** One
    :class:`~batchstash.client.policy.RetryPolicy` (``retry``) decides every retry: by default
    a request that reaches no server is tried again with backoff and jitter for up to 90 s, as
    is a ``5xx`` or a ``409`` with ``Retry-After``; other 4xx are raised at once, as the
    :mod:`batchstash.client.errors` class matching the server's ``error.code``, and no server
    within the budget raises :class:`TransportError`. Given several URLs (replicas of one
    store), requests go round robin, a URL that fails is marked down for a cooldown and the
    request goes at once to the next; every URL must serve the same store, or
    :class:`PlanError` is raised. A batch not encoded yet (``503 not_primed``) waits for a
    running, progressing prime for up to the policy's ``wait_for_prime`` seconds, and raises
    :class:`NotPrimedError` at once when none runs. The details are in docs/client.md
    ("Several replicas", "Retries and outages", "Starting a trainer while the store primes")
    and in :mod:`~batchstash.client.policy`, :mod:`~batchstash.client.identity` and
    :mod:`~batchstash.client.priming`.

    Example::

        with BatchClient(["http://stash-a:8000", "http://stash-b:8000"]) as client:
            meta = client.metadata()
            for batch in client.iter_batches("train", epoch=0, device="cuda"):
                ...

        BatchClient(url, retry=RetryPolicy(budget=600))  # ride out ten minutes

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``; or several, as a sequence
            or one comma separated string (``"http://a:8000,http://b:8000"``), all serving one
            store.
        token: a bearer token sent with every request (admin endpoints need one when the server
            is configured with a token).
        timeout: seconds for connecting and for each read.
        retries: shorthand for ``retry=RetryPolicy(attempts=retries + 1)`` (``0``: never
            retry).
        backoff: shorthand for ``RetryPolicy(backoff=...)``, the first retry delay.
        transport: an ``httpx`` transport, shared by the clients of all URLs; by default each
            URL gets its own :class:`BufferTransport`, which reads each body into one buffer
            the tensors view (tests pass ``httpx.MockTransport``).
        retry: the retry policy (default: ``RetryPolicy()``); the shorthands are applied on top.
        max_delay: shorthand for ``RetryPolicy(max_delay=..., retry_after_cap=...)``: the
            longest delay between two tries, whatever ``Retry-After`` says.
        cooldown: shorthand for ``RetryPolicy(cooldown=...)``.
        max_cooldown: shorthand for ``RetryPolicy(max_cooldown=...)``.
        wait_for_prime: shorthand for ``RetryPolicy(wait_for_prime=...)``.
        data_listener: send batch requests to the data listener a server advertises (its
            ``X-Batchstash-Data-Port`` header: a second port serving the same batch URLs at
            about half the server CPU per GB); a listener that cannot be reached is skipped
            for 60 s with a warning, and ``https`` URLs never use it (it speaks no TLS).
            ``False``: every request goes to the URLs given.
        batch_type: the class of the batches read: :class:`Batch` or a subclass (its
            properties then work on batches read over HTTP). Batches are built with
            ``batch_type.from_payload(payload, metadata)``: a subclass whose constructor takes
            other arguments than :class:`Batch`'s overrides that classmethod.
        widen: attributes to convert to another dtype as batches are read, e.g.
            ``{"tokens": torch.int64}`` for token ids stored as ``int16`` (a quarter of the
            bytes on the wire and in the store); the converted tensor is a copy.
        in_flight_bytes: answer bytes a pipelined reader may keep requested beyond its
            ``prefetch``, where the link's bandwidth-delay product asks for more (see
            :class:`~batchstash.client.inflight.InFlight`); ``0``: ``prefetch`` alone.

    Attributes:
        urls: the base URLs, in the order given.
        url: the first of them (the only one for a client of one server).
        timeout: the ``timeout`` setting.
        retry: the retry policy in force.
        engine: the request path (:class:`~batchstash.client.engine.Engine`).
        reads: how batches are fetched, verified and built
            (:class:`~batchstash.client.reads.BatchReads`).
        batch_type: the class of the batches read.
        widen: the ``widen`` setting (attribute -> dtype).

    Raises:
        ValueError: a negative setting, no URL, an empty or a repeated one.
        TypeError: ``batch_type`` is not :class:`Batch` or a subclass of it, or ``widen``
            names something that is not a ``torch.dtype``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None = None,
        timeout: float = 30.0,
        retries: int | None = None,
        backoff: float | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_delay: float | None = None,
        cooldown: float | None = None,
        max_cooldown: float | None = None,
        wait_for_prime: float | None = None,
        data_listener: bool = True,
        batch_type: type[Batch] = Batch,
        widen: Mapping[str, torch.dtype] | None = None,
        in_flight_bytes: int = DEFAULT_IN_FLIGHT_BYTES,
    ) -> None:
        check_batch_type(batch_type)
        if timeout < 0:
            raise ValueError(f"timeout must not be negative, not {timeout}")
        if in_flight_bytes < 0:
            raise ValueError(f"in_flight_bytes must not be negative, not {in_flight_bytes}")
        self.retry = with_shorthands(
            retry or RetryPolicy(),
            retries=retries,
            backoff=backoff,
            max_delay=max_delay,
            cooldown=cooldown,
            max_cooldown=max_cooldown,
            wait_for_prime=wait_for_prime,
        )
        self.engine = Engine(
            url,
            self.retry,
            token=token,
            timeout=timeout,
            transport=transport,
            data_listener=data_listener,
        )
        self.urls, self.url, self.timeout = self.engine.urls, self.engine.url, self.engine.timeout
        self.reads = BatchReads(self.engine, batch_type, widen_dtypes(widen), in_flight_bytes)
        self.admin = AdminCalls(lambda *a, **k: self.engine.json(*a, **k)[0], self.retry.sleep)

    @property
    def batch_type(self) -> type[Batch]:
        """The class of the batches read."""
        return self.reads.batch_type

    @property
    def widen(self) -> Mapping[str, torch.dtype]:
        """The ``widen`` setting (attribute -> dtype)."""
        return self.reads.widen

    @property
    def in_flight_bytes(self) -> int:
        """The ``in_flight_bytes`` setting."""
        return self.reads.in_flight_bytes

    # -- the URLs -------------------------------------------------------------------------------

    def endpoints(self) -> list[EndpointState]:
        """The state of each URL, in the order given (which are down, for how long, and why)."""
        return self.engine.endpoints.states()

    def down_urls(self) -> list[str]:
        """The URLs marked down and not answering since (see :meth:`endpoints`)."""
        return [state.url for state in self.endpoints() if state.down]

    @property
    def buffers(self) -> BufferPool | None:
        """The pool bodies are received into (``None`` with a caller's own transport)."""
        return self.engine.buffers

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
        return self.reads.metadata(refresh)

    def fingerprint(self) -> str:
        """Return the current store fingerprint (its configuration hash); not cached."""
        return self.reads.fetch_metadata()[0]

    def splits(self) -> dict[str, Any]:
        """Return ``{"fingerprint", "primed", "splits": {name: {batches, data_points, stored}}}``.

        ``stored`` counts the batches encoded so far; ``primed`` is true once all are.
        """
        body, url = self.engine.json("GET", "/v1/splits")
        self.engine.identity.observe(body.get("fingerprint"), url)
        return dict(body)

    def split_batch_ids(self, split: str) -> tuple[str, list[int]]:
        """Return the store fingerprint and the batch ids of ``split`` in one request."""
        body, url = self.engine.json("GET", f"/v1/splits/{split}/batches")
        self.engine.identity.observe(body.get("fingerprint"), url)
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
        """Fetch, verify and decode one batch (a :attr:`batch_type` instance).

        Every tensor's checksum is verified; the tensors view the received bytes without a copy.

        Args:
            split: the split name.
            batch_id: the batch id.
            attributes: only these attributes (all the server decodes when ``None``).
            device: copy the batch there (pinned memory and ``non_blocking`` for CUDA; a
                tensor already there, e.g. for ``"cpu"``, is not copied: see :meth:`Batch.to`).
            fingerprint: the store fingerprint the batch must come from (an epoch plan's).

        Raises:
            NotFoundError: unknown split or batch.
            InvalidRequestError: an unknown attribute.
            NotPrimedError: the batch is still not encoded after all retries.
            ChecksumError: a tensor's bytes are corrupt.
            PayloadError: malformed bytes, or a batch other than the one asked for.
            PlanError: the batch comes from another store than ``fingerprint``.
        """
        return self.reads.batch(split, batch_id, attributes, device, fingerprint=fingerprint)

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
        place like :meth:`batch`, its checksums checked as soon as its bytes have landed (see
        :class:`~batchstash.client.framecheck.FrameChecker`). Raises what :meth:`batch` raises.
        """
        return self.reads.batches(split, batch_ids, attributes, device, fingerprint=fingerprint)

    def can_pipeline(self) -> bool:
        """Whether batch requests may be pipelined: own transports and a usable data listener."""
        return self.reads.can_pipeline()

    def pipelined_reader(
        self,
        split: str,
        wanted: list[str] | None,
        stage: DeviceStage | None,
        fingerprint: str,
        window: int,
    ) -> PipelinedReader | None:
        """A pipelined reader of ``split`` (see :meth:`BatchReads.pipelined_reader`)."""
        return self.reads.pipelined_reader(split, wanted, stage, fingerprint, window)

    def iter_batches(
        self,
        split: str,
        epoch: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int | None = None,
        attributes: Iterable[str] | None = None,
        device: str | torch.device | None = None,
        state: Mapping[str, Any] | None = None,
        batches_per_request: int | None = None,
        pipelined: bool = True,
        pad_ranks: bool = True,
        shuffle_window: int = 0,
    ) -> BatchIterator:
        """Iterate over this rank's share of one epoch of ``split``, prefetching in threads.

        **Batch composition** is fixed when the store is primed: with ``shuffle_window=0``
        which examples share a batch never changes between epochs, and ``shuffle`` reorders
        whole batches (a new order each epoch). ``shuffle_window=W`` re-deals the rows of each
        ``W`` stored batches of the rank's list into new batches of the store's batch size,
        differently every epoch (deterministic for fingerprint, seed, epoch and ``W``; see
        :mod:`~batchstash.client.redeal`); variable-length fields are re-padded to each new
        batch's longest row. On a length-bucketed store the windows pool batches of similar
        lengths.

        See :class:`~batchstash.client.iterate.BatchIterator` and
        :class:`~batchstash.client.plan.EpochPlan` for the order, the dealing to ranks and
        resuming (``state``, or ``load_state_dict`` before the first batch).

        Args:
            split: the split name.
            epoch: the epoch number (seeds the shuffle).
            shuffle: shuffle the batch order (deterministic for fingerprint, seed and epoch).
            seed: the shuffle seed, the same on every rank.
            rank: this process's rank in ``[0, world_size)``; ``None``: the rank of the
                initialized ``torch.distributed`` process group, else the ``RANK`` environment
                variable torchrun sets, else 0 (see :func:`~batchstash.client.ranks.resolve_rank`).
            world_size: the number of ranks sharing the epoch; ``None``: the process group's,
                else ``WORLD_SIZE``, else 1.
            prefetch: how many batches may be fetched ahead (``0``: fetch on demand); default
                4, or ``W + 8`` with ``shuffle_window=W``, which reads the next window while
                the trainer steps through the last one's batches.
            attributes: only these attributes.
            device: copy each batch there (for CUDA on a side stream of the iterator, from
                pinned receive buffers; see :class:`~batchstash.client.staging.DeviceStage`).
            state: a :meth:`BatchIterator.state_dict` to resume from.
            batches_per_request: batches fetched in one request (default ``prefetch // 6``
                pipelined, else ``prefetch // 3``; see :class:`BatchIterator`).
            pipelined: pipeline the requests on one connection to the data listener, read by
                one thread (``False``: a thread per request); see :class:`BatchIterator`.
            pad_ranks: equal-length rank lists, repeating the first batches of the order where
                the count does not divide (default; what DDP training needs); ``False``: every
                batch exactly once, ranks uneven by at most one batch (exact evaluation; gather
                results after the loop, not with per-step collectives).
            shuffle_window: stored batches whose rows are re-dealt together each epoch (``0``:
                none). The client holds ``W`` stored batches besides ``prefetch``: with the
                default ``prefetch``, ``2 W + 8`` batches.

        Raises:
            BatchError: with ``shuffle_window``, a field whose rows cannot be re-dealt (an
                ``is_agg`` field whose vectorizer does not declare independent rows, a varying
                field without a pad value); the message names them.
        """
        bucket_window = 0
        if shuffle_window:
            meta = self.metadata()
            field_rules(meta, meta.fields_by_attribute if attributes is None else attributes)
            bucket_window = int((meta.bucketing or {}).get("window", 0))
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
            pipelined=pipelined,
            pad_ranks=pad_ranks,
            shuffle_window=shuffle_window,
            bucket_window=bucket_window,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool of every URL (their data listeners' included)."""
        self.engine.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every URL's pool is closed)."""
        return all(endpoint.http.is_closed for endpoint in self.engine.endpoints)

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        urls = self.url if len(self.urls) == 1 else list(self.urls)
        return f"{type(self).__name__}({urls!r})"
