"""The raw-socket client: the least a Python client can do to turn a payloads response to tensors.

One keep-alive TCP socket; ``GET /v1/splits/{split}/payloads?ids=...`` written by hand; the status
line and headers parsed here; the body ``recv_into`` a buffer of its ``Content-Length`` (buffers
reused from a small rotating set); frames cut at their 8-byte little-endian lengths (see
``client/frames.py``); each safetensors header (8-byte little-endian length, JSON) parsed and
its tensors viewed in place with ``torch.frombuffer``. **No checksum or identity verification**:
what :class:`~batchstash.client.http.BatchClient` adds on top of this is its own cost.
"""

from __future__ import annotations

import json
import socket
import struct
from urllib.parse import urlsplit

import torch

__all__ = ["DATA_PORT_HEADER", "RawClient", "connect", "data_port", "frames", "tensors", "warm"]

DATA_PORT_HEADER = "x-batchstash-data-port"
_LENGTH = struct.Struct("<Q")
_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def tensors(payload: memoryview) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors payload, viewing its bytes (no copy, no checksum)."""
    (size,) = _LENGTH.unpack_from(payload)
    header = json.loads(bytes(payload[8 : 8 + size]))
    header.pop("__metadata__", None)
    out = {}
    for name, entry in header.items():
        dtype, (begin, end) = _DTYPES[entry["dtype"]], entry["data_offsets"]
        flat = torch.frombuffer(
            payload, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=8 + size + begin
        )
        out[name] = flat.reshape(entry["shape"])
    return out


def frames(body: memoryview) -> list[memoryview]:
    """Cut a frames body at its length prefixes (views, no copy)."""
    out, pos = [], 0
    while pos < len(body):
        (size,) = _LENGTH.unpack_from(body, pos)
        out.append(body[pos + 8 : pos + 8 + size])
        pos += 8 + size
    return out


class RawClient:
    """One keep-alive HTTP/1.1 connection to ``url`` (``http://host:port``).

    Args:
        url: the server.
        token: sent as ``Authorization: Bearer`` when given.
        buffers: bodies are received into this many buffers in turn: a body's tensors stay valid
            until that many more responses have arrived.
    """

    def __init__(self, url: str, token: str | None = None, buffers: int = 4) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock = socket.create_connection((self.host, self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ring, self.turn = [bytearray() for _ in range(buffers)], 0

    def _buffer(self, size: int) -> memoryview:
        self.turn = (self.turn + 1) % len(self.ring)
        if len(self.ring[self.turn]) < size:
            self.ring[self.turn] = bytearray(size)
        return memoryview(self.ring[self.turn])[:size]

    def get(self, target: str) -> tuple[dict[str, str], memoryview]:
        """``GET target``: the headers (names lower-cased) and the body; raises unless 200."""
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}\r\n".encode())
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"GET {target}: the server closed the connection")
            head += chunk
        status, *lines = head[:end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
        body, got = self._buffer(int(headers["content-length"])), len(head) - end - 4
        body[:got] = head[end + 4 :]
        while got < len(body):
            n = self.sock.recv_into(body[got:])
            if not n:
                raise ConnectionError(f"GET {target}: the body ended early")
            got += n
        if status.split()[1] != "200":
            raise RuntimeError(f"GET {target}: {status}: {bytes(body[:200])!r}")
        return headers, body

    def batch_ids(self, split: str) -> tuple[list[int], int | None]:
        """The split's batch ids, and the data port the server advertises (``None``: none)."""
        headers, body = self.get(f"/v1/splits/{split}/batches")
        port = headers.get(DATA_PORT_HEADER)
        return [int(i) for i in json.loads(bytes(body))["batch_ids"]], int(port) if port else None

    def payloads(self, split: str, ids: list[int]) -> list[dict[str, torch.Tensor]]:
        """The tensors of each of ``ids``, in order, from one request."""
        _, body = self.get(f"/v1/splits/{split}/payloads?ids={','.join(map(str, ids))}")
        return [tensors(frame) for frame in frames(body)]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def warm(url: str, split: str, per_request: int, token: str | None = None) -> int:
    """Read every batch of ``split`` once (on the API port); return how many.

    A server verifies each stored object's checksums the first time it serves it, and keeps
    its header after: a load run that meets objects for the first time measures that
    verification, not serving.
    """
    client, ids = connect(url, split, token)
    try:
        for i in range(0, len(ids), per_request):
            client.payloads(split, ids[i : i + per_request])
    finally:
        client.close()
    return len(ids)


def data_port(url: str, split: str, token: str | None = None) -> int | None:
    """The data port ``url`` advertises on ``GET /v1/splits/{split}/batches``, if any."""
    client = RawClient(url, token)
    try:
        return client.batch_ids(split)[1]
    finally:
        client.close()


def connect(
    url: str, split: str, token: str | None = None, data_port: bool = False
) -> tuple[RawClient, list[int]]:
    """A client for ``split``'s payloads, and the split's batch ids.

    Args:
        url: the server's API address.
        split: the split.
        token: the bearer token, if the server needs one.
        data_port: send the payload requests to the data port the API advertises in its
            ``X-Batchstash-Data-Port`` header (same host) instead of the API port.

    Raises:
        LookupError: ``data_port`` and the server advertises none.
    """
    client = RawClient(url, token)
    ids, port = client.batch_ids(split)
    if not data_port:
        return client, ids
    client.close()
    if port is None:
        raise LookupError(f"{url} advertises no data port ({DATA_PORT_HEADER})")
    return RawClient(f"http://{client.host}:{port}", token), ids
