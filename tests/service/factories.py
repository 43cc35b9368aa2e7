"""Importable stash factories and vectorizers for the engine tests (workers rebuild them)."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    CsvSplitStashContainer,
    FeatureVectorizer,
    FeatureVectorizerManager,
    SeriesFeatureVectorizer,
)
from batchstash.service.examples import IRIS_CLASSES, IRIS_MAPPINGS, IrisDataPoint, data_file

IRIS_CSV = data_file("iris.csv")
IRIS_RATIOS = {"train": 0.7, "dev": 0.1, "test": 0.2}


def iris_rows() -> dict[str, dict[str, str]]:
    """The iris CSV read with the csv module alone, by id."""
    with IRIS_CSV.open(newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def stored_files(root: str | Path) -> dict[str, bytes]:
    """Every stored batch object of a store directory, as ``split/batch id/group.safetensors``.

    The generation (a random name per plan) is left out, so two stores of the same
    configuration compare equal.
    """
    batches = Path(root) / "batches"
    return {
        "/".join(p.relative_to(batches).parts[1:]): p.read_bytes()
        for p in sorted(batches.rglob("*.safetensors"))
    }


def stored_order(root: str) -> list[tuple[str, int]]:
    """The batches of a store directory in the order they were stored (their last object)."""
    stored: dict[tuple[str, int], int] = {}
    for path in (Path(root) / "batches").rglob("*.safetensors"):
        split, batch_id = path.parts[-3], int(path.parts[-2])
        mtime = path.stat().st_mtime_ns
        stored[(split, batch_id)] = max(mtime, stored.get((split, batch_id), mtime))
    return sorted(stored, key=stored.__getitem__)


def stored_object(root: str | Path, split: str, batch_id: int, group: str) -> Path:
    """The file of one stored group object (in the store's one generation)."""
    found = list((Path(root) / "batches").glob(f"*/{split}/{batch_id}/{group}.safetensors"))
    assert len(found) == 1, found
    return found[0]


@dataclass
class NoiseVectorizer(FeatureVectorizer):
    """Random noise: equal bytes across runs prove the per-batch torch seed is applied."""

    DESCRIPTION: ClassVar[str] = "torch.rand noise"

    width: int = 3

    def encode(self, value: Any) -> torch.Tensor:
        return torch.rand(self.width)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.width,)


@dataclass
class ExplodingVectorizer(FeatureVectorizer):
    """Encodes a data point id as a number, failing on ``bad_id``."""

    DESCRIPTION: ClassVar[str] = "fails on one id"

    bad_id: str = ""

    def encode(self, value: Any) -> torch.Tensor:
        if str(value) == self.bad_id:
            raise ValueError(f"cannot vectorize {value!r}")
        return torch.tensor(float(value))


@dataclass
class MisdeclaredVectorizer(FeatureVectorizer):
    """Declares ``declared`` float32 tensors; encodes ``bad_shape`` tensors of ``bad_dtype``
    for data point ``bad_id`` (for every data point when it is empty)."""

    DESCRIPTION: ClassVar[str] = "declares one shape and dtype, encodes another"

    declared: tuple[int | None, ...] = (1, 8, 8)
    bad_shape: tuple[int, ...] | None = (64,)
    bad_dtype: str = "float32"
    bad_id: str = ""

    def encode(self, value: Any) -> torch.Tensor:
        if self.bad_id and str(value) != self.bad_id:
            return torch.zeros(tuple(1 if d is None else d for d in self.declared))
        shape = self.declared if self.bad_shape is None else self.bad_shape
        return torch.zeros(tuple(shape), dtype=getattr(torch, self.bad_dtype))

    @property
    def shape(self) -> tuple[int | None, ...]:
        return tuple(self.declared)


@dataclass
class PaddedDigitsVectorizer(FeatureVectorizer):
    """An ``is_agg`` field: each id's digits as int64, padded to the batch's longest id; with
    ``drop_row`` it returns one row fewer than the batch has data points."""

    DESCRIPTION: ClassVar[str] = "digits padded per batch"

    drop_row: bool = False

    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor([int(c) for c in str(value)], dtype=torch.int64)

    def encode_batch(self, values: Sequence[Any]) -> torch.Tensor:
        rows = [self.encode(v) for v in values]
        out = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out[1:] if self.drop_row else out

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64

    @property
    def shape(self) -> tuple[int | None, ...]:
        return (None,)


