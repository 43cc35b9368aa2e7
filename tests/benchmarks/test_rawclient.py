"""The raw-socket client: frames and safetensors parsing, against a real floor server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import torch

from batchstash.client import wire
from batchstash.client.frames import frame_prefix
from benchmarks import rawclient
from benchmarks.floor_server import make_handler

IDS = (0, 1, 2)
TOKEN = "s3cret"


def _tensors(batch_id: int, offset: float = 0.0) -> dict[str, torch.Tensor]:
    return {
        "x": torch.arange(12, dtype=torch.float32).reshape(3, 4) + batch_id + offset,
        "label": torch.tensor([batch_id, 7, -1], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def _payload(batch_id: int, offset: float = 0.0) -> bytes:
    meta = {"batchstash.split": "train", "batchstash.batch_id": str(batch_id)}
    return wire.encode(_tensors(batch_id, offset), meta)


def _store(root: Path, offset: float) -> Path:
    """A store directory as the floor server reads it: one payload file a batch."""
    root.mkdir(parents=True)
    (root / "store.json").write_text(json.dumps({"generation": "g1"}))
    for batch_id in IDS:
        directory = root / "batches" / "g1" / "train" / str(batch_id)
        directory.mkdir(parents=True)
        (directory / "x,label,mask.safetensors").write_bytes(_payload(batch_id, offset))
    return root


class Floor:
    """A floor server on 127.0.0.1 in a thread that records each request's path and token."""

    def __init__(self, store: Path, advertise: int | None = None) -> None:
        body = json.dumps({"fingerprint": "f", "batch_ids": list(IDS)}).encode()
        base = make_handler(store, "train", {"/v1/splits/train/batches": body})
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Recording(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:  # noqa: N802
                seen.append((self.path, self.headers.get("Authorization")))
                super().do_GET()

            def end_headers(self) -> None:
                if advertise is not None and self.path.endswith("/batches"):
                    self.send_header("X-Batchstash-Data-Port", str(advertise))
                super().end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture()
def floor(tmp_path: Path) -> Iterator[Floor]:
    server = Floor(_store(tmp_path / "api", 0.0))
    yield server
    server.close()


def _assert_batch(got: dict[str, torch.Tensor], batch_id: int, offset: float = 0.0) -> None:
    want = _tensors(batch_id, offset)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_frames_cut_at_their_length_prefixes() -> None:
    body = bytearray(frame_prefix(3) + b"abc" + frame_prefix(0) + frame_prefix(2) + b"de")
    frames = rawclient.frames(memoryview(body))
    assert [bytes(f) for f in frames] == [b"abc", b"", b"de"]
    assert all(f.obj is body for f in frames)  # views of the body, not copies


def test_tensors_match_the_safetensors_reader() -> None:
    payload = _payload(5)
    got = rawclient.tensors(memoryview(bytearray(payload)))
    reference = safetensors.torch.load(payload)
    assert set(got) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(got[name], tensor), name
    _assert_batch(got, 5)


def test_payloads_from_a_floor_server_in_request_order(floor: Floor) -> None:
    client, ids = rawclient.connect(floor.url, "train", token=TOKEN)
    try:
        assert ids == list(IDS) and client.port == floor.port
        for order in ([2, 0, 1], [1], [0, 0, 2]):
            batches = client.payloads("train", order)
            assert len(batches) == len(order)
            for got, batch_id in zip(batches, order, strict=True):
                _assert_batch(got, batch_id)
        with pytest.raises(RuntimeError, match="404"):
            client.payloads("train", [99])
        _assert_batch(client.payloads("train", [1])[0], 1)  # the connection is still usable
    finally:
        client.close()
    assert len(floor.seen) == 6  # one connection: ids, 4 payload requests, then one more
    assert {auth for _, auth in floor.seen} == {f"Bearer {TOKEN}"}
    assert floor.seen[1][0] == "/v1/splits/train/payloads?ids=2,0,1"


def test_rotating_buffers_keep_recent_tensors(floor: Floor) -> None:
    client, _ = rawclient.connect(floor.url, "train")
    try:
        kept = [client.payloads("train", [i])[0] for i in IDS]  # 3 responses, 4 buffers
        for got, batch_id in zip(kept, IDS, strict=True):
            _assert_batch(got, batch_id)
    finally:
        client.close()
    assert {auth for _, auth in floor.seen} == {None}  # no token: no header


def test_data_port_mode_sends_payloads_to_the_advertised_port(tmp_path: Path) -> None:
    data = Floor(_store(tmp_path / "data", 100.0))  # its tensors tell which port answered
    api = Floor(_store(tmp_path / "api", 0.0), advertise=data.port)
    try:
        assert rawclient.data_port(api.url, "train") == data.port
        client, ids = rawclient.connect(api.url, "train", token=TOKEN, data_port=True)
        try:
            assert ids == list(IDS) and client.port == data.port
            _assert_batch(client.payloads("train", [2])[0], 2, offset=100.0)
        finally:
            client.close()
        plain, _ = rawclient.connect(api.url, "train")  # the flag off: the API port
        try:
            _assert_batch(plain.payloads("train", [2])[0], 2)
        finally:
            plain.close()
    finally:
        api.close()
        data.close()
    assert [path for path, _ in data.seen] == ["/v1/splits/train/payloads?ids=2"]
    assert data.seen[0][1] == f"Bearer {TOKEN}"


def test_data_port_mode_without_the_header_is_refused(floor: Floor) -> None:
    assert rawclient.data_port(floor.url, "train") is None
    with pytest.raises(LookupError, match="no data port"):
        rawclient.connect(floor.url, "train", data_port=True)


def test_fetcher_kinds_cover_the_raw_and_ceiling_rows() -> None:
    from benchmarks import ceiling, fetchers

    assert {"iter", "seq", "raw", "raw_data", "naive", *ceiling.KINDS} == set(fetchers.FETCHERS)
    assert {kind for kind, _ in ceiling.RUNS.values()} <= set(ceiling.KINDS)
    assert {kind for kind, _ in ceiling.FILE_RUNS.values()} <= set(ceiling.KINDS)
