"""Priming on Ray: one local Ray (2 CPUs, no dashboard) for the session, the same bytes."""

from __future__ import annotations

import threading

import pytest

from batchstash.client import BatchError, PrimeCancelledError, VectorizerError
from batchstash.service import BatchStash
from batchstash.service.prime.executors import make_executor
from batchstash.service.prime.ray_executor import RayExecutor

from .factories import stored_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the whole session; shut down by it (never ``ray stop``)."""
    import os

    import ray

    from tests.conftest import REPO_ROOT

    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}},
    )
    yield ray
    ray.shutdown()


def test_the_ray_executor_is_chosen_by_name():
    executor = make_executor("ray", 2, address="auto")
    assert isinstance(executor, RayExecutor) and executor.address == "auto"
    pool = make_executor("process", 2, address="auto")  # an option of another executor
    assert pool.__class__.__name__ == "ProcessExecutor" and pool.workers == 2
    assert make_executor("ray", 0).__class__.__name__ == "InlineExecutor"
    with pytest.raises(BatchError, match="unknown executor 'spark'"):
        make_executor("spark", 2)


def test_ray_gives_the_same_bytes_as_the_process_pool(ray_local, tmp_path):
    factory = "tests.service.factories:noisy_iris"
    pool = BatchStash.from_factory(factory, path=str(tmp_path / "pool"), workers=2)
    assert pool.prime() == 9
    on_ray = BatchStash.from_factory(
        factory, path=str(tmp_path / "ray"), workers=2, executor="ray", chunk_size=1
    )
    calls = []
    assert on_ray.prime(lambda *a: calls.append(a)) == 9
    assert stored_files(on_ray.path) == stored_files(pool.path)
    assert on_ray.is_primed
    assert sorted(c for c in calls if c[1] == c[2]) == [
        ("dev", 1, 1),
        ("test", 2, 2),
        ("train", 6, 6),
    ]


def test_a_vectorizer_error_on_ray_names_the_batch_and_point(ray_local, tmp_path):
    stash = BatchStash.from_factory(
        "tests.service.factories:exploding_iris",
        path=str(tmp_path / "x"),
        bad_id="42",
        workers=2,
        executor="ray",
        chunk_size=1,
    )
    with pytest.raises(VectorizerError, match=r"data point '42', field 'extra'"):
        stash.prime()
    assert not stash.is_primed
    status = stash.backend.read("job.json")
    assert b'"state": "failed"' in status and b"vectorizer_error" in status


def test_a_lost_ray_worker_is_retried_and_the_prime_completes(ray_local, tmp_path):
    marker = tmp_path / "died"
    stash = BatchStash.from_factory(
        "tests.service.factories:dying_iris",
        path=str(tmp_path / "x"),
        bad_id="42",
        marker=str(marker),
        workers=2,
        executor="ray",
        chunk_size=1,
    )
    assert stash.prime() == 9  # the task whose worker died ran again elsewhere
    assert marker.exists() and stash.is_primed
    # the same configuration in this process (the marker exists now: nothing dies)
    reference = BatchStash.from_factory(
        "tests.service.factories:dying_iris",
        path=str(tmp_path / "ref"),
        bad_id="42",
        marker=str(marker),
        workers=0,
    )
    reference.prime()
    assert stored_files(stash.path) == stored_files(reference.path)


def test_cancel_stops_a_ray_prime_and_a_later_prime_resumes(ray_local, tmp_path):
    stash = BatchStash.from_factory(
        "tests.e2e.factories:slow_iris",
        path=str(tmp_path / "x"),
        delay=0.02,
        workers=2,
        executor="ray",
        chunk_size=1,
    )
    cancel = threading.Event()

    def progress(split, done, total):
        if done and split == "test":
            cancel.set()

    with pytest.raises(PrimeCancelledError):
        stash.prime(progress, cancel)
    assert not stash.is_primed
    assert b'"state": "cancelled"' in stash.backend.read("job.json")
    assert stash.prime() < 9 and stash.is_primed
