"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Requests are counted and timed per route template by a plain ASGI middleware (no per-request
task, unlike ``BaseHTTPMiddleware``); the prime and store gauges are read from the store's
records when ``/metrics`` is scraped, so every replica of a store reports the same job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

if TYPE_CHECKING:
    from batchstash.service.prime.job import PrimeJob
    from batchstash.service.store.reader import StoreReader

__all__ = ["Metrics", "RequestMetrics"]

_STATES = ("idle", "running", "done", "failed", "cancelled", "interrupted")


class Metrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)  # cpu, memory, fds, GC: the process's own
        self.batches_served = Counter(
            "batchstash_batches_served", "Batch payloads served", ["split"], registry=self.registry
        )
        self.bytes_served = Counter(
            "batchstash_bytes_served", "Batch payload bytes served", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "batchstash_batch_seconds",
            "Time to read, verify and compose a batch payload",
            registry=self.registry,
        )
        self.requests = Counter(
            "batchstash_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "batchstash_request_seconds",
            "HTTP request latency by route template (until the last body byte is sent)",
            ["route"],
            registry=self.registry,
        )
        self.send_seconds = Histogram(
            "batchstash_send_seconds",
            "Data listener: time putting one response on its connection (long when the link or "
            "the client is the limit: the socket's buffer is full)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.errors = Counter(
            "batchstash_errors", "Error responses", ["code"], registry=self.registry
        )
        self.prime_done = Gauge(
            "batchstash_prime_batches_done",
            "Batches stored by the store's prime job",
            ["split"],
            registry=self.registry,
        )
        self.prime_total = Gauge(
            "batchstash_prime_batches_total", "Batches planned", ["split"], registry=self.registry
        )
        self.prime_state = Gauge(
            "batchstash_prime_state",
            "1 for the store's prime job state, 0 for the others",
            ["state"],
            registry=self.registry,
        )
        self.prime_rate = Gauge(
            "batchstash_prime_batches_per_second", "Priming rate", registry=self.registry
        )
        self.prime_eta = Gauge(
            "batchstash_prime_eta_seconds", "Seconds until the prime ends", registry=self.registry
        )
        self.store_bytes = Gauge(
            "batchstash_store_bytes", "Bytes of the stored batch objects", registry=self.registry
        )
        self.store_primed = Gauge(
            "batchstash_store_primed", "1 when every batch is stored", registry=self.registry
        )
        self.data_sendfile = Gauge(
            "batchstash_data_sendfile",
            "How the data listener sends stored files, by its data_sendfile setting: "
            "1 sendfile, 0 mapped pages, -1 while auto measures both (or has had no stored "
            "file to send: an S3 store's objects go out as bytes)",
            ["setting"],
            registry=self.registry,
        )

    def observe_send_way(self, setting: str, sendfile: bool | None) -> None:
        """Record how the data listener sends (``None``: ``auto`` is measuring)."""
        self.data_sendfile.labels(setting).set(-1 if sendfile is None else int(sendfile))

    def observe_served(self, split: str, batches: int, size: int, seconds: float) -> None:
        """Count ``batches`` payloads of ``size`` bytes served, read in ``seconds``."""
        self.batch_seconds.observe(seconds)
        self.batches_served.labels(split).inc(batches)
        self.bytes_served.inc(size)

    def observe_job(self, job: PrimeJob) -> None:
        """Update the prime gauges from a job's progress."""
        body = job.snapshot()
        for split, entry in body["splits"].items():
            self.prime_done.labels(split).set(entry["done"])
            self.prime_total.labels(split).set(entry["total"])
        for state in _STATES:
            self.prime_state.labels(state).set(1 if body["state"] == state else 0)
        self.prime_rate.set(body.get("rate") or 0)
        self.prime_eta.set(body.get("eta_s") or 0)
        self.store_bytes.set(body.get("bytes") or 0)

    def observe_store(self, job: PrimeJob, reader: StoreReader) -> None:
        """Refresh the job and store gauges (called when ``/metrics`` is scraped)."""
        self.observe_job(job)
        manifest = reader.manifest()
        if manifest is not None:
            self.store_bytes.set(manifest.bytes)
        self.store_primed.set(1 if reader.is_primed else 0)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template.

    Args:
        app: the ASGI app.
        metrics: where to count.
    """

    def __init__(self, app: Callable[..., Any], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the app, counting the request when its response is done."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status[0])).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - start)
