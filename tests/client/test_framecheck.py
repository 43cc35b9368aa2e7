"""Frames are verified as they land, each once; a bad frame still fails with its own error."""

from __future__ import annotations

import threading

import numpy
import pytest

from batchstash.client import BatchClient, ChecksumError, wire
from batchstash.client.framecheck import FrameChecker
from batchstash.client.frames import frame_prefix

from .fakeserver import FakeServer, SocketServer


def frames_body(server: FakeServer, ids: list[int]) -> numpy.ndarray:
    raw = b"".join(frame_prefix(len(p)) + p for p in (server.payload("train", i) for i in ids))
    return numpy.frombuffer(bytearray(raw), dtype=numpy.uint8)


def test_frames_are_verified_as_soon_as_they_are_complete() -> None:
    server = FakeServer(rows=64)
    body = frames_body(server, [0, 1, 2])
    size = 8 + len(server.payload("train", 0))
    view, check = memoryview(body), FrameChecker()
    check(view, size - 1)
    assert check.verified == 0  # the first frame is one byte short
    check(view, size + 10)
    assert check.verified == 1
    check(view, body.nbytes)
    assert check.verified == 3 and check.covers(body) == 3
    assert check.covers(numpy.empty(4, dtype=numpy.uint8)) == 0  # another body
    check(memoryview(frames_body(server, [3])), 5)  # a retry's body: starts over
    assert check.verified == 0


def test_a_corrupt_frame_stops_the_check_there() -> None:
    server = FakeServer(rows=64)
    body = frames_body(server, [0, 1, 2])
    body[8 + len(server.payload("train", 0)) + 8 + 200] ^= 0xFF  # inside frame 1
    check = FrameChecker()
    check(memoryview(body), body.nbytes)
    assert check.verified == 1


@pytest.fixture
def served() -> SocketServer:
    return SocketServer(FakeServer({"train": range(6)}, rows=20000))


def test_each_frame_is_hashed_once_over_a_real_socket(
    served: SocketServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []
    real = wire.tensor_checksum

    def counting(*args: object) -> str:
        if threading.current_thread() is threading.main_thread():  # not the server's encode
            hashed.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "tensor_checksum", counting)
    try:
        with BatchClient(served.url, data_listener=False) as client:
            batches = client.batches("train", [0, 1, 2, 3])
    finally:
        served.kill()
    assert [b.id for b in batches] == [0, 1, 2, 3]
    assert len(hashed) == 4 * 2  # two tensors a batch, each hashed once


def test_a_corrupt_batch_still_raises_over_a_real_socket(served: SocketServer) -> None:
    served.fake.corrupt.add(("train", 2))
    try:
        with BatchClient(served.url, data_listener=False, retries=0) as client:
            with pytest.raises(ChecksumError, match="fails its checksum"):
                client.batches("train", [0, 1, 2, 3])
    finally:
        served.kill()
