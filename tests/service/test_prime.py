"""Priming: progress, cancellation, vectorizer errors and the spawn-started worker pool."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from batchstash.client import PrimeCancelledError, VectorizerError
from batchstash.service import BatchStash
from batchstash.service.prime.run import MAX_AUTO_CHUNK, auto_chunk_size

from .factories import exploding_iris, noisy_iris, stored_files, stored_object

BAD_ID = "42"


def _where(stash, data_point_id):
    for id_set in stash.batch_data_point_sets:
        if data_point_id in id_set.data_point_ids:
            return id_set.split_name, id_set.batch_id
    raise AssertionError(data_point_id)


@pytest.mark.parametrize(
    ("batches", "workers", "size"),
    [(0, 2, 1), (3, 2, 1), (40, 2, 5), (400, 2, MAX_AUTO_CHUNK), (10**6, 1, MAX_AUTO_CHUNK)],
)
def test_auto_chunk_size_keeps_four_tasks_a_worker_and_small_tasks(batches, workers, size):
    assert auto_chunk_size(batches, workers) == size


def test_progress_reports_done_and_total_per_split(make_iris):
    stash = make_iris()
    calls = []
    stash.prime(lambda split, done, total: calls.append((split, done, total)))

    totals = {"dev": 1, "test": 2, "train": 6}
    assert calls[:3] == [("dev", 0, 1), ("test", 0, 2), ("train", 0, 6)]
    for split, total in totals.items():
        mine = [(d, t) for s, d, t in calls if s == split]
        assert mine == [(d, total) for d in range(total + 1)]
    assert len(calls) == 3 + 9

    calls.clear()
    stored_object(stash.path, "train", 2, "label").unlink()
    assert stash.prime(lambda *a: calls.append(a)) == 1
    assert calls == [("dev", 1, 1), ("test", 2, 2), ("train", 5, 6), ("train", 6, 6)]


def test_cancel_stops_and_a_later_prime_completes(make_iris):
    stash = make_iris()
    cancel = threading.Event()
    seen = []

    def progress(split, done, total):
        seen.append((split, done))
        if len([s for s in seen if s[1] > 0]) == 2:
            cancel.set()

    with pytest.raises(PrimeCancelledError, match="prime cancelled"):
        stash.prime(progress, cancel)

    assert not stash.is_primed and not stash.is_priming
    counts = stash.split_counts()
    assert sum(c["stored"] for c in counts.values()) == 2
    assert not (Path(stash.path) / "manifest.json").exists()

    assert stash.prime() == 7
    assert stash.is_primed
    assert stash.load("train", 5)["label"].shape == (5,)


def test_vectorizer_error_names_split_batch_and_point(tmp_path):
    stash = exploding_iris(str(tmp_path / "x"), BAD_ID)
    split, batch_id = _where(stash, BAD_ID)
    with pytest.raises(VectorizerError) as info:
        stash.prime()
    message = info.value.message
    assert f"split {split!r}, batch {batch_id}, data point '{BAD_ID}'" in message
    assert "field 'extra' (vectorizer 'explode')" in message
    assert "cannot vectorize '42'" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert not stash.is_primed


def test_unreadable_attribute_is_a_vectorizer_error(make_iris):
    stash = make_iris()
    points = stash.data_points(stash.batch_data_point_sets[0])
    points[1].row.pop("petal_width")
    batch = stash.create_batch(points, "dev", 0)
    with pytest.raises(
        VectorizerError,
        match=rf"batch 0, data point '{points[1].id}', "
        r"field 'flower_dims' .*cannot read 'flower_dims'",
    ):
        batch.encode()


@pytest.mark.slow
def test_vectorizer_error_from_a_worker_pool(tmp_path):
    stash = BatchStash.from_factory(
        "tests.service.factories:exploding_iris",
        path=str(tmp_path / "x"),
        bad_id=BAD_ID,
        workers=2,
        chunk_size=1,
    )
    split, batch_id = _where(stash, BAD_ID)
    with pytest.raises(
        VectorizerError,
        match=rf"split {split!r}, batch {batch_id}, "
        rf"data point '{BAD_ID}', field 'extra'",
    ):
        stash.prime()
    assert not stash.is_primed and not stash.is_priming


@pytest.mark.slow
def test_two_workers_give_the_same_bytes_as_one_process(tmp_path):
    inline = noisy_iris(str(tmp_path / "inline"))
    assert inline.prime() == 9
    pooled = BatchStash.from_factory(
        "tests.service.factories:noisy_iris", path=str(tmp_path / "pool"), workers=2
    )
    calls = []
    assert pooled.prime(lambda *a: calls.append(a)) == 9

    files = stored_files(inline.path)
    assert len(files) == 27  # 9 batches x 3 groups
    assert stored_files(pooled.path) == files
    assert pooled.is_primed
    # the noise differs between batches: the per-batch seed, not a global one, made it equal
    a, b = pooled.load("train", 0)["extra"], pooled.load("train", 1)["extra"]
    assert not torch.equal(a[:5], b[:5])
    for split, total in {"dev": 1, "test": 2, "train": 6}.items():
        mine = [d for s, d, t in calls if s == split and t == total]
        assert mine == list(range(total + 1))


@pytest.mark.slow
def test_a_container_ordering_ids_per_process_primes_a_readable_store(tmp_path):
    # each process lists the ids in another order: the plan is made once, stored and read back
    factory = "tests.service.factories:process_ordered_iris"
    path = str(tmp_path / "x")
    stash = BatchStash.from_factory(factory, path=path, workers=2, chunk_size=1)
    assert stash.prime() == 9
    plan = [s.data_point_ids for s in stash.batch_data_point_sets]
    for id_set in stash.batch_data_point_sets:
        batch = stash.load(id_set.split_name, id_set.batch_id)
        assert tuple(batch.data_point_ids) == tuple(id_set.data_point_ids)
    # a later process (another order again) finds the store fresh and primed, same plan
    script = (
        "from batchstash.service import BatchStash; "
        f"s = BatchStash.from_factory({factory!r}, path={path!r}, workers=0); "
        "print(s.is_stale, s.is_primed, s.prime(), "
        "[list(b.data_point_ids) for b in s.batch_data_point_sets][:1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split(maxsplit=3)
    assert out[:3] == ["False", "True", "0"]
    assert out[3].strip() == str([list(plan[0])])


@pytest.mark.slow
def test_a_script_that_primes_at_import_time_gets_the_main_guard_hint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "from batchstash.service import BatchStash\n"
        "stash = BatchStash.from_factory('batchstash.service.examples:iris', "
        f"path={str(tmp_path / 'store')!r}, workers=2)\n"
        "stash.prime()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert 'put the priming under `if __name__ == "__main__":`' in done.stderr.splitlines()[-1]
