"""Waiting for a store being primed: the X-Batchstash-Prime header of 503 not_primed."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from batchstash.client import BatchClient, EpochPlan, NotPrimedError
from batchstash.client.priming import PRIME_HEADER

from .fakeserver import (
    FINGERPRINT,
    URL,
    FakeClock,
    FakeServer,
    SocketServer,
    error,
    make_client,
)

PRIMING_LOGGER = "batchstash.client.priming"


class PrimingServer(FakeServer):
    """A store whose prime advances ``step`` batches each time it answers ``503 not_primed``.

    Batch ``i`` is served once ``done > i``; every 503 carries the prime header (unless
    ``header`` is false, an older server) and ``Retry-After`` (unless ``retry_after`` is None).
    """

    def __init__(
        self,
        total: int = 150,
        step: int = 10,
        state: str = "running",
        header: str | bool = True,
        done: int = 0,
    ) -> None:
        super().__init__({"train": range(total)})
        self.total, self.step, self.state, self.header, self.done = total, step, state, header, done
        self.retry_after = "2"
        self.answered: list[str] = []  # the header of each 503, in order
        self._progress_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()
        del state["_progress_lock"]
        return state

    def batch(self, request: httpx.Request, split: str, batch_id: int) -> httpx.Response:
        with self._progress_lock:
            if batch_id < self.done or batch_id not in self.splits[split]:
                return super().batch(request, split, batch_id)
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            value = json.dumps({"state": self.state, "done": self.done, "total": self.total})
            if isinstance(self.header, str):
                value = self.header
            if self.header:
                headers[PRIME_HEADER] = value
                self.answered.append(value)
            self.done = min(self.total, self.done + self.step)
        return error(503, "not_primed", f"batch {split}/{batch_id} is not encoded", **headers)


def timed_client(server: FakeServer, **kwargs: object) -> tuple[BatchClient, FakeClock]:
    """A client of ``server`` whose clock starts at 0 and moves only when it waits."""
    client = make_client(server, **kwargs)
    clock: FakeClock = client.clock  # type: ignore[attr-defined]
    clock.now = 0.0
    return client, clock


def wait_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == PRIMING_LOGGER and r.levelno == logging.INFO
    ]


def batch_requests(server: FakeServer) -> int:
    return len(server.batch_requests())


def test_a_running_prime_is_waited_for_beyond_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PRIMING_LOGGER)
    server = PrimingServer(total=150, step=10)
    client, clock = timed_client(server, retries=5)
    batch = client.batch("train", 100)  # encoded once done > 100: eleven 503s
    assert batch.id == 100
    assert batch_requests(server) == 12 > (client.retry.attempts or 0)
    assert clock.sleeps == [2.0] * 11  # Retry-After, 22 s: twice what 5 retries would allow
    # one line at most every 5 s of waiting: at 0, 6, 12 and 18 s
    assert wait_lines(caplog) == [
        f"waiting for the store to be primed: {done}/150 batches" for done in (0, 30, 60, 90)
    ]


def test_polls_back_off_to_five_seconds_without_retry_after() -> None:
    server = PrimingServer(total=40, step=5)
    server.retry_after = None
    client, clock = timed_client(server, retries=1, backoff=0.5)
    assert client.batch("train", 30).id == 30
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_stalled_prime_is_given_up_after_a_minute() -> None:
    server = PrimingServer(total=150, step=0, done=40)
    client, clock = timed_client(server, retries=5)
    with pytest.raises(NotPrimedError) as info:
        client.batch("train", 100)
    assert clock.now == 60.0 and batch_requests(server) == 31
    message = info.value.message
    assert message.startswith("GET /v1/splits/train/batches/100: batch train/100 is not encoded")
    assert "the prime has made no progress for 60 s (stuck at 40/150 batches)" in message
    assert "batchstash status --url http://stash.test" in message


def test_a_prime_still_starting_is_waited_for_up_to_the_limit() -> None:
    server = PrimingServer(total=150, step=0, done=0)  # no batch done yet: workers starting
    client, clock = timed_client(server, retries=0, wait_for_prime=150)
    with pytest.raises(NotPrimedError, match="still being primed after 150 s .0/150 batches"):
        client.batch("train", 100)
    assert clock.now == 150.0  # past the 60 s stall rule, which needs a first batch


def test_progress_restarts_the_stall_timer() -> None:
    server = PrimingServer(total=150, step=0)
    client, clock = timed_client(server, retries=0)
    real_batch = server.batch

    def slow_prime(request: httpx.Request, split: str, batch_id: int) -> httpx.Response:
        if clock.now in (50.0, 100.0):  # one batch every 50 s: slow, but progressing
            server.done += 1
        return real_batch(request, split, batch_id)

    server.batch = slow_prime  # type: ignore[method-assign]
    with pytest.raises(NotPrimedError, match="no progress for 60 s .stuck at 2/150"):
        client.batch("train", 100)
    assert clock.now == 160.0  # 100 s of progress, then 60 s without


def test_wait_for_prime_caps_the_wait() -> None:
    server = PrimingServer(total=150, step=1)
    client, clock = timed_client(server, retries=5, wait_for_prime=9)
    with pytest.raises(NotPrimedError) as info:
        client.batch("train", 100)
    assert clock.sleeps == [2.0, 2.0, 2.0, 2.0, 1.0]  # the last poll is cut to the limit
    assert "the store is still being primed after 9 s (5/150 batches)" in info.value.message
    assert "RetryPolicy(wait_for_prime=...)" in info.value.message


@pytest.mark.parametrize(
    ("state", "done", "total", "advice"),
    [
        ("idle", 0, 0, "nothing is priming this store: run `batchstash prime --url http://stash"),
        ("failed", 40, 150, "the prime failed at 40/150 batches: see `batchstash status --url "),
        ("cancelled", 40, 150, "the prime was cancelled at 40/150 batches: run `batchstash prime"),
        ("interrupted", 7, 9, "the priming process died at 7/9 batches: run `batchstash prime"),
    ],
)
def test_no_running_prime_fails_at_once(state: str, done: int, total: int, advice: str) -> None:
    header = json.dumps({"state": state, "done": done, "total": total})
    server = PrimingServer(total=150, header=header)
    client, clock = timed_client(server, retries=5)
    with pytest.raises(NotPrimedError) as info:
        client.batch("train", 100)
    assert info.value.message.startswith("GET /v1/splits/train/batches/100: batch train/100 is ")
    assert advice in info.value.message
    assert batch_requests(server) == 1 and clock.sleeps == []


@pytest.mark.parametrize(
    ("state", "done", "total", "advice"),
    [
        ("idle", 0, 0, "the store is not primed yet and nothing is priming it: a server with"),
        ("failed", 40, 150, "the prime failed at 40/150 batches: see `batchstash status --url "),
        ("cancelled", 40, 150, "the prime was cancelled at 40/150 batches: a server with role"),
        ("interrupted", 7, 9, "the priming process died at 7/9 batches: a server with role all"),
    ],
)
def test_a_replica_names_the_servers_that_prime(
    state: str, done: int, total: int, advice: str
) -> None:
    # role serve refuses to prime: the advice never sends the trainer to prime this server
    header = json.dumps({"state": state, "done": done, "total": total, "role": "serve"})
    server = PrimingServer(total=150, header=header)
    client, _ = timed_client(server, retries=5)
    with pytest.raises(NotPrimedError) as info:
        client.batch("train", 100)
    message = info.value.message
    assert advice in message
    assert "role all (`batchstash prime --url <that server>`)" in message
    assert "the prime job (`batchstash serve --role prime`)" in message
    assert f"prime --url {URL}" not in message and "role serve" in message
    assert batch_requests(server) == 1


@pytest.mark.parametrize("role", ["all", 7, None])
def test_another_role_or_a_bad_one_keeps_the_advice_to_prime_the_server(role: object) -> None:
    header = json.dumps({"state": "idle", "done": 0, "total": 0, "role": role})
    server = PrimingServer(total=150, header=header)
    client, _ = timed_client(server, retries=5)
    with pytest.raises(
        NotPrimedError, match=f"nothing is priming this store: run `batchstash prime --url {URL}`"
    ):
        client.batch("train", 100)


def test_no_running_prime_fails_at_once_even_with_the_wait_disabled() -> None:
    server = PrimingServer(state="cancelled", done=3)
    client, clock = timed_client(server, retries=5, wait_for_prime=0)
    with pytest.raises(NotPrimedError, match="the prime was cancelled at 3/150 batches"):
        client.batch("train", 100)
    assert batch_requests(server) == 1


def test_wait_for_prime_0_keeps_the_plain_retries() -> None:
    server = PrimingServer(total=150, step=10)
    client, clock = timed_client(server, retries=3, wait_for_prime=0)
    with pytest.raises(NotPrimedError) as info:
        client.batch("train", 100)
    assert batch_requests(server) == 4 and clock.sleeps == [2.0] * 3
    assert info.value.message == "GET /v1/splits/train/batches/100: batch train/100 is not encoded"


@pytest.mark.parametrize(
    "header",
    [
        False,  # an older server
        "not json",
        '{"state": "running"}',
        '{"state": "running", "done": "many", "total": 3}',
        '{"state": "unknown", "done": 0, "total": 0}',  # the server could not tell
        '{"state": "done", "done": 150, "total": 150}',  # a race with the prime's end
    ],
)
def test_without_a_usable_header_the_plain_retries_apply(header: str | bool) -> None:
    server = PrimingServer(total=150, step=10, header=header)
    client, clock = timed_client(server, retries=2)
    with pytest.raises(NotPrimedError):
        client.batch("train", 100)
    assert batch_requests(server) == 3 and len(clock.sleeps) == 2


def test_negative_wait_for_prime_is_refused() -> None:
    with pytest.raises(ValueError, match="wait_for_prime must not be negative"):
        BatchClient("http://stash.test", wait_for_prime=-1)
    assert BatchClient("http://stash.test").retry.wait_for_prime == 600.0


def test_iter_batches_over_a_store_being_primed() -> None:
    server = PrimingServer(total=30, step=2)
    client, _ = timed_client(server, retries=1)
    it = client.iter_batches("train", epoch=0, rank=0, world_size=1, prefetch=4)
    got = [b.id for b in it]
    plan = EpochPlan.create(FINGERPRINT, "train", range(30), epoch=0)
    assert got == plan.rank_ids(0)
    assert all(json.loads(h)["state"] == "running" for h in server.answered)


@pytest.fixture
def socket_server() -> Iterator[tuple[SocketServer, PrimingServer]]:
    fake = PrimingServer(total=20, step=4)
    fake.retry_after = "0"
    real = SocketServer(fake)
    yield real, fake
    real.kill()


def test_the_header_over_a_real_socket(socket_server: tuple[SocketServer, PrimingServer]) -> None:
    real, fake = socket_server
    with BatchClient(real.url, retries=1) as client:
        assert client.batch("train", 17).id == 17
        assert len(fake.answered) == 5  # done 0, 4, 8, 12, 16: five 503s, no retry counted
        fake.state, fake.total, fake.done = "idle", 0, 0  # the store was cleared since
        with pytest.raises(NotPrimedError, match="nothing is priming this store"):
            client.batch("train", 19)
