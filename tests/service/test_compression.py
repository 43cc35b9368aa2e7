"""Compressed stores: codecs per group, Content-Encoding negotiation on both ports, bad bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from fastapi.testclient import TestClient

from batchstash.client import InvalidRequestError, wire
from batchstash.client.frames import split_frames
from batchstash.client.headers import DECODED_LENGTH_HEADER
from batchstash.service.api import create_app
from batchstash.service.api.datapath import DataListener
from batchstash.service.api.reads import accepts_zstd
from batchstash.service.config import build_settings
from batchstash.service.store.backend import open_backend
from batchstash.service.store.codec import choose_codecs, raw_frame
from batchstash.service.store.records import StoreInfo, read_record

from .factories import stored_files, stored_object

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT = "batchstash.service.examples:text"
ONE_GROUP = {"groups": [["label", "tokens", "lengths"]]}
ZSTD = {"Accept-Encoding": "zstd"}
PLAIN = {"Accept-Encoding": "identity"}


def make_api(root: Path, **settings: Any) -> TestClient:
    options = {
        "data_dir": root,
        "workers": 0,
        "token": TOKEN,
        "dataset": TEXT,
        "dataset_options": ONE_GROUP,
        **settings,
    }
    api = TestClient(create_app(build_settings(**options)))
    api.__enter__()
    return api


def prime(api: TestClient) -> None:
    assert api.post("/v1/admin/prime", headers=AUTH).status_code == 202
    assert api.app.state.batchstash.job.wait(timeout=60)  # type: ignore[attr-defined]
    assert api.get("/v1/admin/status", headers=AUTH).json()["state"] == "done"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    api = make_api(tmp_path / "data", compression="zstd")
    prime(api)
    yield api
    api.__exit__(None, None, None)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[TestClient]:
    """The same dataset primed uncompressed."""
    api = make_api(tmp_path / "plain")
    prime(api)
    yield api
    api.__exit__(None, None, None)


@pytest.fixture(params=["api", "data"])
def http(request: pytest.FixtureRequest, api: TestClient) -> Iterator[Any]:
    """Both ports of the compressed server: the API (FastAPI) and the data listener."""
    if request.param == "api":
        yield api
        return
    with DataListener(api.app.state.batchstash, "127.0.0.1", 0) as listener:  # type: ignore[attr-defined]
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as client:
            yield client


def unzstd(body: bytes) -> bytes:
    """Every zstd frame of a body, decompressed and joined (as any zstd decoder does)."""
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    return reader.read()


def get_raw(http: Any, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    """Status, headers and the body as sent (no decoding by the test client)."""
    with http.stream("GET", path, headers=headers) as response:
        return response.status_code, response.headers, b"".join(response.iter_raw())


def test_the_codec_is_recorded_and_objects_are_zstd_frames(tmp_path: Path, api: TestClient) -> None:
    info = read_record(open_backend(str(tmp_path / "data")), StoreInfo)
    assert info is not None
    assert info.compression == {
        "setting": "zstd",
        "level": 3,
        "groups": {"label+lengths+tokens": "zstd-3"},
    }
    for name, data in stored_files(tmp_path / "data").items():
        assert data[:4] == b"\x28\xb5\x2f\xfd", name


def test_the_fingerprint_and_tensors_are_those_of_the_uncompressed_store(
    api: TestClient, plain: TestClient
) -> None:
    assert api.get("/v1/metadata").json() == plain.get("/v1/metadata").json()
    for batch_id in range(3):
        path = f"/v1/splits/train/batches/{batch_id}"
        ours, theirs = api.get(path, headers=PLAIN), plain.get(path, headers=PLAIN)
        assert ours.status_code == theirs.status_code == 200
        assert "content-encoding" not in ours.headers
        assert ours.content == theirs.content  # byte for byte: checksums of the raw tensors
        wire.verify(bytearray(ours.content))


def test_a_client_that_accepts_zstd_gets_the_stored_bytes(tmp_path: Path, http: Any) -> None:
    status, headers, body = get_raw(http, "/v1/splits/train/batches/2", ZSTD)
    assert status == 200
    assert headers["content-encoding"] == "zstd"
    assert headers["vary"] == "Accept-Encoding"
    assert body == stored_object(tmp_path / "data", "train", 2, "label+lengths+tokens").read_bytes()
    decoded = unzstd(body)
    assert int(headers[DECODED_LENGTH_HEADER]) == len(decoded) > len(body)
    assert wire.decode(bytearray(decoded)).batch_id == 2


@pytest.mark.parametrize("accept", [None, "identity", "gzip, deflate", "zstd;q=0"])
def test_a_client_that_does_not_gets_the_payload(http: Any, accept: str | None) -> None:
    headers = {} if accept is None else {"Accept-Encoding": accept}
    if accept is None:  # a client sending no Accept-Encoding at all (curl's default)
        headers = {"Accept-Encoding": ""}
    status, out, body = get_raw(http, "/v1/splits/train/batches/2", headers)
    assert status == 200 and "content-encoding" not in out
    assert DECODED_LENGTH_HEADER.lower() not in out
    assert wire.decode(bytearray(body)).batch_id == 2


def test_several_batches_are_a_run_of_zstd_frames(http: Any) -> None:
    path = "/v1/splits/train/payloads?ids=3,0,5"
    status, headers, body = get_raw(http, path, ZSTD)
    assert status == 200 and headers["content-encoding"] == "zstd"
    _, _, plain = get_raw(http, path, PLAIN)
    assert unzstd(body) == plain
    assert int(headers[DECODED_LENGTH_HEADER]) == len(plain)
    assert [wire.decode(f).batch_id for f in split_frames(bytearray(plain))] == [3, 0, 5]


def test_httpx_with_zstandard_decodes_the_body_itself(api: TestClient) -> None:
    # httpx sends "gzip, deflate, zstd" when zstandard is installed and decodes the answer
    # (the TestClient does not decode: a real socket, the data listener's)
    state = api.app.state.batchstash  # type: ignore[attr-defined]
    with DataListener(state, "127.0.0.1", 0) as listener, httpx.Client() as http:
        response = http.get(
            f"http://127.0.0.1:{listener.port}/v1/splits/train/payloads?ids=1,2", headers=ZSTD
        )
    assert response.headers["content-encoding"] == "zstd"
    frames = split_frames(bytearray(response.content))
    assert [wire.decode(f).batch_id for f in frames] == [1, 2]


def test_a_composed_payload_goes_out_decompressed(http: Any) -> None:
    status, headers, body = get_raw(http, "/v1/splits/train/batches/1?attributes=tokens", ZSTD)
    assert status == 200 and "content-encoding" not in headers
    assert sorted(wire.decode(bytearray(body)).tensors) == ["tokens"]


def test_a_corrupt_compressed_object_is_store_corrupt_until_a_prime(
    tmp_path: Path, api: TestClient
) -> None:
    stored = stored_object(tmp_path / "data", "train", 1, "label+lengths+tokens")
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    stored.write_bytes(bytes(raw))
    for headers in (ZSTD, PLAIN):
        response = api.get("/v1/splits/train/batches/1", headers=headers)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "store_corrupt"
    response = api.get("/v1/splits/train/payloads?ids=0,1", headers=ZSTD)
    assert response.status_code == 500 and response.json()["error"]["code"] == "store_corrupt"
    prime(api)  # the resumed prime sees the object changed since it was written: re-encoded
    response = api.get("/v1/splits/train/batches/1", headers=PLAIN)
    assert response.status_code == 200 and wire.decode(bytearray(response.content)).batch_id == 1


def test_a_truncated_compressed_object_is_store_corrupt(tmp_path: Path, api: TestClient) -> None:
    stored = stored_object(tmp_path / "data", "train", 4, "label+lengths+tokens")
    stored.write_bytes(stored.read_bytes()[:-7])
    response = api.get("/v1/splits/train/batches/4", headers=ZSTD)
    assert response.status_code == 500 and response.json()["error"]["code"] == "store_corrupt"


def test_auto_keeps_random_floats_raw_and_compresses_labels(tmp_path: Path) -> None:
    options = {
        "rows": 64,
        "dims": 256,
        "batches": 3,
        "vectorizer": "tensor",
        "groups": [["x"], ["label"]],
    }
    api = make_api(
        tmp_path / "auto",
        compression="auto",
        dataset="benchmarks.synthetic:factory",
        dataset_options=options,
    )
    try:
        prime(api)
        info = read_record(open_backend(str(tmp_path / "auto")), StoreInfo)
        assert info is not None and info.compression is not None
        assert info.compression["groups"] == {"x": "none", "label": "zstd-3"}
        files = stored_files(tmp_path / "auto")
        assert files and all(
            (data[:4] == b"\x28\xb5\x2f\xfd") == name.endswith("/label.safetensors")
            for name, data in files.items()
        )
        response = api.get("/v1/splits/train/batches/0", headers=ZSTD)
        assert response.status_code == 200
        assert sorted(wire.decode(bytearray(response.content)).tensors) == ["label", "x"]
    finally:
        api.__exit__(None, None, None)


def test_choose_codecs_by_ratio() -> None:
    compressible = [bytes(4096)]
    noise = [bytes(json.dumps(list(range(64))).encode()), __import__("os").urandom(65536)]
    assert choose_codecs("auto", 3, {"a": compressible, "b": noise}) == {
        "a": "zstd-3",
        "b": "none",
    }
    assert choose_codecs("zstd", 5, {"b": noise}) == {"b": "zstd-5"}
    assert choose_codecs("none", 5, {"a": compressible}) == {"a": "none"}


def test_an_unknown_codec_is_refused(tmp_path: Path) -> None:
    from batchstash.service.examples import text

    with pytest.raises(InvalidRequestError, match="compression must be one of"):
        text(path=str(tmp_path / "x"), compression="lz4")
    with pytest.raises(InvalidRequestError, match="compression_level"):
        text(path=str(tmp_path / "x"), compression="zstd", compression_level=99)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip, deflate, br", False),
        ("zstd", True),
        ("ZSTD", True),
        ("gzip, deflate, zstd", True),
        ("zstd;q=0.5", True),
        ("zstd;q=0", False),
        ("zstd;q=zero", False),
        ("*", False),
    ],
)
def test_accept_encoding_names_zstd(header: str | None, accepted: bool) -> None:
    assert accepts_zstd(header) is accepted


@pytest.mark.parametrize("size", [0, 8, 255, 256, 200_000])
def test_raw_frames_are_zstd_frames_any_decoder_reads(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    frame = raw_frame(data)
    assert zstandard.frame_content_size(frame) == size
    assert zstandard.ZstdDecompressor().decompress(frame) == data


def test_an_s3_store_compressed_is_served_both_ways_cold_and_from_the_cache(
    s3_bucket: str, tmp_path: Path
) -> None:
    from batchstash.service.examples import text

    url = s3_bucket + "/zstd"
    text(path=url, compression="zstd", groups=ONE_GROUP["groups"]).prime()
    settings = build_settings(data_dir=url, role="serve", cache_dir=str(tmp_path / "cache"))
    with TestClient(create_app(settings)) as client:
        passes = []
        for _ in range(2):  # cold from S3, then warm from the local cache
            zstd = [client.get(f"/v1/splits/train/batches/{i}", headers=ZSTD) for i in range(4)]
            raw = [client.get(f"/v1/splits/train/batches/{i}", headers=PLAIN) for i in range(4)]
            assert all(r.headers["content-encoding"] == "zstd" for r in zstd)
            assert all("content-encoding" not in r.headers for r in raw)
            assert [unzstd(z.content) for z in zstd] == [r.content for r in raw]
            passes.append([r.content for r in raw])
        assert client.app.state.batchstash.reader.cache.hits >= 8
    assert passes[0] == passes[1]
    assert [wire.decode(bytearray(b)).batch_id for b in passes[0]] == [0, 1, 2, 3]


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSTASH_COMPRESSION", "ZSTD")
    monkeypatch.setenv("BATCHSTASH_COMPRESSION_LEVEL", "9")
    settings = build_settings()
    assert (settings.compression, settings.compression_level) == ("zstd", 9)
    monkeypatch.setenv("BATCHSTASH_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="compression"):
        build_settings()


def test_a_verified_compressed_file_is_held_open_unread_for_sendfile(
    tmp_path: Path, api: TestClient
) -> None:
    from batchstash.service.store.backend import Sendable
    from batchstash.service.store.codec import Compressed

    state = api.app.state.batchstash  # type: ignore[attr-defined]
    reader = state.reader
    stored = stored_object(tmp_path / "data", "train", 3, "label+lengths+tokens").read_bytes()
    (first,) = reader.payloads("train", [3], None, files=True, compressed=True)
    assert isinstance(first[0], Compressed) and not isinstance(first[0].stored, Sendable)
    (again,) = reader.payloads("train", [3], None, files=True, compressed=True)
    whole = again[0]
    assert isinstance(whole, Compressed) and isinstance(whole.stored, Sendable)
    assert whole.wire_size == len(stored) and whole.size > len(stored)
    whole.close()
    with DataListener(state, "127.0.0.1", 0, sendfile=True) as listener:
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as http:
            for _ in range(2):
                _, headers, body = get_raw(http, "/v1/splits/train/batches/3", ZSTD)
                assert headers["content-encoding"] == "zstd" and body == stored
            _, headers, plain = get_raw(http, "/v1/splits/train/batches/3", PLAIN)
    assert "content-encoding" not in headers and unzstd(stored) == plain


def test_several_groups_compressed_are_served_composed_and_the_prime_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from batchstash.service.examples import text

    stash = text(path=str(tmp_path / "groups"), compression="zstd")  # one object an attribute
    with caplog.at_level("WARNING"):
        stash.prime()
    assert "sent decompressed" in caplog.text
    (chunks,) = stash.payloads("train", [1])
    payload = wire.decode(bytearray(b"".join(bytes(c) for c in chunks)))
    assert payload.batch_id == 1 and sorted(payload.tensors) == ["label", "lengths", "tokens"]
