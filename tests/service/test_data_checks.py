"""What priming checks of the data: content fingerprints, declared shapes and dtypes, the label
attribute, and class labels of any type (through ``BatchStash``, the API and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    StaleStoreError,
)
from batchstash.service import (
    BatchStash,
    DataPoint,
    FeatureVectorizer,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
)


@dataclass
class RowVectorizer(FeatureVectorizer):
    """A numpy row as a float32 tensor."""

    DESCRIPTION: ClassVar[str] = "numpy row"

    width: int = 3072

    def encode(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.width,)


@dataclass
class RecordPoint(DataPoint):
    raw: dict[str, Any]

    @property
    def x(self) -> Any:
        return self.raw["x"]

    @property
    def label(self) -> Any:
        return self.raw.get("label")


ROWS = BatchFeatureMapping(None, [ManagerFeatureMapping("m", (FieldFeatureMapping("x", "row"),))])


def _row_stash(path: Path, records: dict[int, Any]) -> BatchStash:
    container = MemorySplitStashContainer(records, {"train": list(records)})
    managers = [FeatureVectorizerManager("m", [RowVectorizer("row")])]
    return BatchStash(path, container, managers, ROWS, RecordPoint, batch_size=4)


# 1. the data's fingerprint ----------------------------------------------------------------


def test_changed_array_values_make_the_store_stale_never_served(tmp_path):
    records = {i: {"x": np.zeros(3072)} for i in range(8)}
    primed = _row_stash(tmp_path / "store", records)
    primed.prime()
    assert primed.load("train", 0)["x"][:, 1536].tolist() == [0.0] * 4
    for record in records.values():  # one column of every row, in the middle numpy's repr elides
        record["x"][1536] = 99.0

    stash = _row_stash(tmp_path / "store", records)
    assert stash.config_hash != primed.config_hash
    assert stash.is_stale and not stash.is_primed
    with pytest.raises(StaleStoreError, match="was encoded with configuration"):
        stash.load("train", 0)
    with pytest.raises(StaleStoreError, match="clear it and prime again"):
        stash.prime()

    stash.clear_all()
    assert stash.prime() == 2
    assert stash.load("train", 0)["x"][:, 1536].tolist() == [99.0] * 4


def test_an_unfingerprintable_record_fails_when_the_container_is_made(tmp_path):
    class Blob:
        pass

    records: dict[int, Any] = {i: {"x": np.zeros(3072)} for i in range(8)}
    records[3]["extra"] = Blob()
    with pytest.raises(BatchError, match=r"^cannot fingerprint a value of type .*Blob in record 3"):
        _row_stash(tmp_path / "store", records)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_vectorizer_field_that_cannot_be_described_fails_at_construction(tmp_path):
    class Tokenizer:
        pass

    @dataclass
    class Tokenized(RowVectorizer):
        tokenizer: Any = None

    container = MemorySplitStashContainer({0: {"x": np.zeros(3072)}}, {"train": [0]})
    managers = [FeatureVectorizerManager("m", [Tokenized("row", tokenizer=Tokenizer())])]
    with pytest.raises(BatchError, match=r"Tokenizer in vectorizer 'row' field 'tokenizer'"):
        BatchStash(tmp_path / "store", container, managers, ROWS, RecordPoint)


def test_the_csv_example_still_primes_and_keeps_its_fingerprint(make_iris):
    stash = make_iris()
    assert stash.config_hash == make_iris().config_hash
    assert stash.prime() == 9 and make_iris().is_primed
