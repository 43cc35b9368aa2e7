"""``BatchStash``: the reference's API, a facade over the encoder, store, reader and priming."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    BatchMetadata,
    ConflictError,
    CorruptStoreError,
    NotFoundError,
    NotPrimedError,
    StaleStoreError,
    TorchConfig,
)

from .dataset.batch import DefaultBatch
from .dataset.buckets import LengthBuckets
from .dataset.datapoint import DataPoint, RowDataPoint
from .dataset.idset import DataPointIDSet
from .dataset.managers import FeatureVectorizerManager, FeatureVectorizerManagerSet
from .dataset.split import SplitStashContainer
from .encode import Encoder
from .factory import call_factory
from .prime.inputs import PrimeInputs
from .prime.plan import clear_store, describe_store, split_totals
from .prime.run import ProgressCallback, prime_store
from .prime.work import Recipe
from .store import layout
from .store.backend import open_backend
from .store.codec import check_codec
from .store.compose import decode_sources
from .store.facts import check_known
from .store.lease import JobLease, JobState
from .store.reader import StoreReader
from .store.records import Plan, read_record

__all__ = ["BatchStash"]


class BatchStash:
    """Vectorizes data points into batches of tensors, primes them in a pool, stores and loads them.

    Args:
        path: the store: a directory path (or ``file://`` URL) holding batches and records.
        split_stash_container: ids by split and raw data by id.
        vectorizer_manager_set: the vectorizers, by manager.
        batch_feature_mappings: which attribute each vectorizer encodes.
        data_point_type: the :class:`DataPoint` subclass, built as ``(id, stash, raw)``
            (:class:`RowDataPoint` by default: a row's columns are its attributes).
        batch_type: the batch class (:class:`DefaultBatch` by default).
        batch_size: data points a batch (the last batch of a split may be smaller).
        workers: priming processes; ``0`` encodes in this process.
        chunk_size: id sets per worker task; ``0`` picks one from the batch count.
        batch_limit: the most batches made per split (for debugging).
        decoded_attributes: the attributes :meth:`load` returns by default (``None``: all).
        seed: drives the shuffle of the ``train`` split and each batch's seed.
        groups: attribute groups stored together (default: one object per attribute);
            attributes a field edit of the mapping dropped are pruned from them.
        model_torch_config: the device and dtype batches are copied to by ``Batch.to()``.
        executor: where priming runs: ``process``, ``inline`` or ``ray`` (``workers=0`` is
            inline).
        ray_address: with ``executor="ray"``: ``""`` starts a local Ray, ``auto`` or
            ``ray://host:port`` joins a cluster.
        compression: how :meth:`prime` stores batch objects: ``"none"``, ``"zstd"`` or
            ``"auto"`` (zstd for the attribute groups it pays for); the ``zstd`` extra.
        compression_level: the zstd level.
        bucket_by: a data point attribute whose ``len()`` (or integer value) is its length:
            within windows of ``bucket_window`` batches of each split's planned (shuffled)
            ids, ids are sorted by it before batches are cut, so batches pad less (see
            :mod:`~batchstash.service.dataset.buckets`). Part of the plan and the fingerprint.
        bucket_window: batches a bucketing window sorts together.
    """

    def __init__(
        self,
        path: str | Path,
        split_stash_container: SplitStashContainer,
        vectorizer_manager_set: FeatureVectorizerManagerSet | Sequence[FeatureVectorizerManager],
        batch_feature_mappings: BatchFeatureMapping,
        data_point_type: type[DataPoint] = RowDataPoint,
        batch_type: type[DefaultBatch] = DefaultBatch,
        batch_size: int = 32,
        workers: int = 0,
        chunk_size: int = 0,
        batch_limit: int = sys.maxsize,
        decoded_attributes: Iterable[str] | None = None,
        seed: int = 0,
        groups: Iterable[Iterable[str]] | None = None,
        model_torch_config: TorchConfig | None = None,
        executor: str = "process",
        ray_address: str = "",
        compression: str = "none",
        compression_level: int = 3,
        bucket_by: str | None = None,
        bucket_window: int = 64,
    ) -> None:
        check_codec(compression, compression_level)
        if batch_size < 1 or workers < 0 or chunk_size < 0 or batch_limit < 1:
            raise BatchError("batch_size and batch_limit must be >= 1, workers and chunk_size >= 0")
        self.path = str(path)
        self.backend = open_backend(self.path)
        if not isinstance(vectorizer_manager_set, FeatureVectorizerManagerSet):
            vectorizer_manager_set = FeatureVectorizerManagerSet(vectorizer_manager_set)
        self.workers = workers
        self.chunk_size = chunk_size
        self.executor = executor
        self.ray_address = ray_address
        self.compression, self.compression_level = compression, compression_level
        self.model_torch_config = model_torch_config or TorchConfig()
        for split in split_stash_container.split_names:
            layout.safe_name(split, "split")
        self.decoded_attributes = None if decoded_attributes is None else set(decoded_attributes)
        check_known(self.decoded_attributes or set(), batch_feature_mappings.attributes)
        self.encoder = Encoder(
            split_stash_container,
            vectorizer_manager_set,
            batch_feature_mappings,
            data_point_type,
            batch_type,
            batch_size,
            batch_limit,
            seed,
            layout.resolve_groups(
                groups, batch_feature_mappings.attributes, batch_feature_mappings.dropped_attributes
            ),
            owner=self,
            bucketing=None if bucket_by is None else LengthBuckets(bucket_by, bucket_window),
        )
        self.factory: str | None = None
        self.factory_kwargs: dict[str, Any] = {}
        self._priming = threading.Lock()

    @classmethod
    def from_factory(cls, factory: str, **kwargs: Any) -> BatchStash:
        """Build a stash with an importable factory, so priming workers can rebuild it.

        Args:
            factory: ``package.module:function`` returning a :class:`BatchStash`.
            **kwargs: JSON-able keyword arguments of the factory (e.g. ``path``).
        """
        stash = call_factory(factory, kwargs)
        if not isinstance(stash, BatchStash):
            raise BatchError(
                f"dataset factory {factory!r} returned {type(stash).__name__}, not a BatchStash"
            )
        stash.factory, stash.factory_kwargs = factory, dict(kwargs)
        return stash

    # the dataset definition (the encoder's) ------------------------------------------------

    split_stash_container = property(lambda self: self.encoder.split_stash_container)
    vectorizer_manager_set = property(lambda self: self.encoder.vectorizer_manager_set)
    batch_feature_mappings = property(lambda self: self.encoder.batch_feature_mappings)
    data_point_type = property(lambda self: self.encoder.data_point_type)
    batch_type = property(lambda self: self.encoder.batch_type)
    batch_size = property(lambda self: self.encoder.batch_size)
    batch_limit = property(lambda self: self.encoder.batch_limit)
    seed = property(lambda self: self.encoder.seed)

    @property
    def groups(self) -> tuple[frozenset[str], ...]:
        """The attribute groups stored together."""
        return self.encoder.groups

    @property
    def label_vectorizer_manager(self) -> FeatureVectorizerManager | None:
        """The vectorizer manager that vectorizes the label."""
        mng = self.batch_feature_mappings.label_vectorizer_manager
        return None if mng is None else self.vectorizer_manager_set[mng.vectorizer_manager_name]

    @property
    def batch_metadata(self) -> BatchMetadata:
        """Fields, vectorizers, shapes, dtypes and label classes of the batches."""
        return self.encoder.batch_metadata

    @property
    def config_hash(self) -> str:
        """The store fingerprint this dataset encodes to; a change makes the store stale."""
        return self.encoder.fingerprint

    @property
    def batch_data_point_sets(self) -> list[DataPointIDSet]:
        """The id sets of every batch: the stored plan when there is one, else made now."""
        try:
            plan = read_record(self.backend, Plan)
        except CorruptStoreError:
            plan = None
        if plan is not None and plan.fingerprint == self.config_hash:
            return [DataPointIDSet.from_dict(d) for d in plan.id_sets]
        return self.encoder.plan()

    def create_batch(
        self,
        points: Sequence[DataPoint],
        split_name: str | None = None,
        batch_id: int | None = None,
    ) -> DefaultBatch:
        """Create a nascent batch of ``points`` (what priming does for each id set)."""
        return self.encoder.create_batch(points, split_name, batch_id)

    def data_points(self, id_set: DataPointIDSet) -> list[DataPoint]:
        """Build the data points of an id set from the split container."""
        return self.encoder.data_points(id_set)

    # the store (the reader's) --------------------------------------------------------------

    @cached_property
    def reader(self) -> StoreReader:
        """The store's reader, expecting this dataset's fingerprint."""
        return StoreReader(self.backend, self.config_hash, self.decoded_attributes)

    def check_fresh(self) -> None:
        """Raise :class:`StaleStoreError` if the store was built by another configuration."""
        try:
            self.reader.check_fresh()
        except NotPrimedError:
            pass  # nothing planned yet (or damaged records a prime repairs): not stale

    @property
    def is_stale(self) -> bool:
        """Whether the store holds batches of another configuration."""
        return self.reader.is_stale

    @property
    def is_primed(self) -> bool:
        """Whether every batch is stored (a manifest of the current plan exists)."""
        return self.reader.is_primed

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Per split: ``batches``, ``data_points`` and ``stored`` counts (no batch is touched)."""
        try:
            return self.reader.split_counts()
        except (NotPrimedError, StaleStoreError):  # nothing of this configuration is stored
            totals = split_totals(self.batch_data_point_sets)
            return {s: {**c, "stored": 0} for s, c in totals.items()}

    def keys(self, split: str) -> list[int]:
        """The batch ids of ``split``."""
        counts = self.split_counts()
        if split not in counts:
            raise NotFoundError(f"unknown split {split!r}; splits: {list(counts)}")
        return list(range(counts[split]["batches"]))

    def payloads(
        self, split: str, batch_ids: Sequence[int], attributes: Iterable[str] | None = None
    ) -> list[list[bytes | memoryview]]:
        """Several batches as wire payload chunks (see :meth:`StoreReader.payloads`)."""
        return self.reader.payloads(split, batch_ids, attributes)

    def payload(
        self, split: str, batch_id: int, attributes: Iterable[str] | None = None
    ) -> list[bytes | memoryview]:
        """One batch as wire payload chunks."""
        return self.payloads(split, [batch_id], attributes)[0]

    def load(
        self, split: str, batch_id: int, attributes: Iterable[str] | None = None
    ) -> DefaultBatch:
        """Load one decoded batch; only the groups holding the wanted attributes are read.

        The batch is of :attr:`batch_type`, holds this stash as its ``batch_stash``, and
        rebuilds its ``data_points`` from the split container when first asked for them.

        Args:
            split: the split name.
            batch_id: the batch id.
            attributes: the attributes to decode (default :attr:`decoded_attributes`, or all).
        """
        wanted, sources = self.reader.read_sources(split, batch_id, attributes)
        return self.encoder.batch_type.from_stored(self, decode_sources(sources, wanted))

    def get(self, split: str, batch_id: int, default: Any = None) -> DefaultBatch | Any:
        """Like :meth:`load`, but ``default`` when the batch is unknown or not stored yet."""
        try:
            return self.load(split, batch_id)
        except (NotFoundError, NotPrimedError):
            return default

    # priming and clearing (the writer's) ---------------------------------------------------

    def acquire_lease(self, kind: str) -> JobLease:
        """Take the store's job lease (``prime`` or ``clear``).

        Raises:
            ConflictError: another job holds it.
        """
        return JobLease.acquire(self.backend, kind)

    def describe(self) -> None:
        """Write the plan and the store's description if the store has none (nothing encoded)."""
        try:
            describe_store(self.backend, self.encoder, self.decoded_attributes)
        finally:
            self.reader.refresh()

    def prime(
        self,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        lease: JobLease | None = None,
        verify: bool = False,
    ) -> int:
        """Encode and store every batch not stored yet; batches already stored and valid are kept.

        Which are stored is read from a listing of the store checked against the sizes and
        versions recorded when they were written (objects changed since are read and verified).

        Args:
            progress: called as ``progress(split, done, total)`` after each stored batch (and once
                per split at the start with the batches found already stored).
            cancel: set it from another thread to stop; raises :class:`PrimeCancelledError`.
            lease: the store's job lease, when the caller took it (else taken here).
            verify: read and verify every stored object first (re-encoding those that fail).

        Returns:
            The number of batches encoded by this call.

        Raises:
            StaleStoreError: the store holds another configuration's batches.
            ConflictError: a prime or clear is already running on this store.
            VectorizerError: a vectorizer failed (names split, batch, data point and field).
        """
        if not self._priming.acquire(blocking=False):
            if lease is not None:
                lease.finish(JobState.FAILED)
            raise ConflictError("a prime is already running")
        try:
            return prime_store(
                self.prime_inputs(verify=verify),
                lease=lease,
                progress=progress,
                cancel=cancel,
                demand=self.reader.demand,  # batches the server's reads found missing go first
            )
        finally:
            self.reader.refresh()  # this process wrote the records: read them again
            self._priming.release()

    def prime_inputs(self, verify: bool = False) -> PrimeInputs:
        """What :meth:`prime` primes with: this stash's encoder, store and executor settings."""
        recipe = None if self.factory is None else Recipe(self.factory, self.factory_kwargs)
        return PrimeInputs.of(
            self,
            recipe,
            executor=self.executor,
            workers=self.workers,
            chunk_size=self.chunk_size,
            compression=self.compression,
            compression_level=self.compression_level,
            verify=verify,
            address=self.ray_address,
        )

    @property
    def is_priming(self) -> bool:
        """Whether :meth:`prime` is running in this process."""
        return self._priming.locked()

    def clear_all(self) -> None:
        """Remove every encoded batch, the plan and the records (never the source data).

        Raises:
            ConflictError: a prime (here or in another process) holds the store's lease.
        """
        try:
            clear_store(self.backend)
        finally:
            self.reader.refresh()

    def write(self, depth: int = 0, writer: TextIO | None = None) -> None:
        """Write a readable summary of the stash."""
        out, pad = writer or sys.stdout, "  " * depth
        out.write(
            f"{pad}{type(self).__name__}: {self.path} (config {self.config_hash[:12]}, "
            f"batch_size={self.batch_size}, workers={self.workers})\n"
        )
        for split, entry in self.split_counts().items():
            out.write(
                f"{pad}  {split}: {entry['stored']}/{entry['batches']} batches stored, "
                f"{entry['data_points']} data points\n"
            )
