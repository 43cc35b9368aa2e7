"""iter_batches pipelines its requests on one data-listener connection, and falls back safely."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

import batchstash.client.pipeline as pipeline
from batchstash.client import BatchClient, BatchIterator, ChecksumError, NotFoundError
from batchstash.client.socketio import _ProtocolError, read_body, read_head

from .fakeserver import FakeServer, SocketServer, error, make_client, make_tensors

Answer = Callable[[httpx.Request], httpx.Response | None]


class Listener:
    """A fake data listener: ``FakeServer`` answers, unless ``script[n]`` answers request ``n``."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.requests: list[httpx.Request] = []
        self.script: dict[int, Answer] = {}
        self.after: Callable[[httpx.Response], None] | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            n = len(self.requests)
            self.requests.append(request)
        answer = self.script.get(n)
        response = (answer(request) if answer else None) or self.fake(request)
        if self.after is not None:
            self.after(response)
        return response

    def ids(self) -> list[int]:
        """The batch ids asked for, request by request, in order."""
        return [int(i) for r in self.requests for i in r.url.params["ids"].split(",")]


class Advertise:
    """The API: ``fake`` answers, naming the data listener's port in every response."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.port = 0
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.fake(request)
        response.headers["X-Batchstash-Data-Port"] = str(self.port)
        return response


class Stack:
    """An API socket server that advertises a data-listener socket server."""

    def __init__(self, batches: int = 8, data: FakeServer | None = None, **kwargs: object) -> None:
        self.api_fake = Advertise(FakeServer({"train": range(batches)}, **kwargs))  # type: ignore[arg-type]
        self.listener = Listener(data or FakeServer({"train": range(batches)}, **kwargs))  # type: ignore[arg-type]
        self.data = SocketServer(self.listener)  # type: ignore[arg-type]
        self.api_fake.port = int(self.data.url.rsplit(":", 1)[1])
        self.api = SocketServer(self.api_fake)  # type: ignore[arg-type]

    def client(self, **kwargs: object) -> BatchClient:
        return BatchClient(self.api.url, retries=0, timeout=10, **kwargs)  # type: ignore[arg-type]

    def api_batch_requests(self) -> list[str]:
        return [
            r.url.path
            for r in self.api_fake.requests
            if "/batches/" in r.url.path or r.url.path.endswith("/payloads")
        ]

    def close(self) -> None:
        self.api.kill()
        self.data.kill()


def _check(batches: list, ids: list[int]) -> None:
    assert [b.id for b in batches] == ids
    for batch in batches:
        expected = make_tensors("train", batch.id)
        assert batch.attributes["x"].equal(expected["x"])
        assert batch.attributes["label"].equal(expected["label"])


def test_an_epoch_is_pipelined_on_one_connection(stack: Callable[..., Stack]) -> None:
    s = stack(8)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        batches = list(it)
    assert it.batches_per_request == 1  # prefetch // 6 when pipelined
    _check(batches, list(range(8)))
    assert it.reader is not None and (it.reader.pipelined, it.reader.fallbacks) == (8, 0)
    assert len(s.data._connections) == 1  # every request on one connection
    assert s.listener.ids() == list(range(8))
    assert s.api_batch_requests() == []  # nothing through the API port


def _round_trip(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every data connection is timed as taking ``seconds`` to open (one round trip)."""
    connected = pipeline.InFlight.connected
    monkeypatch.setattr(pipeline.InFlight, "connected", lambda self, _: connected(self, seconds))


