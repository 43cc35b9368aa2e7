"""What the running server holds: settings, the store's reader, the job, the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from batchstash.service.config import Settings
from batchstash.service.prime.job import PrimeJob
from batchstash.service.stash import BatchStash
from batchstash.service.store.reader import StoreReader

from .metrics import Metrics

__all__ = ["ServerState", "build_stash"]


@dataclass
class ServerState:
    """The server's long-lived objects (``app.state.batchstash``).

    Attributes:
        settings: the server settings.
        reader: serves every read from the store alone.
        job: prime, cancel, clear and status through the store's job record.
        metrics: the Prometheus metrics.
        token: the bearer token (``None``: admin is open).
        stash: the dataset's stash (``None`` on a read-only replica).
    """

    settings: Settings
    reader: StoreReader
    job: PrimeJob
    metrics: Metrics
    token: str | None
    stash: BatchStash | None = None


def build_stash(settings: Settings) -> BatchStash:
    """Build the stash from the settings' dataset factory, its store at ``data_dir``."""
    stash = BatchStash.from_factory(
        settings.dataset, path=settings.data_dir, **settings.dataset_options
    )
    stash.workers, stash.chunk_size = settings.workers, settings.chunk_size
    stash.executor = settings.executor
    return stash
