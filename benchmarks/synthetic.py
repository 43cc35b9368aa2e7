"""The synthetic benchmark dataset: deterministic random float vectors with an int64 label.

Each data point is ``dims`` float32 values drawn from a generator seeded by the point's id, plus
one of ``classes`` labels, so every process (server, priming workers, baselines) rebuilds the same
bytes from the factory's keyword arguments alone. With ``groups=[{"x", "label"}]`` one file holds
a batch, so a served batch is one stored file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import xxhash

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    DataPoint,
    FeatureVectorizer,
    FeatureVectorizerManager,
    SeriesFeatureVectorizer,
    SplitStashContainer,
)

__all__ = [
    "MAPPINGS",
    "SyntheticDataPoint",
    "SyntheticSplitStashContainer",
    "TensorRowVectorizer",
    "batch_bytes",
    "factory",
]

SPLIT = "train"
MANAGER = "synthetic_vectorizer_manager"

MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            MANAGER,
            (
                FieldFeatureMapping("label", "slabel", is_label=True),
                FieldFeatureMapping("x", "svector"),
            ),
        )
    ],
)
"""``x``: the float32 vector of each row; ``label``: its int64 class index."""


def batch_bytes(rows: int = 256, dims: int = 1024) -> int:
    """Tensor bytes of one full batch: ``rows`` float32 vectors plus ``rows`` int64 labels."""
    return rows * dims * 4 + rows * 8


class SyntheticSplitStashContainer(SplitStashContainer):
    """One ``train`` split of ``rows * batches`` ids; each id's data is generated on demand.

    Args:
        rows: data points a batch.
        dims: float values a data point.
        batches: batches in the split.
        classes: the number of label classes.
        seed: seeds every point's generator (with its id).
        as_list: return the vector as a list of floats (what :class:`SeriesFeatureVectorizer`
            reads, as from a CSV) instead of a tensor.
    """

    def __init__(
        self, rows: int, dims: int, batches: int, classes: int, seed: int, as_list: bool
    ) -> None:
        self.rows, self.dims, self.batches = rows, dims, batches
        self.classes, self.seed, self.as_list = classes, seed, as_list
        self._keys: dict[str, Sequence[Any]] = {SPLIT: range(rows * batches)}

    @property
    def keys_by_split(self) -> dict[str, Sequence[Any]]:
        """The ids of the single ``train`` split."""
        return self._keys

    def __getitem__(self, data_point_id: Any) -> tuple[Any, str]:
        """Return ``(vector, class name)`` of one id, the same in every process."""
        point = int(data_point_id)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + point)
        vector = torch.randn(self.dims, generator=gen)
        label = f"c{point % self.classes}"
        return (vector.tolist() if self.as_list else vector), label

    def fingerprint(self) -> str:
        """Hash of the generator parameters (the data is a pure function of them)."""
        doc = {
            "rows": self.rows,
            "dims": self.dims,
            "batches": self.batches,
            "classes": self.classes,
            "seed": self.seed,
            "generator": "torch.randn/v1",
        }
        return str(xxhash.xxh3_128_hexdigest(json.dumps(doc, sort_keys=True).encode()))


@dataclass
class SyntheticDataPoint(DataPoint):
    """One synthetic row: ``raw`` is ``(vector, class name)`` from the split container."""

    raw: tuple[Any, str]

    @property
    def x(self) -> Any:
        """The feature vector."""
        return self.raw[0]

    @property
    def label(self) -> str:
        """The class name."""
        return self.raw[1]


@dataclass
class TensorRowVectorizer(FeatureVectorizer):
    """Takes each row's vector as a float32 tensor already (the cheapest possible vectorizer).

    Attributes:
        dims: the length of every vector.
    """

    DESCRIPTION: ClassVar[str] = "float32 vector passed through"

    dims: int = 1

    def encode(self, value: Any) -> torch.Tensor:
        """Return ``value`` as float32, checking its length."""
        vec = torch.as_tensor(value, dtype=torch.float32)
        if vec.shape != (self.dims,):
            raise ValueError(f"{self.feature_id}: expected {self.dims} values, got {vec.shape}")
        return vec

    @property
    def shape(self) -> tuple[int, ...]:
        """``(dims,)``."""
        return (self.dims,)


VECTORIZERS = {"series": SeriesFeatureVectorizer, "tensor": TensorRowVectorizer}
"""``series``: the engine's vectorizer over lists of floats; ``tensor``: rows already tensors."""


def factory(
    path: str = "data/synthetic",
    rows: int = 256,
    dims: int = 1024,
    batches: int = 2000,
    classes: int = 10,
    seed: int = 0,
    vectorizer: str = "series",
    workers: int = 0,
    **kwargs: Any,
) -> BatchStash:
    """The synthetic stash: ``batches`` batches of ``rows`` points, one stored file a batch.

    Args:
        path: the store directory.
        rows: data points a batch (the batch size).
        dims: float32 values a data point.
        batches: batches in the ``train`` split.
        classes: label classes (``c0``, ``c1``, ...).
        seed: seeds the data and the batch plan.
        vectorizer: ``series`` (:class:`SeriesFeatureVectorizer` over lists of floats, as read
            from text) or ``tensor`` (:class:`TensorRowVectorizer`, no conversion).
        workers: priming processes (``0``: in this process).
        **kwargs: other :class:`BatchStash` arguments (``groups`` too: one object a batch by
            default).
    """
    try:
        vector_type = VECTORIZERS[vectorizer]
    except KeyError:
        raise ValueError(f"vectorizer must be one of {sorted(VECTORIZERS)}") from None
    container = SyntheticSplitStashContainer(
        rows, dims, batches, classes, seed, as_list=vectorizer == "series"
    )
    manager = FeatureVectorizerManager(
        MANAGER,
        [
            CategoryEncodableFeatureVectorizer(
                "slabel", categories=tuple(f"c{i}" for i in range(classes))
            ),
            vector_type("svector", dims=dims),
        ],
    )
    return BatchStash(
        path,
        container,
        [manager],
        MAPPINGS,
        SyntheticDataPoint,
        batch_size=rows,
        workers=workers,
        seed=seed,
        **{"groups": [{"x", "label"}], **kwargs},
    )
