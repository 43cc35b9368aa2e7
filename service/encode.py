"""The encoder: a dataset definition as tensors of one id set, its fingerprint and metadata."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
import xxhash

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    ConfigBatchFeatureMapping,
    TorchConfig,
    VectorizerError,
    wire,
)

from .dataset.batch import DefaultBatch
from .dataset.buckets import LengthBuckets, bucketed, length_of
from .dataset.datapoint import DataPoint
from .dataset.idset import DataPointIDSet, plan_id_sets
from .dataset.managers import FeatureVectorizerManagerSet
from .dataset.split import SplitStashContainer
from .store import layout
from .store.records import FORMAT as STORE_FORMAT

__all__ = ["BatchOwner", "Encoder", "seeded"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, Python's ``random`` and numpy's global generator, restoring them after.

    A vectorizer may draw from any of the three; the bytes of a batch then depend on its seed
    alone, never on which worker encoded it or what ran before. Torch's CPU generator is seeded
    directly: ``torch.manual_seed`` also queues a seeding of every accelerator's generators
    when none is initialized (with a captured stack each time), ten times the cost of the seed
    itself. CUDA generators are seeded too once CUDA is initialized, as ``torch.manual_seed``
    does.
    """
    gen = torch.default_generator
    torch_state, py_state, np_state = gen.get_state(), random.getstate(), np.random.get_state()
    gen.manual_seed(seed)
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.manual_seed_all(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def qualname(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


class BatchOwner(Protocol):
    """What the encoder hands its batches and data points as their ``batch_stash``.

    It is the user's ``BatchStash``: ``DataPoint.batch_stash`` and ``DefaultBatch(batch_stash,
    ...)`` are the reference's contract, and a data point may read anything of its stash. A
    :class:`~batchstash.service.dataset.batch.DefaultBatch` reads these.
    """

    @property
    def batch_metadata(self) -> BatchMetadata:
        """Fields, vectorizers, shapes, dtypes and label classes of the batches."""

    @property
    def model_torch_config(self) -> TorchConfig:
        """The device and dtype a batch's ``to()`` copies to."""

    @property
    def batch_feature_mappings(self) -> BatchFeatureMapping:
        """Which attribute each vectorizer encodes."""

    @property
    def vectorizer_manager_set(self) -> FeatureVectorizerManagerSet:
        """The vectorizers, by manager."""


class Encoder:
    """Everything that determines the stored bytes, and the encoding of one id set.

    Args:
        split_stash_container: ids by split and raw data by id.
        vectorizer_manager_set: the vectorizers, by manager.
        batch_feature_mappings: which attribute each vectorizer encodes.
        data_point_type: the :class:`DataPoint` subclass, built as ``(id, stash, raw)``.
        batch_type: the batch class.
        batch_size: data points a batch.
        batch_limit: the most batches made per split.
        seed: the shuffle of ``train`` and each batch's seed.
        groups: the attribute groups stored together.
        owner: what batches and data points see as their ``batch_stash`` (the stash).
        bucketing: sort ids by length within windows before cutting batches (``None``: not).

    Raises:
        BatchError: a field names a missing vectorizer, the label attribute is not mapped, or
            a vectorizer's configuration cannot be described exactly.
    """

    def __init__(
        self,
        split_stash_container: SplitStashContainer,
        vectorizer_manager_set: FeatureVectorizerManagerSet,
        batch_feature_mappings: BatchFeatureMapping,
        data_point_type: type[DataPoint],
        batch_type: type[DefaultBatch],
        batch_size: int,
        batch_limit: int,
        seed: int,
        groups: Sequence[frozenset[str]],
        owner: BatchOwner,
        bucketing: LengthBuckets | None = None,
    ) -> None:
        self.split_stash_container = split_stash_container
        self.vectorizer_manager_set = vectorizer_manager_set
        self.batch_feature_mappings = batch_feature_mappings
        self.data_point_type = data_point_type
        self.batch_type = batch_type
        self.batch_size = batch_size
        self.batch_limit = batch_limit
        self.seed = seed
        self.groups = tuple(groups)
        self.owner = owner
        self.bucketing = bucketing
        for fld in batch_feature_mappings.fields:  # fail at construction on a missing vectorizer
            self.vectorizer_manager_set[self.manager_of(fld.attr)][fld.feature_id]
        _check_label_attribute(batch_feature_mappings)
        vectorizer_manager_set.config()  # a field it cannot describe fails here, not at a prime

    def manager_of(self, attr: str) -> str:
        """The vectorizer manager name of a mapped attribute."""
        for mng in self.batch_feature_mappings.manager_mappings:
            if any(f.attr == attr for f in mng.fields):
                return mng.vectorizer_manager_name
        raise BatchError(f"attribute {attr!r} is not mapped")

    @cached_property
    def batch_metadata(self) -> BatchMetadata:
        """Fields, vectorizers, shapes, dtypes and label classes of the batches."""
        fields = {}
        for mng in self.batch_feature_mappings.manager_mappings:
            for fld in mng.fields:
                vec = self.vectorizer_manager_set[mng.vectorizer_manager_name][fld.feature_id]
                fields[fld.attr] = BatchFieldMetadata(fld, vec.metadata())
        return BatchMetadata(
            qualname(self.data_point_type),
            qualname(self.batch_type),
            self.batch_feature_mappings,
            fields,
            None if self.bucketing is None else self.bucketing.to_dict(),
        )

    @cached_property
    def fingerprint(self) -> str:
        """Hash of everything that determines the stored bytes; a change makes the store stale.

        It does not depend on the order in which the container lists ids: the plan fixes that
        order once, in the store.
        """
        doc = {
            "store_format": STORE_FORMAT,
            "payload_format": wire.FORMAT_VERSION,
            "mapping": self.batch_feature_mappings.to_dict(),
            "vectorizers": self.vectorizer_manager_set.config(),
            "groups": [layout.group_name(g) for g in self.groups],
            "batch_size": self.batch_size,
            "batch_limit": min(self.batch_limit, 2**62),
            "seed": self.seed,
            "data_point_type": qualname(self.data_point_type),
            "batch_type": qualname(self.batch_type),
            "data": self.split_stash_container.fingerprint(),
            **({} if self.bucketing is None else {"bucketing": self.bucketing.to_dict()}),
        }
        return str(xxhash.xxh3_128_hexdigest(json.dumps(doc, sort_keys=True).encode()))

    def plan(self) -> list[DataPointIDSet]:
        """Cut every split into id sets (computed once by a prime and stored as the plan)."""
        return plan_id_sets(
            self.split_stash_container.keys_by_split,
            self.batch_size,
            self.seed,
            self.batch_limit,
            order=None if self.bucketing is None else self._bucket,
        )

    def _bucket(self, split: str, ids: Any) -> None:
        """Sort ``ids`` by length within bucketing windows (only called with bucketing)."""
        window = self.bucketing.window if self.bucketing else 1
        limit = min(self.batch_limit, 2**62) * self.batch_size
        bucketed(ids, self.lengths, window * self.batch_size, limit)

    def lengths(self, ids: Sequence[Any]) -> list[int]:
        """The bucketing lengths of ``ids`` (each data point's ``bucket_by`` attribute).

        Raises:
            BatchError: no bucketing, or a data point without a length there.
        """
        if self.bucketing is None:
            raise BatchError("this stash has no bucket_by")
        key = self.bucketing.key
        make: Callable[..., DataPoint] = self.data_point_type
        raws = self.split_stash_container.get_many(ids)
        return [length_of(make(i, self.owner, raw), key) for i, raw in zip(ids, raws, strict=True)]

    def data_points(self, id_set: DataPointIDSet) -> list[DataPoint]:
        """Build the data points of an id set from the split container."""
        container = self.split_stash_container
        make: Callable[..., DataPoint] = self.data_point_type  # subclasses add the raw field
        ids = id_set.data_point_ids
        raws = container.get_many(ids)  # one read of the batch's rows
        return [make(i, self.owner, raw) for i, raw in zip(ids, raws, strict=True)]

    def create_batch(
        self,
        points: Sequence[DataPoint],
        split_name: str | None = None,
        batch_id: int | None = None,
    ) -> DefaultBatch:
        """A nascent batch of ``points``."""
        return self.batch_type(
            self.owner, -1 if batch_id is None else batch_id, split_name or "", points
        )

    def encode(self, id_set: DataPointIDSet) -> DefaultBatch:
        """Encode one id set under its seed; returns the *encoded* batch.

        Raises:
            VectorizerError: a vectorizer failed, or a tensor differs from what its vectorizer
                declares (:meth:`check_batch`).
        """
        seed = int(id_set.torch_seed_context.get("seed", self.seed))
        with seeded(seed):
            batch = self.create_batch(self.data_points(id_set), id_set.split_name, id_set.batch_id)
            batch.encode()
        self.check_batch(batch, len(id_set.data_point_ids))
        return batch

    def check_batch(self, batch: DefaultBatch, size: int) -> None:
        """Check each mapped tensor of an encoded batch against the stored metadata.

        A field's tensor must be ``(size, *shape)`` with the vectorizer's declared ``shape``
        (``-1`` dimensions take any size), ``is_agg`` fields included, and of its declared
        dtype: what ``/v1/metadata`` tells trainers is then what the store holds.

        Args:
            batch: the encoded batch.
            size: its number of data points.

        Raises:
            VectorizerError: one line naming split, batch, field, vectorizer, what was encoded
                and what was declared.
        """
        fields = self.batch_metadata.fields_by_attribute
        for attr, tensor in batch.attributes.items():
            meta = fields.get(attr)
            if meta is None:  # not mapped: the writer stores no such attribute
                continue
            declared, dtype = meta.vectorizer.shape, meta.vectorizer.torch_dtype
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.dtype == dtype
                and tensor.shape[:1] == (size,)
                and len(tensor.shape) == len(declared) + 1
                and all(d < 0 or d == n for d, n in zip(declared, tensor.shape[1:], strict=True))
            ):
                continue
            if isinstance(tensor, torch.Tensor):
                got = f"{_shape(tuple(tensor.shape))} {str(tensor.dtype).removeprefix('torch.')}"
            else:
                got = f"a {type(tensor).__module__}.{type(tensor).__qualname__}, not a tensor,"
            want = _shape((f"N={size}", *declared))
            raise VectorizerError(
                f"{batch.split_name} batch {batch.id}, field {attr!r} (vectorizer "
                f"{meta.vectorizer.feature_id!r}): encoded {got}, declared {want} "
                f"{meta.vectorizer.dtype}"
            )


def _shape(dims: Sequence[object]) -> str:
    return f"({', '.join(map(str, dims))}{',' if len(dims) == 1 else ''})"


def _check_label_attribute(mapping: BatchFeatureMapping) -> None:
    """Refuse a label attribute that no field maps (a typo).

    A field edit of a :class:`ConfigBatchFeatureMapping` may remove the label field: that class
    checks the name before its edits.

    Raises:
        BatchError: the label attribute is not mapped.
    """
    label = mapping.label_attribute_name
    if label is None or label in mapping.attributes:
        return
    if isinstance(mapping, ConfigBatchFeatureMapping) and (
        label in mapping.field_remove
        or (mapping.field_keep is not None and label not in mapping.field_keep)
    ):
        return
    raise BatchError(
        f"label attribute {label!r} is not mapped; mapped attributes: "
        f"{', '.join(map(repr, mapping.attributes)) or 'none'} "
        "(label_attribute_name=None for unlabelled data)"
    )
