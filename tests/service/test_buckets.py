"""Length bucketing at priming, and re-dealt epochs of a real store (text example)."""

from __future__ import annotations

from array import array
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from batchstash.client import BatchClient, BatchError
from batchstash.client.redeal import RedealtBatchId
from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.dataset.buckets import LengthBuckets, bucketed
from batchstash.service.dataset.idset import DataPointIDSet
from batchstash.service.examples import text

from .test_serve_role import AppTransport


def padding(stash: object) -> tuple[int, int]:
    """(pad tokens, all tokens) over the train split's stored batches."""
    pads = total = 0
    for b in stash.keys("train"):  # type: ignore[attr-defined]
        tokens = stash.load("train", b)["tokens"]  # type: ignore[attr-defined]
        pads, total = pads + int((tokens == 0).sum()), total + tokens.numel()
    return pads, total


@pytest.mark.parametrize("ids", [list(range(10, 0, -1)), array("q", range(10, 0, -1))])
def test_bucketed_sorts_each_window_stably_up_to_the_limit(ids: object) -> None:
    length = {i: i // 2 for i in range(11)}
    got = bucketed(ids, lambda w: [length[i] for i in w], span=4, limit=8)
    # windows {10, 9, 8, 7} (lengths 5, 4, 4, 3) and {6, 5, 4, 3}: stable within a length;
    # past the limit ids stay where they are
    assert got is ids and list(got) == [7, 9, 8, 10, 3, 5, 4, 6, 2, 1]


def test_bucketing_cuts_padding_and_enters_fingerprint_and_metadata(make_text) -> None:
    plain = make_text("plain")
    sorted_ = make_text("bucketed", bucket_by="tokens", bucket_window=4)
    assert plain.encoder.fingerprint != sorted_.encoder.fingerprint
    assert make_text("again").encoder.fingerprint == plain.encoder.fingerprint
    assert plain.batch_metadata.bucketing is None
    assert sorted_.batch_metadata.bucketing == {"key": "tokens", "window": 4}
    assert sorted_.batch_metadata.to_dict()["bucketing"] == {"key": "tokens", "window": 4}
    plain.prime()
    sorted_.prime()
    ids = [set(plain.load("train", b).data_point_ids) for b in plain.keys("train")]
    bucket_ids = [set(sorted_.load("train", b).data_point_ids) for b in sorted_.keys("train")]
    assert set().union(*ids) == set().union(*bucket_ids)  # the same data points, other batches
    before, after = padding(plain), padding(sorted_)
    assert before[0] >= 3 * after[0]
    # within a window, batch b's longest is no longer than batch b + 1's shortest
    lengths = [sorted_.load("train", b)["lengths"] for b in sorted_.keys("train")]
    for b in range(len(lengths) - 1):
        if (b + 1) % 4:
            assert int(lengths[b].max()) <= int(lengths[b + 1].min())


def test_a_bad_bucketing_key_is_refused(make_text) -> None:
    with pytest.raises(BatchError, match="bucket_by 'nope'.*no such attribute"):
        make_text("bad", bucket_by="nope").prime()
    with pytest.raises(BatchError, match="window >= 1"):
        LengthBuckets("tokens", 0)


def test_a_redealt_text_batch_is_what_encoding_its_rows_gives(tmp_path: Path) -> None:
    settings = build_settings(
        data_dir=tmp_path / "store",
        dataset="batchstash.service.examples:text",
        dataset_options={"bucket_by": "tokens", "bucket_window": 4},
        workers=0,
    )
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/admin/prime").status_code == 202
        assert api.app.state.batchstash.job.wait(timeout=60)  # type: ignore[attr-defined]
        with BatchClient("http://text.test", transport=AppTransport(api), retries=0) as client:
            it = client.iter_batches("train", shuffle_window=2, epoch=3, prefetch=2)
            assert it.bucket_window == 4
            batches = list(it)
    stash = text(path=str(tmp_path / "store"), bucket_by="tokens", bucket_window=4)
    points = {}
    for b in stash.keys("train"):
        stored = stash.load("train", b)
        points.update(dict.fromkeys(stored.data_point_ids, b))
    assert Counter(dp for batch in batches for dp in batch.data_point_ids) == Counter(list(points))
    for batch in batches:
        assert isinstance(batch.id, RedealtBatchId)
        ids = DataPointIDSet(0, tuple(batch.data_point_ids), "train", {})
        fresh = stash.create_batch(stash.data_points(ids), "train", 0)
        fresh.encode()
        for name in ("tokens", "lengths", "label"):
            assert torch.equal(batch[name], fresh.attributes[name]), name
