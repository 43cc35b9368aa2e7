"""What one consumer process does in a load run, by kind: set up, then fetch step by step.

A kind is a class built with ``(task, rank)`` in the consumer process: it sets itself up (a
client, its batch ids, one warm-up fetch) before the clock starts. :func:`fetch` then calls its
``begin()`` and its ``step()`` (one request: ``(batches, tensor bytes)``, ``None`` at the end of
the data) until the quota or the deadline, timing each step.

Kinds (:data:`FETCHERS`):

* ``iter``: ``BatchClient.iter_batches`` (shuffled epoch, this consumer's rank, ``prefetch``,
  ``device``); a step is one ``next()``: the trainer's data wait.
* ``seq``: ``BatchClient.batch`` one id after another; a step is request to tensors.
* ``raw`` / ``raw_data``: :mod:`benchmarks.rawclient`, ``per_request`` ids a request, on the API
  port / on the data port the server advertises; a step is one request (no verification).
* ``naive``: ``httpx`` GET from the minimal baseline server, then ``wire.decode`` (same checks).
* ``tcp_*``: the ceiling's receiver (:class:`benchmarks.ceiling.Receiver`); a step is a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from . import ceiling, rawclient

__all__ = ["FETCHERS", "Fetcher", "LoadTask", "fetch"]


@dataclass(frozen=True)
class LoadTask:
    """One load run.

    Attributes:
        url: the server, on 127.0.0.1.
        kind: a key of :data:`FETCHERS`.
        consumers: concurrent consumer processes.
        max_batches: batches fetched by all consumers together, at most.
        max_seconds: the run stops after this long, whatever the count.
        prefetch: batches fetched ahead (``iter``).
        split: the split (batchstash) or the key prefix (naive server).
        batch_ids: the naive server's batch ids (batchstash asks the server).
        device: ``iter_batches``' ``device`` (``None``: the decoded tensors as they are).
        per_request: batch ids a request (``raw``).
        token: the bearer token, if the server needs one.
        pipelined: ``iter_batches``' ``pipelined`` (``False``: a prefetch thread a request).
        shuffle_window: ``iter_batches``' ``shuffle_window`` (``0``: the stored batches).
    """

    url: str
    kind: str
    consumers: int
    max_batches: int
    max_seconds: float
    prefetch: int = 4
    split: str = "train"
    batch_ids: tuple[int, ...] = ()
    device: str | None = None
    per_request: int = 8
    token: str | None = None
    pipelined: bool = True
    shuffle_window: int = 0


class Fetcher(Protocol):
    """A consumer kind, set up in its process (subclasses inherit the no-op ``begin``)."""

    def begin(self) -> None:
        """Start what runs in the background (prefetching), when the clock starts."""
        return

    def step(self) -> tuple[int, int] | None:
        """Fetch once: ``(batches, tensor bytes)``, ``None`` when there is nothing more."""

    def close(self) -> None:
        """Release the client."""


def _tensor_bytes(tensors: Any) -> int:
    return sum(int(t.nbytes) for t in tensors.values())


class _Share:
    """This rank's share of the batch ids, handed out in turn (from the start again at its end)."""

    def __init__(self, ids: list[int], rank: int, consumers: int) -> None:
        self.ids, self.turn = ids[rank::consumers], 0

    def take(self, count: int = 1) -> list[int]:
        """The next ``count`` ids."""
        out = [self.ids[(self.turn + i) % len(self.ids)] for i in range(count)]
        self.turn += count
        return out


class _ClientFetcher(Fetcher):
    """A ``BatchClient``, this rank's share of the split's ids, one batch fetched to warm up."""

    def __init__(self, task: LoadTask, rank: int) -> None:
        from batchstash.client.http import BatchClient

        self.task, self.rank = task, rank
        self.client = BatchClient(task.url, token=task.token, timeout=60.0, retries=0)
        ids = self.client.batch_ids(task.split)
        self.client.batch(task.split, ids[0])
        self.share = _Share(ids, rank, task.consumers)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class _Seq(_ClientFetcher):
    def step(self) -> tuple[int, int]:
        """``batch()`` of the next id."""
        (batch_id,) = self.share.take()
        return 1, _tensor_bytes(self.client.batch(self.task.split, batch_id).attributes)


