"""The data listener's HTTP/1.1 framing: requests in order, limits as 4xx, heads as written."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchstash.service.api.http1 import ProtocolError, RequestParser, response_head

TARGET = b"/v1/splits/train/payloads?ids=1,2"
GET = b"GET " + TARGET + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"


def _all(parser: RequestParser) -> list:
    out = []
    while (request := parser.next()) is not None:
        out.append(request)
    return out


def test_a_request_arrives_in_pieces_and_is_read_whole() -> None:
    parser = RequestParser(1024, 1024)
    for i in range(0, len(GET), 7):
        parser.feed(GET[i : i + 7])
    [request] = _all(parser)
    assert request.method == "GET" and request.keep_alive
    assert request.target == TARGET
    assert request.headers == [(b"Host", b"x"), (b"Authorization", b"Bearer t")]


def test_pipelined_requests_come_out_in_order() -> None:
    parser = RequestParser(1024, 1024)
    last = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    parser.feed(GET * 3 + last)
    requests = _all(parser)
    assert [r.target for r in requests] == [TARGET] * 3 + [b"/healthz"]
    assert [r.keep_alive for r in requests] == [True, True, True, False]


def test_http_1_0_closes_unless_asked_to_keep_alive() -> None:
    parser = RequestParser(1024, 1024)
    parser.feed(b"GET /a HTTP/1.0\r\n\r\n")
    assert _all(parser)[0].keep_alive is False
    parser = RequestParser(1024, 1024)
    parser.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert _all(parser)[0].keep_alive is True


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000, 413),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
)
def test_broken_or_oversized_requests_are_4xx(data: bytes, status: int) -> None:
    parser = RequestParser(2048, 1024)
    with pytest.raises(ProtocolError) as caught:
        parser.feed(data)
    assert caught.value.status == status


def test_a_head_that_never_ends_is_cut_off() -> None:
    parser = RequestParser(2048, 1024)
    parser.feed(b"GET / HTTP/1.1\r\nX-Slow: ")
    with pytest.raises(ProtocolError) as caught:
        for _ in range(100):
            parser.feed(b"y" * 100)  # no line end: the parser holds it all
    assert caught.value.status == 431


def test_a_huge_pipelined_read_of_small_requests_is_not_a_long_head() -> None:
    parser = RequestParser(2048, 1024)
    parser.feed(GET * 200)  # 17 KB in one read, every request well under the limit
    assert len(_all(parser)) == 200


def test_requests_before_an_error_are_answered_first() -> None:
    parser = RequestParser(1024, 1024)
    parser.feed(GET + b"BROKEN\r\n\r\n")
    assert parser.next() is not None
    with pytest.raises(ProtocolError):
        parser.next()
    with pytest.raises(ProtocolError):
        parser.feed(GET)  # nothing after an error is parsed


def test_an_upgrade_is_the_last_request() -> None:
    parser = RequestParser(1024, 1024)
    parser.feed(b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + GET)
    assert parser.upgraded
    assert [r.target for r in _all(parser)] == [b"/a"]


def test_response_heads() -> None:
    head = response_head(200, [("Content-Type", "application/x-frames")], 12)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-frames\r\nContent-Length: 12\r\n\r\n"
    )
    closing = response_head(503, [("Retry-After", "1")], 0, close=True)
    assert closing.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert closing.endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    with pytest.raises(ValueError, match="line break"):
        response_head(200, [("X-Evil", "a\r\nSet-Cookie: b")], 0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from([GET, b"\r\n", b"GET ", b" HTTP/1.1\r\n", b"Content-Length: 3\r\n"]),
        ),
        max_size=12,
    )
)
def test_any_bytes_give_requests_or_a_protocol_error(pieces: list[bytes]) -> None:
    parser = RequestParser(256, 64)
    try:
        for piece in pieces:
            parser.feed(piece)
            while (request := parser.next()) is not None:
                assert isinstance(request.target, bytes) and request.method
    except ProtocolError as exc:
        assert 400 <= exc.status < 500
