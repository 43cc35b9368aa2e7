"""Demand-driven priming: batches readers found missing are encoded before the rest of the queue."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from batchstash.client import NotPrimedError
from batchstash.service.dataset.idset import DataPointIDSet
from batchstash.service.prime.schedule import WorkQueue
from batchstash.service.store import layout
from batchstash.service.store.demand import Demand
from batchstash.service.store.lease import JobLease, JobState
from batchstash.service.store.local import LocalBackend

from .factories import stored_order

SLOW = "tests.e2e.factories:slow_iris"


def id_sets(**counts: int) -> list[DataPointIDSet]:
    return [
        DataPointIDSet(i, (f"{split}-{i}",), split) for split, n in counts.items() for i in range(n)
    ]


def keys(chunks: list[list[DataPointIDSet]]) -> list[list[tuple[str, int]]]:
    return [[(s.split_name, s.batch_id) for s in chunk] for chunk in chunks]


def test_demand_keeps_first_asked_first_and_is_bounded() -> None:
    demand = Demand(capacity=3)
    demand.add("train", [5, 2])
    demand.add("train", [2, 7])  # 2 keeps its place
    assert demand.take() == [("train", 5), ("train", 2), ("train", 7)]
    assert demand.take() == []
    demand.add("dev", range(10))
    assert len(demand) == 3 and demand.take() == [("dev", 7), ("dev", 8), ("dev", 9)]


def test_without_demand_the_queue_is_train_first_in_batch_order() -> None:
    queue = WorkQueue(id_sets(test=2, dev=1, train=3), chunk_size=2)
    assert keys(list(queue)) == [
        [("train", 0), ("train", 1)],
        [("train", 2), ("dev", 0)],
        [("test", 0), ("test", 1)],
    ]
    assert queue.demanded == 0 and len(queue) == 0


def test_demanded_batches_go_into_the_next_chunk_alone_and_only_once() -> None:
    demand = Demand()
    queue = WorkQueue(id_sets(train=6, dev=3), chunk_size=2, demand=demand)
    chunks = [queue.next_chunk()]
    demand.add("dev", [2])
    demand.add("train", [5, 0, 99])  # 0 was handed out already, 99 is not planned
    demand.add("nope", [1])
    chunks.append(queue.next_chunk())
    chunks.extend(queue)
    assert keys(chunks) == [
        [("train", 0), ("train", 1)],
        [("dev", 2), ("train", 5)],  # nothing else in a demanded chunk
        [("train", 2), ("train", 3)],
        [("train", 4), ("dev", 0)],
        [("dev", 1)],
    ]
    assert queue.demanded == 2
    handed = [k for chunk in keys(chunks) for k in chunk]
    assert sorted(handed) == sorted(set(handed)) and len(handed) == 9


def test_more_demand_than_a_chunk_spreads_over_the_next_chunks() -> None:
    demand = Demand()
    queue = WorkQueue(id_sets(train=8), chunk_size=2, demand=demand)
    demand.add("train", [7, 6, 5])
    assert keys([queue.next_chunk(), queue.next_chunk(), queue.next_chunk()]) == [
        [("train", 7), ("train", 6)],
        [("train", 5)],
        [("train", 0), ("train", 1)],
    ]


def test_demand_crosses_processes_through_the_store_while_a_prime_holds_the_lease(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(str(tmp_path / "store"))
    replica, holder = Demand(), Demand()
    replica.add("train", [4, 3])
    assert replica.publish(backend, "g1") is False  # no prime runs: nothing is written
    assert backend.version(layout.DEMAND) is None and len(replica) == 2  # kept for a prime here

    lease = JobLease.acquire(backend, "prime", generation="g1")
    time.sleep(0.55)
    assert replica.publish(backend, "g1") is True
    replica.add("dev", [1])
    assert replica.publish(backend, "g1") is False  # at most every PUBLISH_EVERY_S
    time.sleep(0.55)
    assert replica.publish(backend, "g1") is True
    record = json.loads((tmp_path / "store" / layout.DEMAND).read_bytes())
    assert record["generation"] == "g1"
    assert record["wanted"] == [["train", 4], ["train", 3], ["dev", 1]]

    assert Demand().collect(backend, "other-generation") == 0  # another plan's: ignored
    assert holder.collect(backend, "g1") == 3
    assert holder.take() == [("train", 4), ("train", 3), ("dev", 1)]
    assert holder.collect(backend, "g1") == 0  # emptied once collected
    assert json.loads((tmp_path / "store" / layout.DEMAND).read_bytes())["wanted"] == []

    with holder.consuming():  # a prime of this process takes the demand itself
        holder.add("train", [1])
        time.sleep(0.55)
        assert holder.publish(backend, "g1") is False and len(holder) == 1
    lease.finish(JobState.DONE)


def test_an_unwritable_store_only_stops_the_publishing(tmp_path: Path) -> None:
    class ReadOnly(LocalBackend):
        def create(self, key: str, data: bytes) -> bool:
            raise PermissionError(13, "read-only file system")

    backend = ReadOnly(str(tmp_path / "store"))
    JobLease.acquire(LocalBackend(str(tmp_path / "store")), "prime", generation="g1")
    demand = Demand()
    demand.add("train", [1])
    assert demand.publish(backend, "g1") is False  # logged, never raised
    demand.add("train", [2])
    time.sleep(0.55)
    assert demand.publish(backend, "g1") is False  # paused: no write is tried for a while


@pytest.mark.slow
def test_a_read_of_a_missing_batch_makes_the_running_prime_encode_it_next(
    tmp_path: Path,
) -> None:
    from batchstash.service import BatchStash

    # 2 flowers a batch: 53 train batches of 76; 20 ms a flower; one worker, chunks of 8
    stash = BatchStash.from_factory(SLOW, path=str(tmp_path / "store"), delay=0.02, batch_size=2)
    stash.workers = 1
    last = len(stash.keys("train")) - 1
    total = sum(c["batches"] for c in stash.split_counts().values())
    assert last > total // 2  # in train-first order it would be stored after the half
    stash.describe()  # the plan a server writes at start: reads know what is planned
    running = threading.Event()

    def progress(split: str, done: int, total: int) -> None:
        if split == "train" and done >= 1:
            running.set()

    primed = threading.Thread(target=stash.prime, kwargs={"progress": progress})
    primed.start()
    assert running.wait(60)  # the pool runs, its first chunks handed out
    with pytest.raises(NotPrimedError):  # the server's 503: the reader records the demand
        stash.reader.payloads("train", [last])
    primed.join(timeout=120)
    assert stash.is_primed
    order = stored_order(stash.path)
    assert len(order) == total
    assert order.index(("train", last)) < total // 2, order[: total // 2]


def test_a_ramp_hands_each_worker_one_id_set_first() -> None:
    queue = WorkQueue(id_sets(train=7), chunk_size=3, ramp=2)
    sizes = [len(chunk) for chunk in queue]
    assert sizes == [1, 1, 3, 2]  # the first stored batches are reported one by one
