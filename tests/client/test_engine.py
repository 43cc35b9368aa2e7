"""The request engine on an injected clock: the budget, outages, methods, failover order."""

from __future__ import annotations

import logging
import socket
import threading

import httpx
import pytest

import batchstash.client as bc
from batchstash.client import BatchClient, RetryPolicy

from .fakeserver import URL, Cluster, FakeClock, FakeServer, error, make_client, make_cluster

A, B, C = "http://a.test", "http://b.test", "http://c.test"
HTTP_LOGGER = "batchstash.client.http"


def records(caplog: pytest.LogCaptureFixture, level: int, says: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == HTTP_LOGGER and r.levelno == level and says in r.getMessage()
    ]


def clock_of(client: BatchClient) -> FakeClock:
    clock: FakeClock = client.clock  # type: ignore[attr-defined]
    return clock


class BrokenReads:
    """A fake server whose answers to ``method`` break off after the request arrived."""

    def __init__(self, fake: FakeServer, method: str = "POST") -> None:
        self.fake, self.method = fake, method

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == self.method:
            self.fake.requests.append(request)
            raise httpx.ReadError("connection reset by peer", request=request)
        return self.fake(request)


# -- the budget and the outage lines -----------------------------------------------------------


def test_a_server_down_past_the_budget_raises_naming_url_time_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="batchstash.client")
    server = FakeServer()
    client = make_client(server, retry=RetryPolicy(budget=60.0))
    clock = clock_of(client)
    server.down = True
    with pytest.raises(bc.TransportError) as info:
        client.splits()
    message = info.value.message
    assert message.startswith(f"GET {URL}/v1/splits: ConnectError: connection refused (after ")
    assert "attempts in 60.0 s)" in message
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert sum(clock.sleeps) == pytest.approx(60.0) and clock.now == pytest.approx(1060.0)
    assert max(clock.sleeps) == 5.0  # backoff capped at max_delay: retried often enough
    warned = records(caplog, logging.WARNING, "unreachable")
    assert warned == [
        f"server {URL} unreachable (ConnectError: connection refused); retrying for up to 60 s"
    ]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == [
        r for r in caplog.records if r.getMessage() in warned
    ]


def test_an_outage_is_ridden_out_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchstash.client")
    server = FakeServer({"train": range(8)})
    client = make_client(server)  # the default policy
    clock = clock_of(client)
    assert client.batch("train", 0).id == 0
    server.down = True
    back_at = clock.now + 60.0
    clock.on_sleep = lambda _: setattr(server, "down", clock.now < back_at)
    assert [client.batch("train", i).id for i in range(1, 8)] == list(range(1, 8))
    assert back_at <= clock.now <= back_at + 5.0  # back within one backoff of the restart
    assert len(records(caplog, logging.WARNING, "unreachable")) == 1
    ended = records(caplog, logging.INFO, "reachable again")
    assert len(ended) == 1 and ended[0].startswith(f"{URL} reachable again after 6")


def test_concurrent_requests_say_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchstash.client")
    server = FakeServer({"train": range(8)})
    client = make_client(server)
    clock = clock_of(client)
    server.down = True
    back_at = clock.now + 30.0
    clock.on_sleep = lambda _: setattr(server, "down", clock.now < back_at)
    got: list[int] = []
    failures: list[BaseException] = []

    def fetch(batch_id: int) -> None:
        try:
            got.append(client.batch("train", batch_id).id)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and sorted(got) == list(range(6))
    assert len(records(caplog, logging.WARNING, "unreachable")) == 1
    assert len(records(caplog, logging.INFO, "reachable again")) == 1


def test_every_url_unreachable_is_one_line_naming_them_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="batchstash.client")
    client, servers = make_cluster(2, retry=RetryPolicy(budget=20.0))
    for server in servers:
        server.down = True
    with pytest.raises(bc.TransportError, match=r"failed on every URL \(after \d+ attempts in 20"):
        client.splits()
    warned = records(caplog, logging.WARNING, "unreachable")
    assert len(warned) == 1 and warned[0].startswith(f"servers {A}, {B} unreachable ({A}: Conn")
    assert warned[0].endswith("retrying for up to 20 s")
    # each URL said down once per outage, however often its cooldown ends and it fails again
    down = [r for r in caplog.records if "is down" in r.getMessage()]
    assert [r.levelno for r in down].count(logging.WARNING) == 2


# -- methods -----------------------------------------------------------------------------------


