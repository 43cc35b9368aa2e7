"""A real server's data listener: the client finds it, reads through it, and survives losing it."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from batchstash.client import BatchClient

from .conftest import TOKEN, Server


def _prime(server: Server) -> None:
    with BatchClient(server.url, token=TOKEN) as client:
        client.prime()
        client.wait_for_prime(timeout=120)


def test_the_client_reads_through_the_listener_byte_for_byte(
    serve: Callable[..., Server],
) -> None:
    server = serve("--workers", "1", env={"BATCHSTASH_DATA_PORT": "0"})
    _prime(server)
    port = int(httpx.get(f"{server.url}/healthz").headers["x-batchstash-data-port"])
    assert port != int(server.url.rsplit(":", 1)[1])
    with BatchClient(server.url) as client, BatchClient(server.url, data_listener=False) as api:
        pipelined = client.iter_batches("train", shuffle=False, prefetch=3)
        fast = list(pipelined)
        slow = list(api.iter_batches("train", shuffle=False, prefetch=3))
        # one group a request, all six pipelined on the listener, none by the request path
        assert pipelined.reader is not None
        assert (pipelined.reader.pipelined, pipelined.reader.fallbacks) == (6, 0)
        assert client.endpoints()[0].data_url == f"http://127.0.0.1:{port}"
        assert api.endpoints()[0].data_url is None
    assert [b.id for b in fast] == [b.id for b in slow] == list(range(6))
    for mine, theirs in zip(fast, slow, strict=True):
        assert mine.data_point_ids == theirs.data_point_ids
        for name, tensor in mine.attributes.items():
            assert tensor.equal(theirs.attributes[name])
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="/v1/splits/{split}/payloads",status="200"' in metrics
    assert f"data listener on 127.0.0.1:{port}" in server.log.read_text()


def test_a_taken_default_port_leaves_a_working_server(serve: Callable[..., Server]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = serve("--workers", "1", port=port - 1)
        _prime(server)
        assert "x-batchstash-data-port" not in httpx.get(f"{server.url}/healthz").headers
        with BatchClient(server.url) as client:
            assert len(list(client.iter_batches("train"))) == 6
    assert "no data listener" in server.log.read_text()