def _extra_mapping(feature_id: str, is_agg: bool = False) -> BatchFeatureMapping:
    return BatchFeatureMapping(
        "label",
        [
            *IRIS_MAPPINGS.manager_mappings,
            ManagerFeatureMapping(
                "extra",
                (FieldFeatureMapping("extra", feature_id, is_agg=is_agg, attr_access="id"),),
            ),
        ],
    )


def iris_with(
    path: str,
    extra: FeatureVectorizer,
    batch_size: int = 20,
    seed: int = 0,
    is_agg: bool = False,
    **kwargs: Any,
) -> BatchStash:
    """The iris example's data and vectorizers plus an ``extra`` field (the data point id)."""
    container = CsvSplitStashContainer(
        IRIS_CSV, split_column=None, ratios=IRIS_RATIOS, seed=seed, id_column="id"
    )
    managers = [
        FeatureVectorizerManager(
            "iris_vectorizer_manager",
            [
                CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
                SeriesFeatureVectorizer("iseries", dims=4),
            ],
        ),
        FeatureVectorizerManager("extra", [extra]),
    ]
    return BatchStash(
        path,
        container,
        managers,
        _extra_mapping(extra.feature_id, is_agg),
        IrisDataPoint,
        batch_size=batch_size,
        seed=seed,
        **kwargs,
    )


def noisy_iris(path: str, **kwargs: Any) -> BatchStash:
    """Iris plus a random ``extra`` field."""
    return iris_with(path, NoiseVectorizer("noise"), **kwargs)


def exploding_iris(path: str, bad_id: str, **kwargs: Any) -> BatchStash:
    """Iris plus an ``extra`` field whose vectorizer raises on data point ``bad_id``."""
    return iris_with(path, ExplodingVectorizer("explode", bad_id=bad_id), **kwargs)


class ProcessOrderedContainer(CsvSplitStashContainer):
    """Iris whose ids come out of each split in another order in every process.

    Like ids collected in a ``set`` of strings: the order depends on the process (here on its
    pid, so two processes always differ). The stored plan must fix the order once.
    """

    @property
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        rng = random.Random(os.getpid())
        out = {}
        for name, ids in super().keys_by_split.items():
            shuffled = list(ids)
            rng.shuffle(shuffled)
            out[name] = tuple(shuffled)
        return out


def process_ordered_iris(path: str, workers: int = 2, **kwargs: Any) -> BatchStash:
    """The iris stash over :class:`ProcessOrderedContainer` (for the plan read-back test)."""
    container = ProcessOrderedContainer(
        IRIS_CSV, split_column=None, ratios=IRIS_RATIOS, seed=0, id_column="id"
    )
    managers = [
        FeatureVectorizerManager(
            "iris_vectorizer_manager",
            [
                CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
                SeriesFeatureVectorizer("iseries", dims=4),
            ],
        )
    ]
    return BatchStash(
        path,
        container,
        managers,
        IRIS_MAPPINGS,
        IrisDataPoint,
        batch_size=20,
        workers=workers,
        **kwargs,
    )


@dataclass
class DyingVectorizer(FeatureVectorizer):
    """Kills its own process the first time it meets ``bad_id`` (a lost worker or node)."""

    DESCRIPTION: ClassVar[str] = "dies once"

    bad_id: str = ""
    marker: str = ""

    def encode(self, value: Any) -> torch.Tensor:
        if str(value) == self.bad_id and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(17)  # no cleanup, no exception: the process is just gone
        return torch.tensor(float(value))


def misdeclared_iris(
    path: str,
    bad_id: str = "",
    bad_shape: tuple[int, ...] | None = (64,),
    bad_dtype: str = "float32",
    **kwargs: Any,
) -> BatchStash:
    """Iris plus an ``extra`` field declared ``(1, 8, 8) float32`` that encodes ``bad_shape``
    tensors of ``bad_dtype`` for ``bad_id`` (every data point when empty)."""
    vectorizer = MisdeclaredVectorizer(
        "img", bad_shape=bad_shape, bad_dtype=bad_dtype, bad_id=bad_id
    )
    return iris_with(path, vectorizer, **kwargs)


def dying_iris(path: str, bad_id: str, marker: str, **kwargs: Any) -> BatchStash:
    """Iris plus an ``extra`` field whose worker process dies once on ``bad_id``."""
    return iris_with(path, DyingVectorizer("dies", bad_id=bad_id, marker=marker), **kwargs)