def test_a_post_that_may_have_arrived_is_not_retried() -> None:
    server = FakeServer()
    client = BatchClient(
        URL, transport=httpx.MockTransport(BrokenReads(server)), retry=FakeClock().policy()
    )
    with pytest.raises(bc.TransportError, match="ReadError: connection reset by peer"):
        client.prime()
    assert [r.method for r in server.requests] == ["POST"]
    get = BatchClient(
        URL,
        transport=httpx.MockTransport(BrokenReads(server, "GET")),
        retry=FakeClock().policy(RetryPolicy(attempts=3)),
    )
    with pytest.raises(bc.TransportError, match="after 3 attempts"):
        get.splits()  # a GET is retried: getting it twice does no harm


def test_a_post_that_never_left_is_retried() -> None:
    server = FakeServer()
    client = make_client(server)
    server.connect_errors = 2
    assert client.prime()["state"] == "running"
    assert [r.method for r in server.requests] == ["POST"] * 3
    assert clock_of(client).sleeps == [0.2, 0.4]


def test_a_post_is_not_failed_over_once_it_may_have_arrived() -> None:
    a, b = FakeServer(), FakeServer()
    transport = httpx.MockTransport(Cluster({A: BrokenReads(a), B: b}))  # type: ignore[dict-item]
    client = BatchClient([A, B], transport=transport, retry=FakeClock().policy())
    with pytest.raises(bc.TransportError, match=f"failed on the URLs tried .*{A}: ReadError"):
        client.prime()
    assert len(a.requests) == 1 and b.requests == []
    client.splits()  # a GET after a POST: b answers (a cools down)
    assert len(b.requests) == 1


def test_a_server_error_to_a_post_is_raised_not_repeated() -> None:
    server = FakeServer()
    server.answer = error(502, "bad_gateway", "upstream")
    client = make_client(server)
    with pytest.raises(bc.BatchstashError):
        client.prime()
    assert len(server.requests) == 1
    server.answer = error(503, "store_busy", "no descriptor", **{"Retry-After": "1"})
    client = make_client(server, retries=2)
    with pytest.raises(bc.StoreBusyError):
        client.prime()  # a refusal: the server did not act, so it is asked again
    assert len(server.requests) == 4 and clock_of(client).sleeps == [1.0, 1.0]


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "slept"), [(None, 30.0), (2.0, 2.0)])
def test_retry_after_is_capped_by_the_policy(cap: float | None, slept: float) -> None:
    server = FakeServer({"train": range(2)})
    server.not_primed[("train", 0)] = 1
    server.retry_after = "120"
    policy = RetryPolicy() if cap is None else RetryPolicy(retry_after_cap=cap)
    client = make_client(server, retry=policy)
    assert client.batch("train", 0).id == 0
    assert clock_of(client).sleeps == [slept]


# -- failover order ----------------------------------------------------------------------------


def test_failover_order_and_cooldowns() -> None:
    servers = [FakeServer() for _ in range(3)]
    order: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}"
        order.append(url)
        return servers[(A, B, C).index(url)](request)

    client = BatchClient(
        [A, B, C], transport=httpx.MockTransport(route), retry=FakeClock().policy()
    )
    servers[0].down = servers[1].down = True
    client.splits()
    assert order == [A, B, C]  # round robin starts at a; a and b refuse, c answers at once
    order.clear()
    client.splits()
    client.splits()
    assert order == [C, C]  # a and b cool down
    order.clear()
    engine = client.engine
    engine.request("GET", "/v1/splits", first=engine.endpoints.items[1]).read()
    assert order == [C]  # ``first`` goes first only when it is not cooling down
    servers[0].down = servers[1].down = False
    servers[2].down = True
    order.clear()
    client.splits()  # c refuses too: every URL cools down, the soonest back is tried first
    assert order == [C, A]
    assert client.down_urls() == [B, C]  # b has not been asked since: not known to be back


# -- the transport -----------------------------------------------------------------------------


def test_a_dns_failure_is_a_connection_never_made(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def unknown_host(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        calls.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unknown_host)
    clock = FakeClock()
    client = BatchClient("http://stash:8000", retry=clock.policy(RetryPolicy(budget=10.0)))
    with pytest.raises(bc.TransportError) as info:
        client.prime()  # a POST: retried, since it never left
    assert "ConnectError: [Errno -2] Name or service not known" in info.value.message
    assert "in 10.0 s" in info.value.message
    assert len(calls) > 3 and calls[0] == ("stash", 8000)
