"""``BatchClient(widen=...)``: narrow stored dtypes converted as batches are read."""

from __future__ import annotations

import httpx
import pytest
import torch

from batchstash.client import BatchClient, RetryPolicy

from .fakeserver import URL, FakeServer, make_tensors


def client(**kwargs: object) -> BatchClient:
    transport = httpx.MockTransport(FakeServer({"train": range(6)}))
    return BatchClient(URL, transport=transport, retry=RetryPolicy(attempts=1), **kwargs)  # type: ignore[arg-type]


def test_named_attributes_are_converted_on_every_read_path() -> None:
    with client(widen={"x": torch.float64, "absent": torch.int64}) as reader:
        one = reader.batch("train", 2)
        several = reader.batches("train", [0, 5])
        epoch = list(reader.iter_batches("train", shuffle=False, prefetch=4))
    for batch in [one, *several, *epoch]:
        expected = make_tensors("train", batch.id)
        assert batch["x"].dtype == torch.float64
        assert torch.equal(batch["x"], expected["x"].to(torch.float64))
        assert batch["label"].dtype == expected["label"].dtype  # not named: as stored
    assert [b.id for b in epoch] == list(range(6))


def test_without_widen_batches_keep_the_stored_dtypes() -> None:
    with client() as reader:
        assert reader.batch("train", 1)["x"].dtype == torch.float32


def test_widen_takes_torch_dtypes() -> None:
    with pytest.raises(TypeError, match="torch dtypes"):
        client(widen={"x": "int64"})
