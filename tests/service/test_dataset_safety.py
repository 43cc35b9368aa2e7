"""No silent wrong results from the dataset layer: partial labels, changed code, sparse tensors,
and determinism under every random generator a vectorizer may use."""

from __future__ import annotations

import importlib
import linecache
import random
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from batchstash.client import VectorizerError
from batchstash.service import BatchStash, FeatureVectorizer
from batchstash.service.dataset.vectorize import code_digest

from .factories import iris_with, stored_files


def test_one_unlabelled_point_in_a_labelled_batch_is_an_error(make_iris):
    stash = make_iris()
    points = stash.data_points(stash.batch_data_point_sets[0])
    points[3].row["species"] = ""  # IrisDataPoint.label: "" -> None
    with pytest.raises(VectorizerError, match=rf"data point '{points[3].id}' has no label"):
        stash.create_batch(points, "dev", 0).encode()
    for point in points:  # none labelled: a prediction batch, the label is left out
        point.row["species"] = ""
    batch = stash.create_batch(points, "dev", 0)
    batch.encode()
    assert "label" not in batch.attributes and "flower_dims" in batch.attributes


@dataclass
class SparseVectorizer(FeatureVectorizer):
    DESCRIPTION: ClassVar[str] = "sparse"

    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor([0.0, float(value)]).to_sparse()


def test_a_sparse_tensor_is_a_clear_error(tmp_path):
    stash = iris_with(str(tmp_path / "s"), SparseVectorizer("sparse"))
    with pytest.raises(VectorizerError, match=r"sparse_coo tensor.*to_dense\(\)"):
        stash.prime()


def test_editing_a_vectorizers_code_changes_the_fingerprint(tmp_path, monkeypatch):
    source = textwrap.dedent(
        """
        from dataclasses import dataclass
        import torch
        from batchstash.service import FeatureVectorizer

        @dataclass
        class Scaled(FeatureVectorizer):
            def encode(self, value):
                return torch.tensor(float(value) * FACTOR)
        """
    )
    module = tmp_path / "user_vectorizers.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    digests, fingerprints = [], []
    for factor in (2, 3):  # the same module and class, its code edited
        module.write_text(source.replace("FACTOR", str(factor)))
        linecache.checkcache(str(module))
        sys.modules.pop("user_vectorizers", None)
        cls = importlib.import_module("user_vectorizers").Scaled
        digests.append(code_digest(cls))
        fingerprints.append(iris_with(str(tmp_path / "store"), cls("scaled")).config_hash)
    sys.modules.pop("user_vectorizers", None)
    assert digests[0] != digests[1] and fingerprints[0] != fingerprints[1]
    assert code_digest(SparseVectorizer) != code_digest(EveryRandomVectorizer)


@dataclass
class EveryRandomVectorizer(FeatureVectorizer):
    """Draws from torch, Python's random and numpy: all three must follow the batch seed."""

    DESCRIPTION: ClassVar[str] = "noise from every generator"

    def encode(self, value: Any) -> torch.Tensor:
        return torch.tensor(
            [torch.rand(()).item(), random.random(), float(np.random.rand())], dtype=torch.float64
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return (3,)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64


def every_random_iris(path: str, **kwargs: Any) -> BatchStash:
    return iris_with(path, EveryRandomVectorizer("rng"), **kwargs)


@pytest.mark.slow
def test_every_random_generator_follows_the_batch_seed(tmp_path):
    inline = every_random_iris(str(tmp_path / "inline"))
    random.seed(123)  # whatever the caller's generators hold, the bytes are the same
    np.random.seed(7)
    assert inline.prime() == 9
    assert random.random() == random.Random(123).random()  # the caller's state is restored
    pooled = BatchStash.from_factory(
        "tests.service.test_dataset_safety:every_random_iris",
        path=str(tmp_path / "pool"),
        workers=2,
        chunk_size=2,
    )
    assert pooled.prime() == 9
    assert stored_files(pooled.path) == stored_files(inline.path)
    first, second = inline.load("train", 0)["extra"], inline.load("train", 1)["extra"]
    assert not torch.equal(first, second)
