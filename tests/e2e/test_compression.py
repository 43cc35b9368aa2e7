"""A server of a zstd-compressed store: both client read paths, clients without zstd, curl."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import torch

from batchstash.client import BatchClient, encoding, wire

from .conftest import TOKEN, Server, prime_and_wait, start_server

ONE_GROUP = {"groups": [["label", "tokens", "lengths"]]}


def _prime(server: Server) -> None:
    state = prime_and_wait(server)
    assert state["state"] == "done", state


def _server(root: object, name: str, compression: str) -> Server:
    env = {
        "BATCHSTASH_DATASET": "batchstash.service.examples:text",
        "BATCHSTASH_DATASET_OPTIONS": json.dumps(ONE_GROUP),
        "BATCHSTASH_WORKERS": "0",
        "BATCHSTASH_COMPRESSION": compression,
    }
    server = start_server(root / name, root / f"{name}.log", env=env)  # type: ignore[operator]
    _prime(server)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """A zstd server and a plain one of the same dataset."""
    root = tmp_path_factory.mktemp("compressed")
    zstd = _server(root, "zstd", "zstd")
    try:
        plain = _server(root, "plain", "none")
        try:
            yield zstd, plain
        finally:
            plain.stop()
    finally:
        zstd.stop()


def bytes_served(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r"^batchstash_bytes_served_total (\S+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


def epoch(url: str, pipelined: bool) -> dict[int, dict[str, torch.Tensor]]:
    with BatchClient(url, token=TOKEN) as client:
        iterator = client.iter_batches("train", prefetch=6, shuffle=False, pipelined=pipelined)
        out = {b.id: {n: b[n].clone() for n in b} for b in iterator}
        if pipelined:
            assert iterator.reader is not None and iterator.reader.pipelined > 0
            assert iterator.reader.fallbacks == 0
    return out


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "threaded"])
def test_both_read_paths_get_the_plain_stores_tensors_in_fewer_bytes(
    servers: tuple[Server, Server], pipelined: bool
) -> None:
    zstd, plain = servers
    before = bytes_served(zstd), bytes_served(plain)
    ours, theirs = epoch(zstd.url, pipelined), epoch(plain.url, pipelined)
    assert sorted(ours) == sorted(theirs) == list(range(len(theirs)))
    for batch_id, tensors in theirs.items():
        assert ours[batch_id].keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert torch.equal(ours[batch_id][name], tensor)
    sent = bytes_served(zstd) - before[0], bytes_served(plain) - before[1]
    assert 0 < sent[0] < sent[1] / 2  # token ids compress several times over


def test_a_client_without_zstandard_gets_the_same_batches(
    servers: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    zstd, plain = servers
    monkeypatch.setattr(encoding, "_module", None)
    monkeypatch.setattr(encoding, "_missing", True)
    before = bytes_served(zstd)
    ours = epoch(zstd.url, pipelined=True)
    sent = bytes_served(zstd) - before
    monkeypatch.undo()
    before = bytes_served(plain)
    theirs = epoch(plain.url, pipelined=True)
    assert sent == bytes_served(plain) - before  # decompressed by the server, byte for byte
    assert all(torch.equal(ours[i]["tokens"], theirs[i]["tokens"]) for i in theirs)


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_gets_a_plain_payload_and_with_compressed_the_same(
    servers: tuple[Server, Server],
) -> None:
    zstd, _ = servers
    url = f"{zstd.url}/v1/splits/train/batches/3"
    plain = subprocess.run(["curl", "-sS", "-D", "-", url], capture_output=True, check=True)
    head, _, body = plain.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower()
    assert wire.decode(bytearray(body)).batch_id == 3
    asked = subprocess.run(
        ["curl", "-sS", "-H", "Accept-Encoding: zstd", "-o", "-", url],
        capture_output=True,
        check=True,
    )
    assert asked.stdout[:4] == b"\x28\xb5\x2f\xfd" and len(asked.stdout) < len(body)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "threaded"])
def test_compressed_batches_reach_the_gpu_intact(
    servers: tuple[Server, Server], pipelined: bool
) -> None:
    zstd, plain = servers
    expected = epoch(plain.url, pipelined)
    with BatchClient(zstd.url, token=TOKEN) as client:
        iterator = client.iter_batches(
            "train", prefetch=6, shuffle=False, pipelined=pipelined, device="cuda"
        )
        for batch in iterator:
            for name, tensor in expected[batch.id].items():
                assert batch[name].device.type == "cuda"
                assert torch.equal(batch[name].cpu(), tensor)
