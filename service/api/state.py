"""What the running server holds: settings, the stash, the prime job and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from batchstash.service.config import Settings
from batchstash.service.engine import BatchStash
from batchstash.service.prime.job import PrimeJob

from .metrics import Metrics

__all__ = ["ServerState", "build_stash"]


@dataclass
class ServerState:
    """The server's long-lived objects (``app.state.batchstash``)."""

    settings: Settings
    stash: BatchStash
    job: PrimeJob
    metrics: Metrics
    token: str | None


def build_stash(settings: Settings) -> BatchStash:
    """Build the stash from the settings' dataset factory, store in ``data_dir``."""
    stash = BatchStash.from_factory(
        settings.dataset, path=str(settings.data_dir), **settings.dataset_options
    )
    stash.workers, stash.chunk_size = settings.workers, settings.chunk_size
    return stash
