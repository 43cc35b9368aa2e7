"""The batch stash: plans batches, primes them in a process pool, stores and loads them."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import torch
import xxhash

from batchstash.client import (
    Batch,
    BatchError,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StaleStoreError,
    TorchConfig,
    wire,
)

from .factory import load_factory
from .prime.run import ProgressCallback, run_prime
from .reads import StashReads
from .stash.batch import DefaultBatch
from .stash.datapoint import DataPoint
from .stash.idset import DataPointIDSet, plan_id_sets
from .stash.split import SplitStashContainer
from .stash.vectorize import FeatureVectorizerManager, FeatureVectorizerManagerSet
from .store.composite import CompositeBatchStore, expect_metadata, group_name, resolve_groups
from .store.files import safe_name
from .store.manifest import MANIFEST_FILE, PLAN_FILE, RecordHashes, StoreRecord, write_record

__all__ = ["BatchStash"]

logger = logging.getLogger(__name__)

STORE_FORMAT = 1


class BatchStash(StashReads):
    """Vectorizes data points into batches of tensors, primes them in a process pool, stores them.

    Args:
        path: the store directory (batches, plan and manifest).
        split_stash_container: ids by split and raw data by id.
        vectorizer_manager_set: the vectorizers, by manager.
        batch_feature_mappings: which attribute each vectorizer encodes.
        data_point_type: the :class:`DataPoint` subclass, built as ``(id, stash, raw)``.
        batch_type: the batch class (:class:`DefaultBatch` by default).
        batch_size: data points a batch (the last batch of a split may be smaller).
        workers: priming processes; ``0`` encodes in this process.
        chunk_size: id sets per worker task; ``0`` picks one from the batch count.
        batch_limit: the most batches made per split (for debugging).
        decoded_attributes: the attributes :meth:`load` returns by default (``None``: all).
        seed: drives the shuffle of the ``train`` split and each batch's torch seed.
        groups: attribute groups stored together (default: one file per attribute).
        model_torch_config: the device and dtype batches are copied to by ``Batch.to()``.
    """

    def __init__(
        self,
        path: str | Path,
        split_stash_container: SplitStashContainer,
        vectorizer_manager_set: FeatureVectorizerManagerSet | Sequence[FeatureVectorizerManager],
        batch_feature_mappings: BatchFeatureMapping,
        data_point_type: type[DataPoint],
        batch_type: type[DefaultBatch] = DefaultBatch,
        batch_size: int = 32,
        workers: int = 0,
        chunk_size: int = 0,
        batch_limit: int = sys.maxsize,
        decoded_attributes: Iterable[str] | None = None,
        seed: int = 0,
        groups: Iterable[Iterable[str]] | None = None,
        model_torch_config: TorchConfig | None = None,
    ) -> None:
        if batch_size < 1 or workers < 0 or chunk_size < 0 or batch_limit < 1:
            raise BatchError("batch_size and batch_limit must be >= 1, workers and chunk_size >= 0")
        self.path = Path(path)
        self.split_stash_container = split_stash_container
        if not isinstance(vectorizer_manager_set, FeatureVectorizerManagerSet):
            vectorizer_manager_set = FeatureVectorizerManagerSet(vectorizer_manager_set)
        self.vectorizer_manager_set = vectorizer_manager_set
        self.batch_feature_mappings = batch_feature_mappings
        self.data_point_type = data_point_type
        self.batch_type = batch_type
        self.batch_size = batch_size
        self.workers = workers
        self.chunk_size = chunk_size
        self.batch_limit = batch_limit
        self.seed = seed
        self.model_torch_config = model_torch_config or TorchConfig()
        for split in split_stash_container.split_names:
            safe_name(split, "split")
        self.decoded_attributes = None if decoded_attributes is None else set(decoded_attributes)
        self._check_attributes(self.decoded_attributes)
        self.store = CompositeBatchStore(
            self.path, resolve_groups(groups, batch_feature_mappings.attributes)
        )
        for fld in batch_feature_mappings.fields:  # fail at construction on a missing vectorizer
            self.vectorizer_manager_set[self._manager_of(fld.attr)][fld.feature_id]
        self.factory: str | None = None
        self.factory_kwargs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._priming = False
        self._hashes = RecordHashes(self.path)

    @classmethod
    def from_factory(cls, factory: str, **kwargs: Any) -> BatchStash:
        """Build a stash with an importable factory, so priming workers can rebuild it.

        Args:
            factory: ``package.module:function`` returning a :class:`BatchStash`.
            **kwargs: JSON-able keyword arguments of the factory (e.g. ``path``).
        """
        stash = load_factory(factory)(**kwargs)
        if not isinstance(stash, BatchStash):
            raise BatchError(
                f"dataset factory {factory!r} returned {type(stash).__name__}, not a BatchStash"
            )
        stash.factory, stash.factory_kwargs = factory, dict(kwargs)
        return stash

    def _manager_of(self, attr: str) -> str:
        for mng in self.batch_feature_mappings.manager_mappings:
            if any(f.attr == attr for f in mng.fields):
                return mng.vectorizer_manager_name
        raise BatchError(f"attribute {attr!r} is not mapped")

    def _check_attributes(self, attributes: Iterable[str] | None) -> None:
        if attributes is None:
            return
        unknown = set(attributes) - set(self.batch_feature_mappings.attributes)
        if unknown:
            raise InvalidRequestError(
                f"unknown attributes {sorted(unknown)}; "
                f"known: {sorted(self.batch_feature_mappings.attributes)}"
            )

    @property
    def label_vectorizer_manager(self) -> FeatureVectorizerManager | None:
        """The vectorizer manager that vectorizes the label."""
        mng = self.batch_feature_mappings.label_vectorizer_manager
        return None if mng is None else self.vectorizer_manager_set[mng.vectorizer_manager_name]

    @cached_property
    def batch_metadata(self) -> BatchMetadata:
        """Fields, vectorizers, shapes, dtypes and label classes of the batches."""
        fields = {}
        for mng in self.batch_feature_mappings.manager_mappings:
            for fld in mng.fields:
                vec = self.vectorizer_manager_set[mng.vectorizer_manager_name][fld.feature_id]
                fields[fld.attr] = BatchFieldMetadata(fld, vec.metadata())
        return BatchMetadata(
            _qualname(self.data_point_type),
            _qualname(self.batch_type),
            self.batch_feature_mappings,
            fields,
        )

    @cached_property
    def batch_data_point_sets(self) -> list[DataPointIDSet]:
        """The id sets of every batch of every split, deterministic for :attr:`seed`."""
        return plan_id_sets(
            self.split_stash_container.keys_by_split, self.batch_size, self.seed, self.batch_limit
        )

    @cached_property
    def config_hash(self) -> str:
        """Hash of everything that determines the stored bytes; a change makes the store stale."""
        doc = {
            "store_format": STORE_FORMAT,
            "payload_format": wire.FORMAT_VERSION,
            "mapping": self.batch_feature_mappings.to_dict(),
            "vectorizers": self.vectorizer_manager_set.config(),
            "groups": [group_name(g) for g in self.store.groups],
            "batch_size": self.batch_size,
            "batch_limit": min(self.batch_limit, 2**62),
            "seed": self.seed,
            "data_point_type": _qualname(self.data_point_type),
            "batch_type": _qualname(self.batch_type),
            "data": self.split_stash_container.fingerprint(),
        }
        return str(xxhash.xxh3_128_hexdigest(json.dumps(doc, sort_keys=True).encode()))

    def _record(self) -> StoreRecord:
        splits: dict[str, dict[str, int]] = {}
        for id_set in self.batch_data_point_sets:
            entry = splits.setdefault(id_set.split_name, {"batches": 0, "data_points": 0})
            entry["batches"] += 1
            entry["data_points"] += len(id_set.data_point_ids)
        return StoreRecord(
            self.config_hash,
            [group_name(g) for g in self.store.groups],
            splits,
            [s.to_dict() for s in self.batch_data_point_sets],
        )

    def check_fresh(self) -> None:
        """Raise :class:`StaleStoreError` if the store was built by another configuration."""
        for name in (MANIFEST_FILE, PLAN_FILE):
            stored = self._hashes.get(name)
            if stored is not None and stored != self.config_hash:
                raise StaleStoreError(
                    f"the store at {self.path} was encoded with configuration "
                    f"{stored[:12]}, this stash is {self.config_hash[:12]}: "
                    "clear it (clear_all() or 'batchstash clear') and prime again"
                )

    @property
    def is_stale(self) -> bool:
        """Whether the store holds batches of another configuration."""
        try:
            self.check_fresh()
        except StaleStoreError:
            return True
        return False

    @property
    def is_primed(self) -> bool:
        """Whether every batch is stored (the manifest exists and matches this configuration)."""
        return self._hashes.get(MANIFEST_FILE) == self.config_hash

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Per split: ``batches``, ``data_points`` and ``stored`` (files present) counts."""
        counts = {
            split: {
                "batches": len(sets),
                "data_points": sum(len(s.data_point_ids) for s in sets),
                "stored": 0,
            }
            for split, sets in self._sets_by_split.items()
        }
        if not self.is_stale:
            for id_set in self.batch_data_point_sets:
                if self.store.exists(id_set.split_name, id_set.batch_id):
                    counts[id_set.split_name]["stored"] += 1
        return counts

    def keys(self, split: str) -> list[int]:
        """The batch ids of ``split``."""
        return [s.batch_id for s in self._split_sets(split)]

    @cached_property
    def _sets_by_split(self) -> dict[str, list[DataPointIDSet]]:
        by_split: dict[str, list[DataPointIDSet]] = {
            name: [] for name in self.split_stash_container.split_names
        }
        for id_set in self.batch_data_point_sets:
            by_split[id_set.split_name].append(id_set)
        return by_split

    def _split_sets(self, split: str) -> list[DataPointIDSet]:
        try:
            return self._sets_by_split[split]
        except KeyError:
            raise NotFoundError(
                f"unknown split {split!r}; splits: {list(self.split_stash_container.split_names)}"
            ) from None

    def _id_set(self, split: str, batch_id: int) -> DataPointIDSet:
        sets = self._split_sets(split)  # batch ids are 0..n-1 within a split
        if 0 <= batch_id < len(sets) and sets[batch_id].batch_id == batch_id:
            return sets[batch_id]
        raise NotFoundError(f"split {split!r} has no batch {batch_id}")

    def create_batch(
        self,
        points: Sequence[DataPoint],
        split_name: str | None = None,
        batch_id: int | None = None,
    ) -> DefaultBatch:
        """Create a nascent batch of ``points`` (what priming does for each id set)."""
        return self.batch_type(self, -1 if batch_id is None else batch_id, split_name or "", points)

    def data_points(self, id_set: DataPointIDSet) -> list[DataPoint]:
        """Build the data points of an id set from the split container."""
        container = self.split_stash_container
        make: Callable[..., DataPoint] = self.data_point_type  # subclasses add the raw field
        return [make(i, self, container[i]) for i in id_set.data_point_ids]

    def encode_id_set(self, id_set: DataPointIDSet) -> Batch:
        """Encode one id set (seeded by its torch seed context) and store its group files."""
        torch.manual_seed(int(id_set.torch_seed_context.get("seed", self.seed)))
        batch = self.create_batch(self.data_points(id_set), id_set.split_name, id_set.batch_id)
        batch.encode()
        self.store.write(id_set.split_name, id_set.batch_id, batch.attributes, self._expect(id_set))
        return batch

    def _expect(self, id_set: DataPointIDSet) -> dict[str, str]:
        return expect_metadata(
            id_set.split_name, id_set.batch_id, self.config_hash, id_set.data_point_ids
        )

    def prime(
        self,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Encode and store every batch not stored yet; batches already stored and valid are kept.

        Args:
            progress: called as ``progress(split, done, total)`` after each stored batch (and once
                per split at the start with the batches found already stored).
            cancel: set it from another thread to stop; raises :class:`PrimeCancelledError`.

        Returns:
            The number of batches encoded by this call.

        Raises:
            StaleStoreError: the store holds another configuration's batches.
            ConflictError: a prime is already running on this stash.
            VectorizerError: a vectorizer failed (names split, batch, data point and field).
        """
        with self._lock:
            if self._priming:
                raise ConflictError("a prime is already running")
            self._priming = True
        try:
            return self._prime(progress, cancel)
        finally:
            self._priming = False

    @property
    def is_priming(self) -> bool:
        """Whether :meth:`prime` is running on this stash."""
        return self._priming

    def _prime(self, progress: ProgressCallback | None, cancel: threading.Event | None) -> int:
        self.check_fresh()
        record = self._record()
        self.path.mkdir(parents=True, exist_ok=True)
        write_record(self.path / PLAN_FILE, record)
        todo = [
            s
            for s in self.batch_data_point_sets
            if not self.store.is_stored(s.split_name, s.batch_id, self._expect(s))
        ]
        logger.info(
            "priming %d of %d batches with %d workers",
            len(todo),
            len(self.batch_data_point_sets),
            self.workers,
        )
        totals = {split: entry["batches"] for split, entry in record.splits.items()}
        run_prime(
            todo,
            totals,
            self.encode_id_set,
            workers=self.workers,
            chunk_size=self.chunk_size,
            factory=self.factory,
            factory_kwargs=self.factory_kwargs,
            progress=progress,
            cancel=cancel,
        )
        write_record(self.path / MANIFEST_FILE, record)
        return len(todo)

    def clear_all(self) -> None:
        """Remove every encoded batch, the plan and the manifest (never the source data).

        Raises:
            ConflictError: a prime is running.
        """
        if self._priming:
            raise ConflictError("cannot clear while a prime is running; cancel it first")
        (self.path / MANIFEST_FILE).unlink(missing_ok=True)
        self.store.clear()
        (self.path / PLAN_FILE).unlink(missing_ok=True)

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


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
