"""What the running server holds: settings, the store's reader, the job, the metrics."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchstash.service.config import Settings
from batchstash.service.prime.job import PrimeJob
from batchstash.service.stash import BatchStash
from batchstash.service.store.backend import StoreBackend
from batchstash.service.store.cache import ObjectCache
from batchstash.service.store.local import LocalBackend
from batchstash.service.store.reader import StoreReader

from .metrics import Metrics

__all__ = ["ServerState", "build_stash", "object_cache"]


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
        data_port: the data listener's port, advertised on every API response (``None``: no
            data listener runs).
    """

    settings: Settings
    reader: StoreReader
    job: PrimeJob
    metrics: Metrics
    token: str | None
    stash: BatchStash | None = None
    data_port: int | None = None


def build_stash(settings: Settings) -> BatchStash:
    """Build the stash from the settings' dataset factory, its store at ``data_dir``."""
    stash = BatchStash.from_factory(
        settings.dataset, path=settings.data_dir, **settings.dataset_options
    )
    stash.workers, stash.chunk_size = settings.workers, settings.chunk_size
    stash.executor, stash.ray_address = settings.executor, settings.ray_address
    return stash


def object_cache(settings: Settings, backend: StoreBackend) -> ObjectCache | None:
    """The local cache of verified objects for a remote store (``None`` for a directory)."""
    if isinstance(backend, LocalBackend) or settings.cache_max_bytes == 0:
        return None
    directory = settings.cache_dir
    if directory is None:
        name = hashlib.sha256(backend.url.encode()).hexdigest()[:16]
        directory = str(Path(tempfile.gettempdir()) / f"batchstash-cache-{name}")
    return ObjectCache(directory, settings.cache_max_bytes, namespace=backend.url)
