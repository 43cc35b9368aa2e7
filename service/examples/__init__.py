"""Built-in example datasets: iris (the reference's own) and a small variable-length text set."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping

from ..dataset.datapoint import DataPoint
from ..dataset.managers import FeatureVectorizerManager
from ..dataset.split import CsvSplitStashContainer
from ..dataset.vectorize import (
    CategoryEncodableFeatureVectorizer,
    SeriesFeatureVectorizer,
    TokenIdFeatureVectorizer,
    TokenLengthFeatureVectorizer,
)
from ..stash import BatchStash

__all__ = [
    "IRIS_CLASSES",
    "IRIS_MAPPINGS",
    "TEXT_MAPPINGS",
    "IrisDataPoint",
    "TextDataPoint",
    "data_file",
    "iris",
    "text",
]

IRIS_CLASSES = ("setosa", "versicolor", "virginica")
IRIS_COLUMNS = ("sepal_length", "sepal_width", "petal_length", "petal_width")

IRIS_MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "iris_vectorizer_manager",
            (
                FieldFeatureMapping("label", "ilabel", True),
                FieldFeatureMapping("flower_dims", "iseries"),
            ),
        )
    ],
)
"""The reference's iris mapping (the third argument of the label field is ``is_agg``)."""

TEXT_MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "text_vectorizer_manager",
            (
                FieldFeatureMapping("label", "tlabel"),
                FieldFeatureMapping("tokens", "token_ids", is_agg=True),
                FieldFeatureMapping("lengths", "token_lengths", attr_access="tokens"),
            ),
        )
    ],
)


def data_file(name: str) -> Path:
    """The path of a CSV shipped with the package."""
    return Path(str(resources.files(__package__).joinpath("data").joinpath(name)))


@dataclass
class IrisDataPoint(DataPoint):
    """One iris flower: a CSV row."""

    row: dict[str, str]

    @property
    def label(self) -> str | None:
        """The species (``None`` for a flower to predict)."""
        return self.row.get("species") or None

    @property
    def flower_dims(self) -> list[float]:
        """Sepal and petal length and width, in cm."""
        return [float(self.row[c]) for c in IRIS_COLUMNS]


def iris(
    path: str = "data/iris", batch_size: int = 20, workers: int = 0, seed: int = 0, **kwargs: Any
) -> BatchStash:
    """The iris stash: 150 flowers split 70/10/20 (train/dev/test) by a seeded shuffle.

    Args:
        path: the store directory.
        batch_size: flowers a batch.
        workers: priming processes (``0``: in this process).
        seed: the split, shuffle and batch seed.
        **kwargs: other :class:`BatchStash` arguments (``batch_limit``, ``decoded_attributes``...).
    """
    container = CsvSplitStashContainer(
        data_file("iris.csv"),
        split_column=None,
        ratios={"train": 0.7, "dev": 0.1, "test": 0.2},
        seed=seed,
        id_column="id",
    )
    manager = FeatureVectorizerManager(
        "iris_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("ilabel", categories=IRIS_CLASSES),
            SeriesFeatureVectorizer("iseries", dims=len(IRIS_COLUMNS)),
        ],
    )
    return BatchStash(
        path,
        container,
        [manager],
        kwargs.pop("mappings", IRIS_MAPPINGS),
        IrisDataPoint,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        **kwargs,
    )


@dataclass
class TextDataPoint(DataPoint):
    """One sentence with its topic."""

    row: dict[str, str]

    @property
    def label(self) -> str | None:
        """The topic."""
        return self.row.get("topic") or None

    @property
    def tokens(self) -> list[str]:
        """The whitespace tokens of the sentence."""
        return self.row["text"].split()


def text(
    path: str = "data/text",
    batch_size: int = 16,
    workers: int = 0,
    seed: int = 0,
    max_length: int = 32,
    **kwargs: Any,
) -> BatchStash:
    """A topic classification stash with variable-length token ids (padded per batch).

    The vocabulary is every token of the ``train`` split, sorted; other tokens map to unknown.
    """
    container = CsvSplitStashContainer(
        data_file("topics.csv"), split_column="split", id_column="id"
    )
    vocab = sorted(
        {tok for i in container.keys_by_split["train"] for tok in container[i]["text"].split()}
    )
    topics = sorted(
        {container[i]["topic"] for ids in container.keys_by_split.values() for i in ids}
    )
    manager = FeatureVectorizerManager(
        "text_vectorizer_manager",
        [
            CategoryEncodableFeatureVectorizer("tlabel", categories=tuple(topics)),
            TokenIdFeatureVectorizer("token_ids", vocab=tuple(vocab), max_length=max_length),
            TokenLengthFeatureVectorizer("token_lengths", max_length=max_length),
        ],
    )
    return BatchStash(
        path,
        container,
        [manager],
        kwargs.pop("mappings", TEXT_MAPPINGS),
        TextDataPoint,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        **kwargs,
    )
