"""BatchClient over several URLs: round robin, failover, cooldowns, one store, under prefetch."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import torch

import batchstash.client as bc
from batchstash.client import Batch, BatchClient, BatchDataset, EndpointState, EpochPlan

from .fakeserver import (
    FINGERPRINT,
    Cluster,
    FakeClock,
    FakeServer,
    SocketServer,
    error,
    make_cluster,
    make_tensors,
)

A, B, C = "http://a.test", "http://b.test", "http://c.test"


def with_clock(client: BatchClient) -> FakeClock:
    """The fake clock of a :func:`make_cluster` client (its cooldowns run on it too)."""
    clock: FakeClock = client.clock  # type: ignore[attr-defined]
    return clock


def served(servers: list[FakeServer]) -> list[int]:
    """Batch requests each server received (answered or not)."""
    return [len(s.batch_requests()) for s in servers]


# -- URLs --------------------------------------------------------------------------------------


def test_one_url_works_as_before() -> None:
    client = BatchClient("http://stash:8000/")
    assert client.url == "http://stash:8000" and client.urls == ("http://stash:8000",)
    assert repr(client) == "BatchClient('http://stash:8000')"
    client.close()


def test_several_urls_as_a_sequence_or_a_comma_separated_string() -> None:
    for given in (["http://a:1", "http://b:2/"], ("http://a:1",) + ("http://b:2",)):
        with BatchClient(given) as client:
            assert client.urls == ("http://a:1", "http://b:2") and client.url == "http://a:1"
    with BatchClient(" http://a:1 , http://b:2/") as client:
        assert client.urls == ("http://a:1", "http://b:2")
        assert repr(client) == "BatchClient(['http://a:1', 'http://b:2'])"
        assert client.down_urls() == []
        assert client.endpoints() == [
            EndpointState("http://a:1", False, 0, 0.0, 0, None),
            EndpointState("http://b:2", False, 0, 0.0, 0, None),
        ]
    assert client.closed


@pytest.mark.parametrize("bad", [[], "", "http://a,,http://b", ["http://a", "http://a/"]])
def test_bad_url_lists(bad: object) -> None:
    with pytest.raises(ValueError, match="URL"):
        BatchClient(bad)  # type: ignore[arg-type]


def test_negative_cooldowns() -> None:
    with pytest.raises(ValueError, match="cooldown"):
        BatchClient([A, B], cooldown=-1)
    with pytest.raises(ValueError, match="cooldown"):
        BatchClient([A, B], max_cooldown=-1)


def test_close_closes_every_pool() -> None:
    client, _ = make_cluster(3)
    with client:
        client.splits()
    assert client.closed
    assert all(e.http.is_closed for e in client.engine.endpoints)


# -- spreading and failover --------------------------------------------------------------------


def test_requests_are_spread_round_robin() -> None:
    client, servers = make_cluster(3)
    client.metadata()  # one request (to a), so that batches need no other
    for batch_id in range(9):
        assert client.batch("train", batch_id % 8).id == batch_id % 8
    assert served(servers) == [3, 3, 3]
    assert [e.requests for e in client.endpoints()] == [4, 3, 3]
    assert client.sleeps == []  # type: ignore[attr-defined]


def test_a_down_url_is_skipped_and_cooled_down() -> None:
    client, (a, b) = make_cluster(2, retries=3)
    with_clock(client)
    a.down = True
    assert client.batch("train", 0).id == 0  # a refused it; b answered at once
    assert served([a, b]) == [1, 1] and client.sleeps == []  # type: ignore[attr-defined]
    assert client.down_urls() == [A]
    state = client.endpoints()[0]
    assert (state.down, state.failures, state.cooldown) == (True, 1, 1.0)
    assert state.last_error is not None and "ConnectError" in state.last_error
    for batch_id in range(1, 7):
        assert client.batch("train", batch_id).id == batch_id
    assert served([a, b]) == [1, 7]  # no request to a while it cools down
    assert client.sleeps == []  # type: ignore[attr-defined]


def test_recovery_after_the_cooldown_which_grows_and_is_capped() -> None:
    client, (a, b) = make_cluster(2, cooldown=1.0, max_cooldown=3.0)
    clock = with_clock(client)
    a.down = True
    client.splits()
    cooldowns = [client.endpoints()[0].cooldown]
    for _ in range(3):  # each cooldown ends, a is tried again, fails, and cools down longer
        clock.now += cooldowns[-1]
        before = len(a.requests)
        client.splits()
        client.splits()
        assert len(a.requests) == before + 1  # one try when the cooldown ended, then b
        cooldowns.append(client.endpoints()[0].cooldown)
    assert cooldowns == [1.0, 2.0, 3.0, 3.0]
    assert client.endpoints()[0].failures == 4
    a.down = False
    clock.now += 3.0
    client.splits()
    client.splits()  # one of the two asks a first, and a answers
    assert client.down_urls() == []
    assert client.endpoints()[0] == EndpointState(A, False, 0, 0.0, len(a.requests), None)
    client.metadata()
    counts = served([a, b])
    for batch_id in range(4):
        client.batch("train", batch_id)
    assert [n - m for n, m in zip(served([a, b]), counts, strict=True)] == [2, 2]


def test_every_url_cooling_down_is_still_tried() -> None:
    client, (a, b) = make_cluster(2, retries=0)
    with_clock(client)
    a.down = b.down = True
    with pytest.raises(bc.TransportError):
        client.splits()
    assert client.down_urls() == [A, B]
    b.down = False  # b is back before its cooldown ends: with every URL down, it is asked
    assert client.splits()["primed"] is True
    assert client.down_urls() == [A]


def test_five_hundreds_fail_over_but_not_primed_does_not() -> None:
    client, (a, b) = make_cluster(2, retries=2)
    with_clock(client)
    a.answer = httpx.Response(502, text="bad gateway")
    assert client.batch("train", 0).id == 0
    assert client.endpoints()[0].last_error == "502 Bad Gateway"
    assert client.sleeps == []  # type: ignore[attr-defined]

    client, (a, b) = make_cluster(2, retries=2)
    a.answer = error(500, "store_corrupt", "a replica's disk")
    assert client.batch("train", 0).id == 0
    assert client.endpoints()[0].last_error == "500 store_corrupt"

    client, (a, b) = make_cluster(2, retries=2)
    a.not_primed[("train", 0)] = 1  # the store's state: wait its Retry-After, like one URL
    assert client.batch("train", 0).id == 0
    assert client.sleeps == [1.0]  # type: ignore[attr-defined]
    assert client.down_urls() == []
    assert served([a, b]) == [1, 1]


def test_four_hundreds_are_raised_at_once() -> None:
    client, (a, b) = make_cluster(2, retries=3)
    with pytest.raises(bc.NotFoundError, match="unknown batch train/99"):
        client.batch("train", 99)
    assert served([a, b]) == [1, 0] and client.down_urls() == []
    with pytest.raises(bc.InvalidRequestError):
        client.batch("train", 0, attributes=["nope"])
    assert served([a, b]) == [1, 1]


def test_every_url_down_raises_a_transport_error_naming_them_all() -> None:
    client, servers = make_cluster(3, retries=2, backoff=0.1)
    for server in servers:
        server.down = True
    with pytest.raises(bc.TransportError) as info:
        client.batch("train", 0)
    message = info.value.message
    assert message.startswith("GET /v1/splits/train/batches/0 failed on every URL")
    assert "after 3 attempts" in message
    for url in (A, B, C):
        assert f"{url}: ConnectError: connection refused" in message
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert served(servers) == [3, 3, 3]  # every URL, on each of 1 + retries attempts
    sleeps = client.sleeps  # type: ignore[attr-defined]
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.15 and 0.1 <= sleeps[1] <= 0.3
    assert client.down_urls() == [A, B, C]


def test_every_url_failing_keeps_the_server_error_class() -> None:
    client, (a, b) = make_cluster(2, retries=1)
    a.down = True
    b.answer = error(500, "store_corrupt", "bad file")
    with pytest.raises(bc.CorruptStoreError) as info:
        client.splits()
    assert f"{A}: ConnectError" in info.value.message
    assert f"{B}: 500 store_corrupt" in info.value.message


def test_a_url_back_between_attempts_serves_the_retry() -> None:
    client, (a, b) = make_cluster(2, retries=2)
    a.down = b.down = True
    with_clock(client).on_sleep = lambda seconds: setattr(b, "down", False)
    assert client.batch_ids("train") == list(range(8))
    assert client.down_urls() == [A]


# -- one store ---------------------------------------------------------------------------------


def test_urls_serving_different_stores_are_refused() -> None:
    client, (a, b) = make_cluster(2)
    b.fingerprint = "e" * 32
    assert client.splits()["fingerprint"] == FINGERPRINT  # learnt from a
    with pytest.raises(bc.PlanError) as info:
        client.splits()  # b answers another store
    message = info.value.message
    assert f"{B} serves store {'e' * 32}" in message and f"{A} serves {FINGERPRINT}" in message
    assert "same store" in message


def test_a_batch_header_from_another_store_is_refused_mid_epoch() -> None:
    client, (a, b) = make_cluster(2)
    it = client.iter_batches("train", prefetch=0)  # batch ids from a
    b.fingerprint = "e" * 32
    with pytest.raises(bc.PlanError, match=f"{B} serves store e+, but {A} serves f+"):
        list(it)


def test_the_store_changing_everywhere_is_followed() -> None:
    client, (a, b) = make_cluster(2)
    assert client.metadata() is not None  # learns the fingerprint from a
    for server in (a, b):
        server.fingerprint = "e" * 32
    assert client.splits()["fingerprint"] == "e" * 32  # from b, and a now agrees
    assert client.split_batch_ids("train")[0] == "e" * 32
    assert client.batch("train", 0).id == 0
    assert client.fingerprint() == "e" * 32


def test_another_store_while_the_first_url_is_unreachable_is_refused() -> None:
    client, (a, b) = make_cluster(2)
    client.splits()
    a.down = True
    b.fingerprint = "e" * 32
    with pytest.raises(bc.PlanError, match=f"{A} served f+ and no other URL answers now"):
        client.splits()
    a.down = False  # it answers again, with the first store: the two URLs disagree
    with pytest.raises(bc.PlanError, match=f"{B} serves store e+, but {A} serves f+"):
        for _ in range(2):  # a answers f (the store the client knows), b answers e
            client.splits()


def test_a_store_change_is_confirmed_by_another_url() -> None:
    client, (a, b, c) = make_cluster(3)
    client.splits()  # learnt from a
    a.fingerprint = "e" * 32  # a alone changes: b says it did not
    with pytest.raises(bc.PlanError, match=f"{A} serves store e+, but {B} serves f+"):
        for _ in range(3):  # b, then c answer f: no change; then a answers e
            client.split_batch_ids("train")
    b.fingerprint = c.fingerprint = "e" * 32
    a.down = True  # the first URL is gone, but c confirms what b says
    for _ in range(3):
        assert client.split_batch_ids("train")[0] == "e" * 32
    assert client.down_urls() == [A]


# -- under prefetch threads --------------------------------------------------------------------


def test_losing_a_replica_mid_epoch_yields_every_batch_once() -> None:
    client, servers = make_cluster(3, {"train": range(40)}, cooldown=60.0)
    for server in servers:
        server.delay = 0.002
    it = client.iter_batches("train", epoch=3, prefetch=6, batches_per_request=1)
    expected = EpochPlan.create(FINGERPRINT, "train", range(40), epoch=3).rank_ids(0)
    got, at_loss = [], 0
    for batch in it:
        got.append(batch)
        if len(got) == 5:
            servers[1].down = True
            at_loss = len(servers[1].requests)
    assert [b.id for b in got] == expected  # in plan order, each once
    for batch in got:
        want = make_tensors("train", batch.id)
        assert torch.equal(batch["x"], want["x"]) and torch.equal(batch["label"], want["label"])
    assert client.down_urls() == [B]
    assert client.sleeps == []  # type: ignore[attr-defined]
    refused = len(servers[1].requests) - at_loss
    assert 1 <= refused <= it.prefetch  # only requests on their way when b was first refused
    assert sum(len(s.batch_requests()) for s in servers) == 40 + refused
    assert sum(e.requests for e in client.endpoints()) == sum(len(s.requests) for s in servers)


def test_concurrent_requests_share_the_urls_safely() -> None:
    client, servers = make_cluster(4, {"train": range(8)}, cooldown=60.0)
    servers[0].down = True
    errors: list[BaseException] = []
    got: Counter[int] = Counter()
    lock = threading.Lock()

    def work(worker: int) -> None:
        try:
            for i in range(40):
                batch = client.batch("train", (worker + i) % 8)
                with lock:
                    got[batch.id] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(got.values()) == 320 and set(got) == set(range(8))
    counts = served(servers)
    assert counts[0] <= 8  # only requests already on their way when it was first marked down
    assert sum(counts) == 320 + counts[0]
    assert min(counts[1:]) >= 80  # the others share the load
    assert sum(e.requests for e in client.endpoints()) == sum(len(s.requests) for s in servers)
    assert client.down_urls() == [A] and client.endpoints()[0].failures == 1


def test_dataset_passes_several_urls_to_its_clients() -> None:
    dataset = BatchDataset([A, B], "train")
    with dataset.client_factory() as client:
        assert client.urls == (A, B)
    dataset = BatchDataset(f"{A},{B}", "train")
    with dataset.client_factory() as client:
        assert client.urls == (A, B)


def test_dataset_over_a_cluster_with_a_url_down() -> None:
    servers = [FakeServer({"train": range(10)}) for _ in range(2)]
    servers[0].down = True
    clients: list[BatchClient] = []

    def factory() -> BatchClient:  # a new client for each use, as in DataLoader workers
        transport = httpx.MockTransport(Cluster(dict(zip([A, B], servers, strict=True))))
        clients.append(BatchClient([A, B], transport=transport))
        return clients[-1]

    dataset = BatchDataset([A, B], "train", epoch=1, client_factory=factory)
    batches = list(dataset)
    assert sorted(b.id for b in batches if isinstance(b, Batch)) == list(range(10))
    assert clients[-1].down_urls() == [A] and clients[-1].closed


# -- real sockets ------------------------------------------------------------------------------


def test_real_sockets_fail_over_when_a_server_dies_mid_epoch() -> None:
    fakes = [FakeServer({"train": range(30)}) for _ in range(2)]
    for fake in fakes:
        fake.delay = 0.003
    live = [SocketServer(fake) for fake in fakes]
    with socket_free_url() as dead:
        urls = [live[0].url, dead, live[1].url]
        with BatchClient(urls, retries=1, timeout=5, cooldown=30.0) as client:
            try:
                it = client.iter_batches("train", prefetch=4, batches_per_request=1)
                ids = []
                for batch in it:
                    ids.append(batch.id)
                    if len(ids) == 6:
                        live[0].kill()
            finally:
                live[1].kill()
            assert sorted(ids) == list(range(30)) and len(ids) == 30
            assert client.down_urls() == [live[0].url, dead]
            assert fakes[0].batch_requests() and fakes[1].batch_requests()


@contextlib.contextmanager
def socket_free_url() -> Iterator[str]:
    """A loopback URL nothing listens on (connections are refused), kept so while in use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_timing_of_a_failover_is_immediate() -> None:
    client, (a, b) = make_cluster(2, retries=5, backoff=10.0)
    with_clock(client).on_sleep = time.sleep  # a failover must not wait: the next URL at once
    a.down = True
    start = time.monotonic()
    for batch_id in range(4):
        client.batch("train", batch_id)
    assert time.monotonic() - start < 1.0
