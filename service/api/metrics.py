"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from batchstash.service.prime.job import PrimeJob

__all__ = ["Metrics"]


class Metrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.prime_done = Gauge(
            "batchstash_prime_batches_done",
            "Batches stored by the prime",
            ["split"],
            registry=self.registry,
        )
        self.prime_total = Gauge(
            "batchstash_prime_batches_total", "Batches planned", ["split"], registry=self.registry
        )
        self.errors = Counter(
            "batchstash_errors", "Error responses", ["code"], registry=self.registry
        )

    def observe_job(self, job: PrimeJob) -> None:
        """Update the prime gauges from a job's progress."""
        for split, entry in job.snapshot()["splits"].items():
            self.prime_done.labels(split).set(entry["done"])
            self.prime_total.labels(split).set(entry["total"])