class _Iter(_ClientFetcher):
    it: Any = None

    def __init__(self, task: LoadTask, rank: int) -> None:
        super().__init__(task, rank)
        warm = self._iterator(epoch=1)  # the first iterator's imports and set-up: not timed
        try:
            next(warm, None)
        finally:
            warm.close()

    def _iterator(self, epoch: int) -> Any:
        t = self.task
        return self.client.iter_batches(
            t.split,
            epoch=epoch,
            shuffle=True,
            rank=self.rank,
            world_size=t.consumers,
            prefetch=t.prefetch,
            device=t.device,
            pipelined=t.pipelined,
            shuffle_window=t.shuffle_window,
        )

    def begin(self) -> None:
        """Create the iterator (its prefetching starts with the clock)."""
        self.it = self._iterator(epoch=0)

    def step(self) -> tuple[int, int] | None:
        """One ``next()``."""
        batch = next(self.it, None)
        return None if batch is None else (1, _tensor_bytes(batch.attributes))

    def close(self) -> None:
        """Stop the iterator's threads, close the client."""
        if self.it is not None:
            self.it.close()
        super().close()


class _Raw(Fetcher):
    """The raw-socket client, ``per_request`` of this rank's ids a request."""

    def __init__(self, task: LoadTask, rank: int, data_port: bool = False) -> None:
        self.task = task
        self.client, ids = rawclient.connect(task.url, task.split, task.token, data_port)
        self.share = _Share(ids, rank, task.consumers)
        self.step()

    def step(self) -> tuple[int, int]:
        """One payloads request of the next ``per_request`` ids."""
        batches = self.client.payloads(self.task.split, self.share.take(self.task.per_request))
        return len(batches), sum(_tensor_bytes(b) for b in batches)

    def close(self) -> None:
        """Close the socket."""
        self.client.close()


class _Naive(Fetcher):
    """``httpx`` GETs from the naive server, decoded (and verified) by ``wire.decode``."""

    def __init__(self, task: LoadTask, rank: int) -> None:
        import httpx

        from batchstash.client import wire

        self.task, self.wire = task, wire
        self.http = httpx.Client(base_url=task.url, timeout=60.0)
        self.share = _Share(list(task.batch_ids), rank, task.consumers)
        self.step()

    def step(self) -> tuple[int, int]:
        """GET and decode the next id."""
        (batch_id,) = self.share.take()
        response = self.http.get(f"/batches/{self.task.split}/{batch_id}")
        response.raise_for_status()
        return 1, _tensor_bytes(self.wire.decode(bytearray(response.content)).tensors)

    def close(self) -> None:
        """Close the client."""
        self.http.close()


FETCHERS: dict[str, Callable[[LoadTask, int], Fetcher]] = {
    "iter": _Iter,
    "seq": _Seq,
    "raw": _Raw,
    "raw_data": partial(_Raw, data_port=True),
    "naive": _Naive,
    **dict.fromkeys(ceiling.KINDS, ceiling.Receiver),
}


def fetch(fetcher: Fetcher, quota: int, deadline: float) -> tuple[int, int, list[float]]:
    """Step until ``quota`` batches or ``deadline``: batches, tensor bytes, each step's seconds."""
    count = size = 0
    latencies: list[float] = []
    fetcher.begin()
    while count < quota and time.perf_counter() < deadline:
        start = time.perf_counter()
        got = fetcher.step()
        if got is None:
            break
        latencies.append(time.perf_counter() - start)
        count, size = count + got[0], size + got[1]
    return count, size, latencies
