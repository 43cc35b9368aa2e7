"""What the running server holds: settings, the store's reader, the job, the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from batchstash.service.config import Settings
from batchstash.service.prime.inputs import PrimeInputs
from batchstash.service.prime.job import PrimeJob
from batchstash.service.store.reader import StoreReader

from .metrics import Metrics

__all__ = ["WARM_WORKERS_S", "ServerState", "prime_inputs"]

WARM_WORKERS_S = 600.0
"""Seconds a server keeps its idle priming workers (torch imported, the dataset built), so a
prime after a prime starts without spawning them again."""


@dataclass
class ServerState:
    """The server's long-lived objects (``app.state.batchstash``).

    Attributes:
        settings: the server settings.
        reader: serves every read from the store alone.
        job: prime, cancel, clear and status through the store's job record.
        metrics: the Prometheus metrics.
        token: the bearer token (``None``: admin is open).
        data_port: the data listener's port, advertised on every API response (``None``: no
            data listener runs).
    """

    settings: Settings
    reader: StoreReader
    job: PrimeJob
    metrics: Metrics
    token: str | None
    data_port: int | None = None

    @property
    def has_dataset(self) -> bool:
        """Whether this server has the dataset (it can prime; a read-only replica has not)."""
        return self.job.inputs is not None


def prime_inputs(settings: Settings) -> PrimeInputs:
    """What the settings prime with: the dataset factory's, its store at ``data_dir``.

    The factory builds the dataset (a ``BatchStash``); the executor, its workers and the chunk
    size are the settings', whatever the factory chose.

    Raises:
        BatchError: the factory cannot be imported, fails, or builds no ``BatchStash``.
    """
    return PrimeInputs.from_factory(
        settings.dataset,
        dict(path=settings.data_dir, **settings.dataset_options),
        executor=settings.executor,
        workers=settings.workers,
        chunk_size=settings.chunk_size,
        compression=settings.compression,
        compression_level=settings.compression_level,
        verify=settings.prime_verify,
        address=settings.ray_address,
        keep_s=WARM_WORKERS_S,
    )
