"""Table containers primed and served: digits from a DataFrame, arrays, Parquet and Hugging Face.

Workers rebuild each stash with its factory (:mod:`tests.service.table_factories`); every
stored batch must equal the source rows encoded here, and data that changes during a prime
must fail it without a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from batchstash.client import BatchClient, BatchError, NotPrimedError
from batchstash.service import BatchStash
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.store import layout

from .table_factories import (
    digits,
    expected_batch,
    write_digits_hf,
    write_digits_npy,
    write_digits_parquet,
)
from .test_serve_role import AppTransport

pytest.importorskip("sklearn")

DIGITS = 1797
BATCHES = 29  # 64 data points a batch: 23 + 3 + 3 (or 23 + 6 for the dict's two splits)
BY_COLUMN = {"train": 1437, "dev": 180, "test": 180}  # every tenth test, the next dev
BY_RATIOS = {"train": 1438, "dev": 180, "test": 179}
BY_DICT = {"train": 1437, "test": 360}


def source(kind: str, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, int]]:
    """``(factory, its options, data points by split)`` of the digits as ``kind``."""
    cache = str(tmp_path / "cache")
    if kind == "frame":
        return "frame_digits", {}, BY_COLUMN
    if kind == "arrays":
        return "array_digits", {}, BY_RATIOS
    if kind == "npy":
        return "array_digits", {"source": str(write_digits_npy(tmp_path / "npy"))}, BY_RATIOS
    if kind == "parquet":
        path = write_digits_parquet(tmp_path / "digits.parquet")
        return "parquet_digits", {"source": str(path), "cache_dir": cache}, BY_COLUMN
    assert kind == "hf"
    return "hf_digits", {"source": str(write_digits_hf(tmp_path / "hf"))}, BY_DICT


def assert_batch_is_the_source(batch: Any, ids: list[int]) -> None:
    want = expected_batch(ids)
    assert list(batch.data_point_ids) == ids
    assert batch["pixels"].dtype == torch.float32 and batch["pixels"].shape == (len(ids), 8, 8)
    assert torch.equal(batch["pixels"], want["pixels"])
    assert batch["label"].dtype == torch.int64 and torch.equal(batch["label"], want["label"])


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        pytest.param("frame", 2, marks=pytest.mark.slow),
        ("arrays", 0),
        pytest.param("npy", 2, marks=pytest.mark.slow),
        pytest.param("parquet", 2, marks=pytest.mark.slow),
        pytest.param("hf", 2, marks=pytest.mark.slow),
    ],
)
def test_every_stored_batch_is_the_source_encoded(
    kind: str, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHSTASH_CACHE_DIR", str(tmp_path / "cache"))  # workers inherit it
    factory, options, sizes = source(kind, tmp_path)
    stash = BatchStash.from_factory(
        f"tests.service.table_factories:{factory}",
        path=str(tmp_path / "store"),
        workers=workers,
        **options,
    )
    assert stash.prime() == BATCHES
    assert stash.is_primed

    counts = stash.split_counts()
    assert {s: c["data_points"] for s, c in counts.items()} == sizes
    assert all(c["stored"] == c["batches"] for c in counts.values())
    seen: list[int] = []
    for id_set in stash.batch_data_point_sets:
        ids = list(id_set.data_point_ids)
        assert_batch_is_the_source(stash.load(id_set.split_name, id_set.batch_id), ids)
        seen += ids
    assert sorted(seen) == list(range(DIGITS))  # each digit once, in its split


def rewrite_one_label(path: Path) -> None:
    labels = digits()[1].copy()
    labels[5] = (labels[5] + 1) % 10
    write_digits_parquet(path, labels)


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (0, "digits.parquet changed since the dataset was opened: nothing of it is encoded"),
        pytest.param(
            2,
            "the dataset's data changed since this prime started",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["inline", "workers"],
)
def test_parquet_rewritten_before_the_prime_fails_it(
    workers: int, message: str, tmp_path: Path
) -> None:
    path = write_digits_parquet(tmp_path / "digits.parquet")
    stash = BatchStash.from_factory(
        "tests.service.table_factories:parquet_digits",
        path=str(tmp_path / "store"),
        source=str(path),
        cache_dir=str(tmp_path / "cache"),
        workers=workers,
    )
    assert stash.config_hash  # the data's fingerprint is taken, as a starting server takes it
    rewrite_one_label(path)  # before any worker rebuilds the dataset

    with pytest.raises(BatchError, match=message):
        stash.prime()
    assert not stash.is_primed and not stash.is_priming
    assert not (tmp_path / "store" / layout.MANIFEST).exists()
    assert all(c["stored"] == 0 for c in stash.split_counts().values())
    with pytest.raises(NotPrimedError):
        stash.load("train", 0)


def test_parquet_rewritten_during_the_prime_fails_it_without_a_manifest(tmp_path: Path) -> None:
    path = write_digits_parquet(tmp_path / "digits.parquet")
    stash = BatchStash.from_factory(
        "tests.service.table_factories:parquet_digits",
        path=str(tmp_path / "store"),
        source=str(path),
        cache_dir=str(tmp_path / "cache"),
    )
    stored = []

    def progress(split: str, done: int, total: int) -> None:
        if done and not stored:
            stored.append(split)
            rewrite_one_label(path)  # after the first batch is stored

    with pytest.raises(BatchError, match="changed since the dataset was opened"):
        stash.prime(progress)
    assert stored and not stash.is_primed
    assert not (tmp_path / "store" / layout.MANIFEST).exists()
    assert sum(c["stored"] for c in stash.split_counts().values()) == 1


def test_a_server_primes_parquet_and_serves_it_over_http(tmp_path: Path) -> None:
    path = write_digits_parquet(tmp_path / "digits.parquet")
    settings = build_settings(
        data_dir=tmp_path / "store",
        dataset="tests.service.table_factories:parquet_digits",
        dataset_options={"source": str(path), "cache_dir": str(tmp_path / "cache")},
        workers=0,
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/admin/prime").status_code == 202
        assert client.app.state.batchstash.job.wait(timeout=60)  # type: ignore[attr-defined]
        assert client.get("/v1/admin/status").json()["state"] == "done"
        transport = AppTransport(client)
        with BatchClient("http://tables.test", transport=transport, retries=0) as trainer:
            splits = trainer.splits()
            batch = trainer.batch("test", 2)
            last = trainer.batch("train", 22)
    assert splits["primed"] is True
    assert {s: c["data_points"] for s, c in splits["splits"].items()} == BY_COLUMN
    ids = list(batch.data_point_ids)
    assert len(ids) == 180 - 2 * 64 and all(i % 10 == 0 for i in ids)
    assert_batch_is_the_source(batch, ids)
    assert_batch_is_the_source(last, list(last.data_point_ids))
    assert len(last.data_point_ids) == 1437 - 22 * 64
