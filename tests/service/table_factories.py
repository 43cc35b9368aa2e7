"""Importable stash factories over tables: scikit-learn's digits in each table container.

Priming workers rebuild a stash with its factory, so every source is rebuilt from plain
arguments: the digits themselves (a DataFrame, arrays), or the path of the files written by
the test (Parquet, ``.npy`` files, a saved Hugging Face dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    ArraySplitStashContainer,
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    DataFrameSplitStashContainer,
    DataPoint,
    FeatureVectorizer,
    FeatureVectorizerManager,
    HuggingFaceSplitStashContainer,
    ParquetSplitStashContainer,
    SplitStashContainer,
)

DIGIT_CLASSES = tuple(range(10))
PIXEL_COLUMNS = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
RATIOS = {"train": 0.8, "dev": 0.1, "test": 0.1}

DIGIT_MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "digits",
            (FieldFeatureMapping("label", "dlabel"), FieldFeatureMapping("pixels", "dpixels")),
        )
    ],
)


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: ``(images (n, 8, 8) float32, labels (n,) int64)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def digit_splits() -> np.ndarray:
    """Each digit's split by its number: ``test`` every tenth, ``dev`` the next, else ``train``."""
    n = len(digits()[1])
    names = np.full(n, "train", dtype=object)
    names[np.arange(n) % 10 == 0] = "test"
    names[np.arange(n) % 10 == 1] = "dev"
    return names.astype(str)


def expected_batch(ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """The tensors of a batch of digits by number, encoded here from the source arrays."""
    images, labels = digits()
    rows = np.asarray(ids, dtype=np.int64)
    return {"pixels": torch.from_numpy(images[rows]), "label": torch.from_numpy(labels[rows])}


@dataclass
class RowPoint(DataPoint):
    """A digit: a table row with a ``pixels`` column (8 x 8 values) and a ``label``."""

    row: dict[str, Any]

    @property
    def pixels(self) -> Any:
        """The image, as the container gives it."""
        return self.row["pixels"]

    @property
    def label(self) -> int:
        """The digit."""
        return int(self.row["label"])


@dataclass
class WideRowPoint(RowPoint):
    """A digit: a table row with one column per pixel (as ``load_digits(as_frame=True)``)."""

    @property
    def pixels(self) -> Any:
        """The image, gathered from its 64 columns."""
        return [self.row[c] for c in PIXEL_COLUMNS]


@dataclass
class PixelVectorizer(FeatureVectorizer):
    """An 8 x 8 image (any nesting of 64 numbers) as a ``float32`` tensor."""

    DESCRIPTION: ClassVar[str] = "8x8 pixels"

    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor(np.asarray(value, dtype=np.float32)).reshape(8, 8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (8, 8)


def digits_stash(
    path: str,
    container: SplitStashContainer,
    point: type[RowPoint] = RowPoint,
    batch_size: int = 64,
    **kwargs: Any,
) -> BatchStash:
    """The digits' vectorizers and mapping over ``container``."""
    managers = [
        FeatureVectorizerManager(
            "digits",
            [
                PixelVectorizer("dpixels"),
                CategoryEncodableFeatureVectorizer("dlabel", categories=DIGIT_CLASSES),
            ],
        )
    ]
    return BatchStash(
        path, container, managers, DIGIT_MAPPINGS, point, batch_size=batch_size, **kwargs
    )


def digits_frame() -> Any:
    """The digits as ``load_digits(as_frame=True)`` gives them, with ``label`` and ``split``."""
    import pandas as pd

    images, labels = digits()
    frame = pd.DataFrame(images.reshape(len(images), 64), columns=list(PIXEL_COLUMNS))
    return frame.assign(label=labels, split=digit_splits())


def frame_digits(path: str, **kwargs: Any) -> BatchStash:
    """The digits in a DataFrame, one column per pixel, split by its ``split`` column."""
    return digits_stash(path, DataFrameSplitStashContainer(digits_frame()), WideRowPoint, **kwargs)


def array_digits(path: str, source: str | None = None, seed: int = 0, **kwargs: Any) -> BatchStash:
    """The digits as arrays (in memory, or the ``.npy`` files of ``source``), split by ratios."""
    if source is None:
        images, labels = digits()
        arrays = {"pixels": images, "label": labels}
        container = ArraySplitStashContainer(arrays, None, ratios=RATIOS, seed=seed)
    else:
        container = ArraySplitStashContainer.open(source, None, ratios=RATIOS, seed=seed)
    return digits_stash(path, container, **kwargs)


def parquet_digits(path: str, source: str, cache_dir: str, **kwargs: Any) -> BatchStash:
    """The digits in Parquet (``pixels`` a fixed-size list of lists), by the ``split`` column."""
    container = ParquetSplitStashContainer(source, cache_dir=cache_dir)
    return digits_stash(path, container, **kwargs)


def hf_digits(path: str, source: str, **kwargs: Any) -> BatchStash:
    """A saved ``DatasetDict`` of the digits: its own splits, ids from its ``index`` column."""
    import datasets

    container = HuggingFaceSplitStashContainer(datasets.load_from_disk(source), id_column="index")
    return digits_stash(path, container, **kwargs)


def write_digits_parquet(target: Path, labels: np.ndarray | None = None) -> Path:
    """Write the digits to ``target``: ``pixels`` (8 x 8 float32), ``label``, ``split``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, source_labels = digits()
    rows = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 8)
    table = pa.table(
        {
            "pixels": pa.FixedSizeListArray.from_arrays(rows, 8),
            "label": pa.array(source_labels if labels is None else labels),
            "split": pa.array(digit_splits()),
        }
    )
    pq.write_table(table, target, row_group_size=500)
    return target


def write_digits_npy(target: Path) -> Path:
    """Write the digits as ``pixels.npy`` and ``label.npy`` in the directory ``target``."""
    images, labels = digits()
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / "pixels.npy", images)
    np.save(target / "label.npy", labels)
    return target


def write_digits_hf(target: Path) -> Path:
    """Save the digits as a ``DatasetDict`` (a shuffled 80/20 train/test split) in ``target``."""
    import datasets

    images, labels = digits()
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "pixels": datasets.Array2D((8, 8), "float32"),
            "label": datasets.Value("int64"),
        }
    )
    table = {"index": np.arange(len(labels)), "pixels": images, "label": labels}
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.train_test_split(test_size=0.2, seed=0).save_to_disk(str(target))
    return target
