"""Epoch plans, the prefetching iterator and resuming from its state."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Generator

import pytest

import batchstash.client as bc
from batchstash.client import BatchClient, BatchIterator, EpochPlan
from batchstash.client.plan import PLAN_VERSION, shuffled
from batchstash.client.prefetch import prefetched

from .fakeserver import FINGERPRINT, FakeServer, make_client


def plan(n: int = 8, **kwargs: object) -> EpochPlan:
    return EpochPlan.create(FINGERPRINT, "train", range(n), **kwargs)  # type: ignore[arg-type]


def dealt(p: EpochPlan) -> list[list[int]]:
    return [p.rank_ids(r) for r in range(p.world_size)]


# -- plans -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 12, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_plan_deals_equal_lengths_covering_every_batch(n: int, world_size: int) -> None:
    p = plan(n, world_size=world_size, epoch=2)
    ranks = dealt(p)
    per_rank = -(-n // world_size)
    assert [len(r) for r in ranks] == [per_rank] * world_size == [p.per_rank] * world_size
    counts = Counter(b for r in ranks for b in r)
    assert set(counts) == set(range(n))  # every batch, nothing else
    pad = per_rank * world_size - n
    if pad == 0:
        assert all(c == 1 for c in counts.values())  # disjoint
    else:  # remainder rule: the first `pad` batches of the order (cycled) are read again
        padded = (list(p.order) * (pad // max(n, 1) + 1))[:pad]
        assert sum(counts.values()) - n == pad
        assert counts == Counter(list(p.order) + padded)


def test_plan_remainder_rule_example() -> None:
    p = plan(7, world_size=2, shuffle=False)
    assert p.slots == (0, 1, 2, 3, 4, 5, 6, 0)
    assert dealt(p) == [[0, 2, 4, 6], [1, 3, 5, 0]]
    p = plan(2, world_size=5, shuffle=False)
    assert dealt(p) == [[0], [1], [0], [1], [0]]


def test_plan_is_deterministic() -> None:
    a, b = plan(50, seed=3, epoch=4, world_size=2), plan(50, seed=3, epoch=4, world_size=2)
    assert a.order == b.order and a.hash == b.hash
    assert dealt(a) == dealt(b)
    assert sorted(a.order) == list(range(50))
    assert a.order != tuple(range(50))
    assert EpochPlan.create(FINGERPRINT, "train", reversed(range(50)), seed=3, epoch=4).order == (
        a.order
    )


def test_plan_hash_changes_with_every_input() -> None:
    base = plan(20, seed=1, epoch=1, world_size=2)
    variants = [
        plan(20, seed=2, epoch=1, world_size=2),
        plan(20, seed=1, epoch=2, world_size=2),
        plan(20, seed=1, epoch=1, world_size=3),
        plan(20, seed=1, epoch=1, world_size=2, shuffle=False),
        plan(21, seed=1, epoch=1, world_size=2),
        EpochPlan.create("0" * 32, "train", range(20), seed=1, epoch=1, world_size=2),
        EpochPlan.create(FINGERPRINT, "dev", range(20), seed=1, epoch=1, world_size=2),
        base.replan(0, 2),
    ]
    hashes = {base.hash, *(v.hash for v in variants)}
    assert len(hashes) == len(variants) + 1
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hashes)
    assert plan(20, seed=1, epoch=1).order != plan(20, seed=1, epoch=2).order
    assert plan(20, seed=1, epoch=1).order != plan(20, seed=2, epoch=1).order


def test_shuffle_is_stable_across_versions() -> None:
    # golden order: changes here break every saved state (bump PLAN_VERSION)
    assert PLAN_VERSION == 1
    assert shuffled(range(10), "fp", "train", 0, 0) == [3, 0, 5, 4, 2, 6, 8, 1, 9, 7]
    assert shuffled(range(10), "fp", "train", 0, 1) == [8, 0, 9, 1, 5, 7, 2, 6, 4, 3]
    assert plan(6, shuffle=False).order == (0, 1, 2, 3, 4, 5)


def test_plan_validation() -> None:
    with pytest.raises(bc.PlanError, match="world_size"):
        plan(4, world_size=0)
    with pytest.raises(bc.PlanError, match="more than once"):
        EpochPlan.create(FINGERPRINT, "train", [1, 1, 2])
    with pytest.raises(bc.PlanError, match="rank 2"):
        plan(4, world_size=2).rank_ids(2)
    with pytest.raises(bc.PlanError, match="position 5"):
        plan(8, world_size=2).remaining(5)


def test_replan_deals_only_unread_batches() -> None:
    p = plan(12, world_size=2, epoch=1)
    read = set(p.slots[:6])  # 3 lockstep steps
    q = p.replan(3, 4)
    assert q.resumed_from == ((2, 3),)
    assert set(q.order) == set(range(12)) - read
    assert [len(r) for r in dealt(q)] == [2, 2, 2, 2]  # 6 left, padded to 8
    again = EpochPlan.create(
        FINGERPRINT, "train", range(12), epoch=1, world_size=4, resumed_from=[(2, 3)]
    )
    assert again == q and again.hash == q.hash
    assert p.replan(6, 3).order == ()


# -- prefetch ----------------------------------------------------------------------------------


def test_prefetched_preserves_order_and_bounds_outstanding_work() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))  # finish out of order
        return i * 10

    gen = prefetched(work, range(20), prefetch=3)
    assert started == []  # lazy until the first next()
    taken = []
    for value in gen:
        taken.append(value)
        time.sleep(0.01)  # let the pool run ahead as far as it may
        assert len(started) <= len(taken) + 3
    assert taken == [i * 10 for i in range(20)]
    assert sorted(started) == list(range(20))


def test_prefetched_zero_is_synchronous_and_errors_surface_in_place() -> None:
    thread_names = []

    def work(i: int) -> int:
        thread_names.append(threading.current_thread().name)
        if i == 2:
            raise ValueError("boom at 2")
        return i

    gen = prefetched(work, range(5), prefetch=0)
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(ValueError, match="boom at 2"):
        next(gen)
    assert set(thread_names) == {threading.current_thread().name}
    gen = prefetched(work, range(5), prefetch=2)
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(ValueError, match="boom at 2"):
        next(gen)


def test_prefetched_finalized_in_one_of_its_workers_does_not_wait_for_itself() -> None:
    # the garbage collector may finalize a dropped generator in one of its own pool's threads
    taken, errors, done = threading.Event(), [], threading.Event()
    gen: Generator[int, None, None]

    def work(i: int) -> int:
        if i == 3 and taken.wait(timeout=5):
            try:
                gen.close()  # in a worker, as a finalizer there would
            except BaseException as exc:
                errors.append(exc)
            done.set()
        return i

    gen = prefetched(work, range(10), prefetch=4)
    assert next(gen) == 0
    taken.set()
    assert done.wait(timeout=5)
    assert errors == []


def test_iterator_prefetch_is_bounded() -> None:
    server = FakeServer({"train": range(12)})
    server.delay = 0.01
    client = make_client(server)
    it = client.iter_batches("train", prefetch=3, shuffle=False)
    first = next(it)
    time.sleep(0.1)
    assert first.id == 0
    assert len(server.batch_requests()) <= 1 + 3
    assert server.max_in_flight <= 3
    rest = [b.id for b in it]
    assert rest == list(range(1, 12))
    assert server.max_in_flight >= 2  # it did fetch concurrently


def _settled_count(server: FakeServer) -> int:
    """The number of batches requested once the prefetch threads stop asking for more."""
    count, deadline = -1, time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now = len(server.batch_requests())
        if now == count:
            break
        count = now
    return count


@pytest.mark.parametrize("prefetch", [1, 3, 4, 12, 24])
def test_requested_and_not_yielded_never_exceeds_prefetch(prefetch: int) -> None:
    server = FakeServer({"train": range(60)})
    client = make_client(server)
    it = client.iter_batches("train", prefetch=prefetch, shuffle=False)
    assert it.batches_per_request == max(1, prefetch // 3)
    bound = max(prefetch - 1, 1)  # ahead of the batch the caller holds; one at least
    most = 0
    for position in range(1, 30):
        assert next(it).id == position - 1
        ahead = _settled_count(server) - position
        assert ahead <= bound, (position, ahead)
        most = max(most, ahead)
    assert most == bound  # and it does run that far ahead


# -- the iterator over the fake server ---------------------------------------------------------


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"train": range(12), "test": range(7)})


@pytest.fixture
def client(server: FakeServer) -> BatchClient:
    return make_client(server)


def test_iterator_yields_the_rank_list(server: FakeServer, client: BatchClient) -> None:
    it = client.iter_batches("train", epoch=1, seed=5, rank=1, world_size=3, attributes=["x"])
    expected = plan(12, epoch=1, seed=5, world_size=3).rank_ids(1)
    assert it.rank_ids() == expected and len(it) == 4
    batches = list(it)
    assert [b.id for b in batches] == expected
    assert all(list(b.attributes) == ["x"] for b in batches)
    assert it.position == 4 and len(it) == 0
    assert list(it) == []


def test_two_ranks_two_epochs_cover_each_batch_once(client: BatchClient) -> None:
    orders = []
    for epoch in range(2):
        per_rank = [
            [b.id for b in client.iter_batches("train", epoch=epoch, rank=r, world_size=2)]
            for r in range(2)
        ]
        assert [len(ids) for ids in per_rank] == [6, 6]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(12))
        orders.append(per_rank)
    assert orders[0] != orders[1]


def test_two_ranks_non_divisible_count(client: BatchClient) -> None:
    per_rank = [
        [b.id for b in client.iter_batches("test", epoch=3, rank=r, world_size=2)] for r in range(2)
    ]
    order = EpochPlan.create(FINGERPRINT, "test", range(7), epoch=3).order
    assert [len(ids) for ids in per_rank] == [4, 4]
    assert Counter(per_rank[0] + per_rank[1]) == Counter([*range(7), order[0]])


@pytest.mark.parametrize(("n", "world_size"), [(7, 2), (7, 3), (2, 3), (9, 3), (1, 4)])
def test_unpadded_ranks_count_every_batch_exactly_once(n: int, world_size: int) -> None:
    client = make_client(FakeServer({"dev": range(n)}))
    per_rank = [
        [b.id for b in client.iter_batches("dev", rank=r, world_size=world_size, pad_ranks=False)]
        for r in range(world_size)
    ]
    assert sorted(b for ids in per_rank for b in ids) == list(range(n))  # no repeats
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1
    assert len(per_rank[0]) == max(map(len, per_rank))  # rank 0 reads the most
    padded = [
        len(client.iter_batches("dev", rank=r, world_size=world_size)) for r in range(world_size)
    ]
    assert padded == [-(-n // world_size)] * world_size  # the default still pads


def test_unpadded_state_resumes_without_repeats() -> None:
    client = make_client(FakeServer({"dev": range(7)}))
    its = [client.iter_batches("dev", rank=r, world_size=2, pad_ranks=False) for r in range(2)]
    read = [next(it).id for _ in range(2) for it in its]
    state = its[0].state_dict()
    assert state["pad_ranks"] is False
    padded_plan = client.iter_batches("dev", rank=0, world_size=2).plan
    assert state["plan_hash"] != padded_plan.hash
    rest = [
        b.id
        for r in range(3)
        for b in client.iter_batches("dev", rank=r, world_size=3, state=state)
    ]
    assert sorted(read + rest) == list(range(7))


def test_state_dict_is_json_and_complete(client: BatchClient) -> None:
    it = client.iter_batches("train", epoch=2, seed=9, rank=1, world_size=2)
    next(it)
    state = json.loads(json.dumps(it.state_dict()))
    assert state == {
        "version": PLAN_VERSION,
        "plan_hash": it.plan.hash,
        "fingerprint": FINGERPRINT,
        "split": "train",
        "seed": 9,
        "epoch": 2,
        "pad_ranks": True,
        "shuffle": True,
        "world_size": 2,
        "rank": 1,
        "position": 1,
        "per_rank": 6,
        "resumed_from": [],
        "batches": 12,
    }


def _consume(its: list[BatchIterator], steps: int) -> list[int]:
    """Advance every rank ``steps`` batches in lockstep; return the ids read."""
    return [next(it).id for _ in range(steps) for it in its]


def test_resume_same_world_size(client: BatchClient) -> None:
    its = [client.iter_batches("train", epoch=1, rank=r, world_size=2) for r in range(2)]
    read = _consume(its, 2)
    states = [it.state_dict() for it in its]
    resumed = [client.iter_batches("train", epoch=1, rank=r, world_size=2) for r in range(2)]
    for it, state in zip(resumed, states, strict=True):
        it.load_state_dict(state)
        assert it.plan.hash == state["plan_hash"] and it.position == 2
    rest = [b.id for it in resumed for b in it]
    assert sorted(read + rest) == list(range(12))
    assert resumed[0].state_dict()["position"] == 6


def test_resume_via_state_argument_adopts_the_saved_epoch(client: BatchClient) -> None:
    it = client.iter_batches("train", epoch=4, seed=2, shuffle=True)
    read = _consume([it], 5)
    again = client.iter_batches("train", state=it.state_dict())
    assert (again.plan.epoch, again.plan.seed) == (4, 2)
    assert [b.id for b in again] == list(plan(12, epoch=4, seed=2).order[5:])
    assert len(read) == 5


@pytest.mark.parametrize(
    ("old", "new", "steps"), [(2, 3, 2), (2, 4, 1), (3, 2, 3), (2, 1, 5), (4, 5, 0), (2, 2, 6)]
)
def test_resume_with_another_world_size(
    client: BatchClient, old: int, new: int, steps: int
) -> None:
    its = [client.iter_batches("train", epoch=7, rank=r, world_size=old) for r in range(old)]
    read = _consume(its, steps)
    saved = its[-1].state_dict()  # any rank's state will do
    resumed = [
        client.iter_batches("train", epoch=7, rank=r, world_size=new, state=saved)
        for r in range(new)
    ]
    lists = [it.remaining_ids() for it in resumed]
    assert len({len(ids) for ids in lists}) == 1  # equal lengths
    rest = [b.id for it in resumed for b in it]
    assert set(read) | set(rest) == set(range(12))  # nothing skipped
    unread = set(range(12)) - set(read)
    if old != new:
        assert set(rest) == unread  # nothing read again (but the remainder rule's padding)
        assert len(rest) - len(unread) == -len(unread) % new
    else:
        assert sorted(rest) == sorted(unread)


def test_resume_twice_across_world_sizes(client: BatchClient) -> None:
    its = [client.iter_batches("train", epoch=1, rank=r, world_size=2) for r in range(2)]
    read = _consume(its, 1)
    its = [client.iter_batches("train", epoch=1, rank=r, world_size=3) for r in range(3)]
    for it in its:
        it.load_state_dict(json.loads(json.dumps(_state_of(read, 2))))
    read += _consume(its, 2)
    state = its[0].state_dict()
    assert state["resumed_from"] == [[2, 1]]
    last = client.iter_batches("train", epoch=1, world_size=1, state=state)
    rest = [b.id for b in last]
    assert sorted(read + rest) == list(range(12))


def _state_of(read: list[int], world_size: int) -> dict[str, object]:
    p = plan(12, epoch=1, world_size=world_size)
    assert list(p.slots[: len(read)]) == read
    return {
        "version": PLAN_VERSION,
        "plan_hash": p.hash,
        "fingerprint": FINGERPRINT,
        "split": "train",
        "seed": 0,
        "epoch": 1,
        "shuffle": True,
        "world_size": world_size,
        "rank": 0,
        "position": len(read) // world_size,
    }


def test_resume_against_changed_fingerprint(server: FakeServer, client: BatchClient) -> None:
    it = client.iter_batches("train")
    next(it)
    state = it.state_dict()
    server.fingerprint = "e" * 32
    with pytest.raises(bc.PlanError, match="store changed since the state was saved"):
        client.iter_batches("train", state=state)


def test_resume_refusals(server: FakeServer, client: BatchClient) -> None:
    it = client.iter_batches("train")
    next(it)
    state = it.state_dict()
    with pytest.raises(bc.PlanError, match="before iterating"):
        it.load_state_dict(state)
    with pytest.raises(bc.PlanError, match="split 'train', not 'test'"):
        client.iter_batches("test", state=state)
    with pytest.raises(bc.PlanError, match="not a batch iterator state"):
        client.iter_batches("train", state={"split": "train"})
    with pytest.raises(bc.PlanError, match="plan version"):
        client.iter_batches("train", state={**state, "version": 99})
    with pytest.raises(bc.PlanError, match="position 99"):
        client.iter_batches("train", state={**state, "position": 99})
    server.splits["train"] = list(range(11))
    with pytest.raises(bc.PlanError, match="no longer give the saved plan"):
        client.iter_batches("train", state=state)


def test_store_change_mid_epoch_is_refused(server: FakeServer, client: BatchClient) -> None:
    it = client.iter_batches("train", prefetch=0)
    next(it)
    server.fingerprint = "e" * 32
    with pytest.raises(bc.PlanError, match="store changed"):
        next(it)


def test_iterator_arguments(client: BatchClient) -> None:
    with pytest.raises(bc.PlanError, match="rank 2"):
        client.iter_batches("train", rank=2, world_size=2)
    with pytest.raises(ValueError, match="prefetch"):
        client.iter_batches("train", prefetch=-1)
    with pytest.raises(bc.NotFoundError):
        client.iter_batches("nope")


def test_iterator_close_stops_prefetching(server: FakeServer, client: BatchClient) -> None:
    it = client.iter_batches("train", prefetch=2)
    next(it)
    it.close()
    count = len(server.batch_requests())
    time.sleep(0.05)
    assert len(server.batch_requests()) == count <= 3
    with pytest.raises(StopIteration):
        next(it)