def test_at_most_prefetch_batches_are_requested_ahead(
    stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    _round_trip(monkeypatch, 1e-6)  # a link whose product holds less than a batch
    s = stack(40)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        assert next(it).id == 0
        time.sleep(0.3)  # the reader has had time to run ahead as far as it may
        assert len(s.listener.requests) <= 6
        _check([next(it) for _ in range(3)], [1, 2, 3])
        time.sleep(0.3)
        assert len(s.listener.requests) <= 4 + 5  # yielded, plus the window
        rest = list(it)
    assert [b.id for b in rest] == list(range(4, 40))
    assert len(s.listener.requests) == 40


def test_a_long_round_trip_keeps_more_requests_in_flight_than_prefetch(
    stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    _round_trip(monkeypatch, 0.05)  # 50 ms: its product holds many of these small batches
    s = stack(60)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        first = [next(it) for _ in range(10)]
        time.sleep(0.3)  # the reader widens its window and runs ahead
        ahead = len(s.listener.requests) - 10
        rest = list(it)
        assert it.reader is not None and it.reader.window > 5  # prefetch 6: 5 groups in flight
        assert ahead > 5 and ahead <= it.reader.window + 1
        _check(first + rest, list(range(60)))  # every batch once, in order
        # the next epoch's reader sizes its window from the link measured before, once its
        # consumer waits on an answer after the first: no ramp again
        again = client.iter_batches("train", shuffle=False, prefetch=6, epoch=1)
        early = [next(again) for _ in range(10)]  # a consumer that waits on the link
        assert again.reader is not None and again.reader.window > 5
        again.close()
        _check(early, list(range(10)))


def test_a_trainer_slower_than_a_long_link_keeps_its_floor(
    stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    _round_trip(monkeypatch, 0.05)  # the product holds many batches, but the trainer is slow
    s = stack(30)
    with s.client() as client:
        fast = client.iter_batches("train", shuffle=False, prefetch=12)
        assert len(list(fast)) == 30 and fast.reader is not None and fast.reader.window > 11
        it = client.iter_batches("train", shuffle=False, prefetch=4, epoch=1)
        got = []
        for batch in it:  # each step outlasts the reader's next answer (tens of ms here)
            got.append(batch)
            time.sleep(0.15)
            if len(got) == 10:
                break
        # 3 groups in flight, the floor of prefetch 4: neither the learned link nor the
        # earlier reader's wider floor moved it, since the trainer never waited on the link
        assert it.reader is not None and it.reader.window == 3
        it.close()
    assert [b.id for b in got] == list(range(10))


def test_an_error_answer_goes_to_the_request_path_then_pipelining_resumes(
    stack: Callable[..., Stack],
) -> None:
    s = stack(10)
    s.listener.script[3] = lambda r: error(503, "overloaded", "try again", **{"Retry-After": "0"})
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        batches = list(it)
    _check(batches, list(range(10)))
    assert it.reader is not None and (it.reader.pipelined, it.reader.fallbacks) == (9, 1)
    # group 3 again by the request path (httpx, same listener), then the rest pipelined anew
    assert s.listener.ids().count(3) == 2
    assert len(s.data._connections) >= 3


def test_a_missing_batch_is_raised_where_it_is(stack: Callable[..., Stack]) -> None:
    s = stack(8, data=FakeServer({"train": [0, 1, 2, 3, 4, 6, 7]}))
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        got = []
        with pytest.raises(NotFoundError, match="unknown batch train/5"):
            for batch in it:
                got.append(batch.id)
        it.close()
        assert got == [0, 1, 2, 3, 4]
        assert it.reader is not None and it.reader.thread is not None
        it.reader.thread.join(timeout=5)
        assert not it.reader.thread.is_alive()


def test_a_corrupt_batch_raises_checksum_error_in_order(stack: Callable[..., Stack]) -> None:
    data = FakeServer({"train": range(8)})
    data.corrupt = {("train", 3)}
    s = stack(8, data=data)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        got = []
        with pytest.raises(ChecksumError):
            for batch in it:
                got.append(batch.id)
        assert got == [0, 1, 2]


def test_losing_the_listener_mid_epoch_reads_the_rest_from_the_api(
    stack: Callable[..., Stack],
) -> None:
    s = stack(60)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        first = [next(it) for _ in range(2)]
        s.data.kill()
        rest = list(it)
        assert client.endpoints()[0].data_url is None  # skipped while it cools down
    _check(first + rest, list(range(60)))
    assert it.reader is not None and it.reader.fallbacks >= 1
    assert s.api_batch_requests()  # the rest came from the API port


def test_a_listener_that_closes_after_each_answer_still_gives_every_batch_once(
    stack: Callable[..., Stack],
) -> None:
    s = stack(12)

    def close(response: httpx.Response) -> None:
        response.headers["Connection"] = "close"

    s.listener.after = close
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        _check(list(it), list(range(12)))


def test_another_program_on_the_data_port_is_left_alone(stack: Callable[..., Stack]) -> None:
    s = stack(6)
    s.listener.script = dict.fromkeys(range(100), lambda r: httpx.Response(404, text="<html/>"))
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        _check(list(it), list(range(6)))
        assert client.endpoints()[0].data_url is None
    assert it.reader is not None and it.reader.pipelined == 0
    assert len(s.api_batch_requests()) == 6


def test_the_token_is_sent_on_pipelined_requests(stack: Callable[..., Stack]) -> None:
    s = stack(4, token="s3cret", read_token=True)
    with s.client(token="s3cret") as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        _check(list(it), list(range(4)))
    assert it.reader is not None and it.reader.pipelined == 4
    assert {r.headers["Authorization"] for r in s.listener.requests} == {"Bearer s3cret"}


def test_attributes_are_asked_for_on_pipelined_requests(stack: Callable[..., Stack]) -> None:
    s = stack(4)
    with s.client() as client:
        batches = list(client.iter_batches("train", shuffle=False, prefetch=6, attributes=["x"]))
    assert [sorted(b.attributes) for b in batches] == [["x"]] * 4
    assert {r.url.params["attributes"] for r in s.listener.requests} == {"x"}


def _assert_reader_stops(it: BatchIterator) -> None:
    assert it.reader is not None and it.reader.thread is not None
    it.reader.thread.join(timeout=5)
    assert not it.reader.thread.is_alive()


def test_closing_mid_epoch_stops_the_reader(stack: Callable[..., Stack]) -> None:
    s = stack(60)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        next(it)
        it.close()
        _assert_reader_stops(it)
    assert len(s.listener.requests) <= 6


def test_an_iterator_finalized_in_its_own_reader_thread_stops_cleanly(
    stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loop left by ``break`` drops the iterator; the garbage collector may finalize it in any
    # thread, the reader's own included (seen as "cannot join current thread" from the finalizer)
    s = stack(60)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6)
        taken, errors = threading.Event(), []
        decode = pipeline.decode_frames

        def decode_then_close(*args: object, **kwargs: object) -> object:
            if taken.wait(timeout=5) and it._stream is not None:
                try:
                    it._stream.close()  # runs in the reader thread, as a finalizer there would
                except BaseException as exc:
                    errors.append(exc)
            return decode(*args, **kwargs)  # type: ignore[arg-type]

        first = next(it)
        monkeypatch.setattr(pipeline, "decode_frames", decode_then_close)
        taken.set()
        _assert_reader_stops(it)
        assert errors == []
        assert first.id == 0


def test_pipelined_false_and_own_transports_use_threads(stack: Callable[..., Stack]) -> None:
    s = stack(6)
    with s.client() as client:
        it = client.iter_batches("train", shuffle=False, prefetch=6, pipelined=False)
        _check(list(it), list(range(6)))
        assert it.reader is None and it.batches_per_request == 2  # prefetch // 3
    assert len(s.listener.requests) == 3  # still the listener, by httpx
    mocked = make_client(FakeServer({"train": range(6)}))
    it = mocked.iter_batches("train", shuffle=False, prefetch=6)
    _check(list(it), list(range(6)))
    assert it.reader is None


# -- the response reader on its own ---------------------------------------------------------


def _pair(data: bytes) -> socket.socket:
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    return ours


def test_read_head_and_body_leave_the_next_response_pending() -> None:
    sock = _pair(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloHTTP/1.1 204 No")
    pending = bytearray()
    head = read_head(sock, pending)
    assert (head.status, head.length, head.headers["x-a"], head.closes) == (200, 5, "b", False)
    body = bytearray(5)
    read_body(sock, pending, body)
    assert body == b"hello" and pending.startswith(b"HTTP/1.1 204")


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 OK 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5",  # closed mid-head
    ],
)
def test_a_malformed_head_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(_ProtocolError):
        read_head(_pair(data), bytearray())


def test_a_short_body_is_a_protocol_error() -> None:
    sock = _pair(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    pending = bytearray()
    read_head(sock, pending)
    with pytest.raises(_ProtocolError, match="7 bytes short"):
        read_body(sock, pending, bytearray(10))
