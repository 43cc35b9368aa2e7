"""The client sends batch requests to the data listener a server advertises, else its API port."""

from __future__ import annotations

import logging

import httpx
import pytest

from batchstash.client import BatchClient, NotFoundError, RetryPolicy
from batchstash.client.endpoints import DATA_COOLDOWN

from .fakeserver import URL, FakeClock, FakeServer

DATA_PORT = 9001
DATA_URL = f"{URL}:{DATA_PORT}"


class Advertising:
    """A fake server whose API names a data listener on :data:`DATA_PORT`.

    Args:
        fake: answers both ports.
        mode: what the data port does: ``ok``, ``refused`` (nothing listens) or ``foreign``
            (another program answers).
    """

    def __init__(self, fake: FakeServer, mode: str = "ok") -> None:
        self.fake, self.mode = fake, mode
        self.api: list[httpx.Request] = []
        self.data: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.port == DATA_PORT:
            self.data.append(request)
            if self.mode == "refused":
                raise httpx.ConnectError("connection refused", request=request)
            if self.mode == "foreign":
                return httpx.Response(404, text="<html>not here</html>")
            return self.fake(request)
        self.api.append(request)
        response = self.fake(request)
        response.headers["X-Batchstash-Data-Port"] = str(DATA_PORT)
        return response


def make(mode: str = "ok", url: str = URL, **kwargs: object) -> tuple[BatchClient, Advertising]:
    server = Advertising(FakeServer(**kwargs), mode)  # type: ignore[arg-type]
    clock = FakeClock()
    policy = clock.policy(RetryPolicy(attempts=1))
    client = BatchClient(url, transport=httpx.MockTransport(server), retry=policy)
    client.clock = clock  # type: ignore[attr-defined]
    return client, server


def paths(requests: list[httpx.Request]) -> list[str]:
    return [request.url.path for request in requests]


def test_batches_go_to_the_advertised_listener() -> None:
    client, server = make()
    assert client.endpoints()[0].data_url is None  # nothing learned yet
    batches = list(client.iter_batches("train", prefetch=0, batches_per_request=4))
    assert sorted(b.id for b in batches) == list(range(8))
    assert paths(server.api) == ["/v1/splits/train/batches", "/v1/metadata"]
    assert paths(server.data) == ["/v1/splits/train/payloads"] * 2
    assert client.endpoints()[0].data_url == DATA_URL
    client.batch("train", 3)
    assert server.data[-1].url.path == "/v1/splits/train/batches/3"


def test_the_token_goes_to_the_listener_too() -> None:
    server = Advertising(FakeServer(token="s3cret", read_token=True))
    client = BatchClient(URL, token="s3cret", transport=httpx.MockTransport(server), retries=0)
    client.batch_ids("train")
    client.batch("train", 1)
    assert server.data[0].headers["Authorization"] == "Bearer s3cret"


def test_a_listener_that_refuses_falls_back_to_the_api_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = make("refused")
    client.batch_ids("train")
    with caplog.at_level(logging.WARNING, "batchstash.client"):
        batch = client.batch("train", 2)
    assert batch.id == 2
    assert paths(server.data) == ["/v1/splits/train/batches/2"]
    assert "/v1/splits/train/batches/2" in paths(server.api)
    assert "data listener failed (ConnectError" in caplog.text
    state = client.endpoints()[0]
    assert state.data_url is None and not state.down  # the server itself is fine
    client.batch("train", 3)  # cooling down: straight to the API
    assert len(server.data) == 1
    clock: FakeClock = client.clock  # type: ignore[attr-defined]
    clock.now += DATA_COOLDOWN + 1
    assert client.endpoints()[0].data_url == DATA_URL  # tried again after the cooldown


def test_another_program_on_the_port_is_not_mistaken_for_batchstash() -> None:
    client, server = make("foreign")
    client.batch_ids("train")
    assert client.batch("train", 1).id == 1
    assert len(server.data) == 1 and "/v1/splits/train/batches/1" in paths(server.api)
    assert client.endpoints()[0].data_url is None


def test_the_listeners_own_errors_are_raised_not_retried_elsewhere() -> None:
    client, server = make()
    client.batch_ids("train")
    with pytest.raises(NotFoundError, match="unknown batch"):
        client.batch("train", 99)
    assert paths(server.data) == ["/v1/splits/train/batches/99"]
    assert paths(server.api) == ["/v1/splits/train/batches"]


def test_an_https_client_keeps_batches_on_the_encrypted_port() -> None:
    client, server = make(url="https://stash.test")
    client.batch_ids("train")
    client.batch("train", 1)
    assert server.data == [] and client.endpoints()[0].data_url is None


def test_close_closes_the_listeners_pool() -> None:
    client, _ = make()
    client.batch_ids("train")
    data_http = client.engine.endpoints.items[0].data_http
    assert data_http is not None
    client.close()
    assert data_http.is_closed and client.closed


def test_a_client_may_keep_to_the_urls_it_was_given() -> None:
    server = Advertising(FakeServer())
    client = BatchClient(URL, transport=httpx.MockTransport(server), data_listener=False)
    list(client.iter_batches("train", prefetch=0))
    assert server.data == [] and client.endpoints()[0].data_url is None
