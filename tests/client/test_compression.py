"""zstd bodies on the client: Accept-Encoding, decoding into pooled buffers, bad bodies."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import torch
import zstandard

from batchstash.client import BatchClient, ChecksumError, PayloadError, RetryPolicy, encoding
from batchstash.client.frames import split_frames
from batchstash.client.headers import DECODED_LENGTH_HEADER

from .fakeserver import URL, FakeServer, SocketServer, make_tensors


class Zstd:
    """A fake server that answers batch requests zstd-encoded to a client that accepts it.

    Args:
        fake: answers every request.
        damage: flip a byte this far into each compressed body (``None``: none).
        announce: send ``X-Batchstash-Decoded-Length``.
    """

    def __init__(self, fake: FakeServer, damage: int | None = None, announce: bool = True) -> None:
        self.fake, self.damage, self.announce = fake, damage, announce
        self.encoded = 0
        self.accepts: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self.fake(request)
        accept = request.headers.get("accept-encoding")
        batch = "/payloads" in request.url.path or "/batches/" in request.url.path
        if batch:
            self.accepts.append(accept)
        if not batch or response.status_code != 200 or "zstd" not in (accept or ""):
            return response
        body = response.read()
        packed = bytearray(zstandard.ZstdCompressor(level=3).compress(body))
        if self.damage is not None:
            packed[self.damage] ^= 0x10
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        headers["Content-Encoding"] = "zstd"
        if self.announce:
            headers[DECODED_LENGTH_HEADER] = str(len(body))
        self.encoded += 1
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(bytes(packed)))


@pytest.fixture
def no_zstandard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A client without the zstandard package (as if the zstd extra were not installed)."""
    monkeypatch.setattr(encoding, "_module", None)
    monkeypatch.setattr(encoding, "_missing", True)
    yield


def expected(split: str, batch_id: int, rows: int = 4) -> dict[str, torch.Tensor]:
    return make_tensors(split, batch_id, rows)


@pytest.fixture(params=["buffer", "httpx"])
def kind(request: pytest.FixtureRequest) -> str:
    """The client's own transport (a real socket) or a caller's httpx transport."""
    return str(request.param)


def client_of(server: Zstd, kind: str) -> tuple[BatchClient, SocketServer | None]:
    policy = RetryPolicy(attempts=1)
    if kind == "httpx":
        return BatchClient(URL, transport=httpx.MockTransport(server), retry=policy), None
    sock = SocketServer(server)  # type: ignore[arg-type]
    return BatchClient(sock.url, retry=policy, data_listener=False), sock


def test_the_client_accepts_zstd_and_reads_what_it_encodes(kind: str) -> None:
    server = Zstd(FakeServer({"train": range(8)}, rows=512))
    client, sock = client_of(server, kind)
    try:
        batch = client.batch("train", 3)
        batches = client.batches("train", [5, 0, 7])
        everything = list(client.iter_batches("train", prefetch=4, shuffle=False))
    finally:
        client.close()
        if sock is not None:
            sock.kill()
    assert set(server.accepts) == {"zstd"}
    assert server.encoded >= 3
    for got, batch_id in [(batch, 3), *zip(batches, [5, 0, 7], strict=True)]:
        for name, tensor in expected("train", batch_id, 512).items():
            assert torch.equal(got[name], tensor)
    assert [b.id for b in everything] == list(range(8))


def test_a_client_without_zstandard_asks_for_identity(kind: str, no_zstandard: None) -> None:
    server = Zstd(FakeServer({"train": range(4)}))
    client, sock = client_of(server, kind)
    try:
        assert [b.id for b in client.batches("train", [0, 1])] == [0, 1]
    finally:
        client.close()
        if sock is not None:
            sock.kill()
    assert server.accepts == ["identity"] and server.encoded == 0


def test_the_decoded_body_lands_in_a_pooled_buffer() -> None:
    server = Zstd(FakeServer({"train": range(6)}, rows=32768))  # bodies over the pool's minimum
    sock = SocketServer(server)  # type: ignore[arg-type]
    client = BatchClient(sock.url, retry=RetryPolicy(attempts=1), data_listener=False)
    try:
        for batch_id in range(6):
            batch = client.batch("train", batch_id)
            assert torch.equal(batch["x"], expected("train", batch_id, 32768)["x"])
            del batch
        pool = client.buffers
        assert pool is not None and pool.reused >= 4  # received and decoded buffers come back
    finally:
        client.close()
        sock.kill()


def test_a_body_without_its_decoded_length_is_read_from_the_frame(kind: str) -> None:
    server = Zstd(FakeServer({"train": range(4)}), announce=False)
    client, sock = client_of(server, kind)
    try:
        assert client.batch("train", 2).id == 2
    finally:
        client.close()
        if sock is not None:
            sock.kill()


def test_a_damaged_zstd_body_is_an_error_never_a_batch(kind: str) -> None:
    server = Zstd(FakeServer({"train": range(4)}, rows=64), damage=40)
    client, sock = client_of(server, kind)
    try:
        with pytest.raises((PayloadError, ChecksumError)):
            client.batch("train", 1)
        with pytest.raises((PayloadError, ChecksumError)):
            client.batches("train", [0, 1])
    finally:
        client.close()
        if sock is not None:
            sock.kill()


def test_decompress_into_fills_exactly() -> None:
    data = os.urandom(1000) + bytes(5000)
    packed = zstandard.ZstdCompressor().compress(data)
    out = bytearray(len(data))
    encoding.decompress_into(packed + packed[:0], out)
    assert bytes(out) == data
    two = bytearray(2 * len(data))
    encoding.decompress_into(packed + packed, two)  # frames one after the other
    assert bytes(two) == data + data
    with pytest.raises(PayloadError, match="not 6001"):
        encoding.decompress_into(packed, bytearray(len(data) + 1))
    with pytest.raises(PayloadError, match="more"):
        encoding.decompress_into(packed, bytearray(len(data) - 1))


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_only_ever_raise_payload_error(seed: int) -> None:
    rng = torch.Generator().manual_seed(seed)
    size = int(torch.randint(0, 300, (1,), generator=rng))
    junk = bytes(torch.randint(0, 256, (size,), generator=rng, dtype=torch.uint8).tolist())
    for body in (junk, encoding.ZSTD_MAGIC + junk):
        with pytest.raises(PayloadError):
            encoding.decompress_into(body, bytearray(64))


def test_split_frames_of_a_decoded_frames_body() -> None:
    fake = FakeServer({"train": range(3)})
    body = b"".join(
        len(p).to_bytes(8, "little") + p for p in (fake.payload("train", i) for i in range(3))
    )
    compressor = zstandard.ZstdCompressor()
    packed = b"".join(compressor.compress(body[i : i + 100]) for i in range(0, len(body), 100))
    out = bytearray(len(body))
    encoding.decompress_into(packed, out)
    assert len(split_frames(out)) == 3


def test_accept_encoding_follows_zstandard(no_zstandard: None) -> None:
    assert encoding.accept_encoding() == "identity"
    assert not encoding.zstd_available()
    with pytest.raises(PayloadError, match="zstandard"):
        encoding.decompress_into(b"\x28\xb5\x2f\xfd", bytearray(1))
