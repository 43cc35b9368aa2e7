"""An in-memory :class:`BatchSource` whose rows say which data point they are, for re-dealing tests.

Data point ``"b-i"`` (row ``i`` of stored batch ``b``) has ``x = [b, i]`` (float32), ``label =
(b + i) % 3`` (int64) and ``tokens``: ``length(b, i)`` copies of ``100 * b + i + 1`` (int64),
right-padded with 0 to its batch's longest row, so any row of any batch can be checked against
its data point id alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from batchstash.client import (
    Batch,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchIterator,
    BatchMetadata,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    VectorizerMetadata,
)

FINGERPRINT = "e" * 32


def length(b: int, i: int) -> int:
    """Tokens of data point ``b-i`` (1 to 6)."""
    return 1 + (7 * b + 3 * i) % 6


def metadata(
    label_per_row: bool = True, tokens_pad: bool = True, tokens_agg: bool = True
) -> BatchMetadata:
    """``label`` (is_agg, per row unless told), ``x`` (2 floats), ``tokens`` (is_agg, padded)."""
    fields = (
        FieldFeatureMapping("label", "lab", is_agg=True),
        FieldFeatureMapping("x", "xs"),
        FieldFeatureMapping("tokens", "tok", is_agg=tokens_agg),
    )
    mapping = BatchFeatureMapping("label", [ManagerFeatureMapping("m", fields)])
    label_extra = {"per_row": True} if label_per_row else {}
    tok_extra = {"pad_id": 0} if tokens_pad else {}
    vecs = {
        "label": VectorizerMetadata(
            "lab", "Cat", dtype="int64", classes=(0, 1, 2), extra=label_extra
        ),
        "x": VectorizerMetadata("xs", "Series", shape=(2,)),
        "tokens": VectorizerMetadata("tok", "Tok", dtype="int64", shape=(-1,), extra=tok_extra),
    }
    return BatchMetadata(
        "tests.P",
        "batchstash.client.Batch",
        mapping,
        {a: BatchFieldMetadata(mapping.field(a), v) for a, v in vecs.items()},
    )


def make_batch(split: str, b: int, rows: int, meta: BatchMetadata | None) -> Batch:
    """Stored batch ``b`` of ``rows`` rows."""
    longest = max((length(b, i) for i in range(rows)), default=0)
    tokens = torch.zeros(rows, longest, dtype=torch.int64)
    for i in range(rows):
        tokens[i, : length(b, i)] = 100 * b + i + 1
    tensors = {
        "x": torch.tensor([[float(b), float(i)] for i in range(rows)]).reshape(rows, 2),
        "label": torch.tensor([(b + i) % 3 for i in range(rows)], dtype=torch.int64),
        "tokens": tokens,
    }
    base = Batch(None, b, split, None, metadata=meta)
    return base.with_rows(b, tensors, [f"{b}-{i}" for i in range(rows)])


def check_rows(batch: Batch) -> list[str]:
    """Assert every row of ``batch`` is its data point's, padded to the batch's longest; its ids."""
    ids = list(batch.data_point_ids)
    assert batch["x"].shape == (len(ids), 2) and batch["label"].shape == (len(ids),)
    lengths = []
    for row, dp in enumerate(ids):
        b, i = (int(p) for p in dp.split("-"))
        assert batch["x"][row].tolist() == [float(b), float(i)]
        assert int(batch["label"][row]) == (b + i) % 3
        n = length(b, i)
        lengths.append(n)
        assert batch["tokens"][row, :n].tolist() == [100 * b + i + 1] * n
        assert not batch["tokens"][row, n:].any()
    assert batch["tokens"].shape == (len(ids), max(lengths, default=0))  # trimmed to the longest
    return ids


class MemorySource:
    """Stored batches of ``sizes[b]`` rows each (a :class:`BatchSource`)."""

    buffers = None

    def __init__(
        self,
        sizes: Sequence[int],
        meta: BatchMetadata | None = None,
        fingerprint: str = FINGERPRINT,
    ) -> None:
        self.sizes = list(sizes)
        self.meta = metadata() if meta is None else meta
        self.fingerprint = fingerprint
        self.fetched: list[int] = []

    def split_batch_ids(self, split: str) -> tuple[str, list[int]]:
        return self.fingerprint, list(range(len(self.sizes)))

    def batch(self, split: str, batch_id: int, *args: Any, **kwargs: Any) -> Batch:
        return self.batches(split, [batch_id])[0]

    def batches(
        self,
        split: str,
        batch_ids: Sequence[int],
        attributes: Sequence[str] | None = None,
        device: Any = None,
        *,
        fingerprint: str | None = None,
    ) -> list[Batch]:
        assert fingerprint in (None, self.fingerprint)
        self.fetched.extend(batch_ids)
        out = []
        for b in batch_ids:
            batch = make_batch(split, b, self.sizes[b], self.meta)
            if attributes is not None:
                kept = {a: batch[a] for a in attributes}
                batch = batch.with_rows(b, kept, batch.data_point_ids)
            out.append(batch)
        return out

    def can_pipeline(self) -> bool:
        return False

    def pipelined_reader(self, *args: Any, **kwargs: Any) -> None:
        return None


def sizes_of(n: int, size: int = 4, last: int = 3) -> list[int]:
    """``n`` stored batches of ``size`` rows, the last of ``last``."""
    return [size] * (n - 1) + [last] if n else []


def read(src: MemorySource, **kwargs: Any) -> list[list[str]]:
    """Every batch of one iterator of ``src``, as data point ids (each row checked)."""
    return [check_rows(b) for b in BatchIterator(src, "train", **kwargs)]
