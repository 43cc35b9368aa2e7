"""A token dataset: Zipf-distributed int64 ids, as a language model's batches hold them.

Ranks follow ``p(rank) ~ rank^-1.1`` over the vocabulary and are mapped to ids through a fixed
random permutation (real ids are not in frequency order). Deterministic for its arguments, so
every process rebuilds the same store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from batchstash.client import BatchFeatureMapping, FieldFeatureMapping, ManagerFeatureMapping
from batchstash.service import (
    BatchStash,
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizerManager,
    MemorySplitStashContainer,
    TensorFeatureVectorizer,
)

__all__ = ["MAPPINGS", "tokens_stash", "zipf_tokens"]

MAPPINGS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "tokens",
            (
                FieldFeatureMapping("label", "tlabel", is_label=True),
                FieldFeatureMapping("tokens", "tids"),
            ),
        )
    ],
)


def zipf_tokens(n: int, seq: int, vocab: int, seed: int) -> np.ndarray:
    """``n`` rows of ``seq`` token ids: Zipf ranks (s = 1.1) mapped to shuffled ids."""
    gen = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
    ranks = gen.choice(vocab, size=(n, seq), p=weights / weights.sum())
    return gen.permutation(vocab)[ranks].astype(np.int64)


def tokens_stash(
    path: str,
    batches: int = 200,
    rows: int = 64,
    seq: int = 512,
    vocab: int = 32000,
    seed: int = 0,
    **kwargs: Any,
) -> BatchStash:
    """The Zipf token dataset, one stored object a batch (``kwargs``: ``compression``...)."""
    tokens = zipf_tokens(rows * batches, seq, vocab, seed)
    records = {i: {"tokens": tokens[i], "label": f"c{i % 10}"} for i in range(len(tokens))}
    manager = FeatureVectorizerManager(
        "tokens",
        [
            CategoryEncodableFeatureVectorizer(
                "tlabel", categories=tuple(f"c{i}" for i in range(10))
            ),
            TensorFeatureVectorizer("tids", shape=(seq,), dtype="int64"),
        ],
    )
    return BatchStash(
        path,
        MemorySplitStashContainer(records, {"train": list(records)}),
        [manager],
        MAPPINGS,
        batch_size=rows,
        groups=[{"tokens", "label"}],
        **kwargs,
    )
