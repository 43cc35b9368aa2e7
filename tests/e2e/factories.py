"""Stash factories for the end-to-end tests (importable by the server and its priming workers)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizerManager,
    SeriesFeatureVectorizer,
)
from batchstash.service.examples import IRIS_CLASSES, iris


@dataclass
class SlowSeriesVectorizer(SeriesFeatureVectorizer):
    """A series vectorizer that sleeps per data point, so a prime lasts long enough to observe."""

    DESCRIPTION: ClassVar[str] = "slow numeric vector"

    delay: float = 0.02

    def encode(self, value: Any) -> torch.Tensor:
        time.sleep(self.delay)
        return super().encode(value)


def slow_iris(path: str, delay: float = 0.02, **kwargs: Any) -> BatchStash:
    """The iris stash with a slow ``flower_dims`` vectorizer (about ``20 * delay`` s a batch)."""
    stash = iris(path=path, **kwargs)
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
            SlowSeriesVectorizer("iseries", dims=4, delay=delay),
        ],
    )
    return BatchStash(
        path,
        stash.split_stash_container,
        [manager],
        stash.batch_feature_mappings,
        stash.data_point_type,
        batch_size=stash.batch_size,
        seed=stash.seed,
    )


def iris_from_csv(path: str, csv_path: str, **kwargs: Any) -> BatchStash:
    """The iris stash over another CSV (same columns), all rows in ``train``."""
    from batchstash.service import CsvSplitStashContainer

    stash = iris(path=path, **kwargs)
    container = CsvSplitStashContainer(
        csv_path, split_column=None, ratios={"train": 1.0}, id_column="id"
    )
    return BatchStash(
        path,
        container,
        stash.vectorizer_manager_set,
        stash.batch_feature_mappings,
        stash.data_point_type,
    )


@dataclass
class WarningSeriesVectorizer(SeriesFeatureVectorizer):
    """A series vectorizer that emits a Python warning (in the priming worker that runs it)."""

    DESCRIPTION: ClassVar[str] = "numeric vector that warns"

    def encode(self, value: Any) -> torch.Tensor:
        import warnings

        warnings.warn("flower dims look odd", UserWarning, stacklevel=1)
        return super().encode(value)


def warning_iris(path: str, **kwargs: Any) -> BatchStash:
    """The iris stash whose ``flower_dims`` vectorizer warns (what a dataset's code may do)."""
    stash = iris(path=path, **kwargs)
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
            WarningSeriesVectorizer("iseries", dims=4),
        ],
    )
    return BatchStash(
        path,
        stash.split_stash_container,
        [manager],
        stash.batch_feature_mappings,
        stash.data_point_type,
        batch_size=stash.batch_size,
        seed=stash.seed,
    )
