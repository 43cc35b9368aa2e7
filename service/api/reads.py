"""What both read paths share: query parsing, ETags, bodies and their ``Content-Encoding``.

The FastAPI routes (:mod:`.routes.batches`) and the data listener (:mod:`.datapath`) answer the
same URLs with the same bytes, headers and errors; this module is the one place that says how:
the frames of a multi-batch response, and whether a body goes out as its zstd-compressed stored
objects (to a client whose ``Accept-Encoding`` names ``zstd``) or decompressed
(:func:`encode_body`). Nothing here does I/O beyond the store reader.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

from batchstash.client import InvalidRequestError
from batchstash.client.frames import frame_prefix
from batchstash.client.headers import DATA_PORT_HEADER, DECODED_LENGTH_HEADER, FINGERPRINT_HEADER
from batchstash.service.store.backend import Sendable, nbytes
from batchstash.service.store.codec import Compressed, raw_frame
from batchstash.service.store.reader import StoreReader
from batchstash.service.store.records import StoreInfo

__all__ = [
    "DATA_PORT_HEADER",
    "FINGERPRINT_HEADER",
    "MAX_IDS",
    "PAYLOAD_MEDIA_TYPE",
    "Body",
    "accepts_zstd",
    "batch_etag",
    "check_single_values",
    "close_all",
    "encode_body",
    "etag_matches",
    "frames",
    "parse_attributes",
    "parse_ids",
    "payload",
]

MAX_IDS = 1024
PAYLOAD_MEDIA_TYPE = "application/octet-stream"

_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_single_values(keys: Iterable[str]) -> None:
    """Refuse a query parameter given twice (``ids=0&ids=1`` would silently keep the last).

    Raises:
        InvalidRequestError: a key is repeated.
    """
    repeated = sorted(key for key, n in Counter(keys).items() if n > 1)
    if repeated:
        raise InvalidRequestError(
            f"query parameter {repeated[0]!r} is given more than once: "
            "give one comma separated list (ids=0,1,2)"
        )


def parse_attributes(raw: str | None) -> list[str] | None:
    """Parse ``?attributes=a,b`` into names (``None`` when absent)."""
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",")]
    if not names or any(not _ATTR.match(n) for n in names):
        raise InvalidRequestError(f"attributes must be a comma separated list of names: {raw!r}")
    return sorted(set(names))


def parse_ids(raw: str) -> list[int]:
    """Parse ``?ids=0,1,2`` into batch ids (at most :data:`MAX_IDS`)."""
    try:
        ids = [int(i) for i in raw.split(",")]
    except ValueError:
        raise InvalidRequestError(f"ids must be comma separated integers: {raw[:80]!r}") from None
    if not ids or len(ids) > MAX_IDS or min(ids) < 0:
        raise InvalidRequestError(f"give 1 to {MAX_IDS} non-negative batch ids")
    return ids


def batch_etag(info: StoreInfo, split: str, batch_id: int, names: list[str] | None) -> str:
    """The ETag of one batch's payload: its store, generation, id and attributes."""
    key = ",".join(names) if names is not None else "*"
    digest = xxhash.xxh3_64_hexdigest(f"{info.generation}/{split}/{batch_id}/{key}".encode())
    return f'"{info.fingerprint[:16]}-{digest}"'


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """Whether an ``If-None-Match`` header names ``etag``."""
    return if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts ``zstd`` (named, with a non-zero ``q``)."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() != "zstd":
            continue
        q = params.strip().lower().removeprefix("q=")
        try:
            return not params.strip() or float(q) > 0
        except ValueError:
            return False
    return False


class Body:
    """A batch response body as chunks, and how it is encoded.

    Attributes:
        chunks: buffers, or stored files held open (the data listener sends them unread).
        encoding: ``"zstd"`` (the chunks are zstd frames) or ``None`` (the body itself).
        decoded: the body's length once decompressed (its length when not encoded).
    """

    def __init__(self, chunks: list[Any], encoding: str | None, decoded: int) -> None:
        self.chunks, self.encoding, self.decoded = chunks, encoding, decoded

    @property
    def size(self) -> int:
        """The bytes sent."""
        return sum(map(nbytes, self.chunks))

    def headers(self) -> list[tuple[str, str]]:
        """``Content-Encoding`` and the decoded length when encoded; ``Vary`` in every case."""
        out = [("Vary", "Accept-Encoding")]
        if self.encoding is not None:
            out += [("Content-Encoding", self.encoding), (DECODED_LENGTH_HEADER, str(self.decoded))]
        return out


def encode_body(payloads: list[list[Any]], zstd: bool, framed: bool) -> Body:
    """The body of one payload, or of several as frames, encoded as the client accepts.

    Where every payload is one whole object stored compressed and the client accepts zstd,
    the stored bytes go out as they are (``Content-Encoding: zstd``; a frame prefix becomes a
    zstd frame of its own); else every compressed object is decompressed.
    """
    if zstd and all(len(p) == 1 and isinstance(p[0], Compressed) for p in payloads):
        chunks: list[Any] = []
        decoded = 0
        for (whole,) in payloads:
            if framed:
                chunks.append(raw_frame(frame_prefix(whole.size)))
                decoded += 8
            chunks.append(whole.stored)
            decoded += whole.size
        return Body(chunks, "zstd", decoded)
    plain = [[c.decoded() if isinstance(c, Compressed) else c for c in p] for p in payloads]
    chunks = []
    for parts in plain:
        if framed:
            chunks.append(frame_prefix(sum(map(nbytes, parts))))
        chunks.extend(parts)
    return Body(chunks, None, sum(map(nbytes, chunks)))


def frames(
    reader: StoreReader,
    split: str,
    ids: Sequence[int],
    names: list[str] | None,
    files: bool = False,
    zstd: bool = False,
) -> Body:
    """The body of ``GET /v1/splits/{split}/payloads``: each payload after its length prefix.

    The chunks view the stored (mapped) bytes; only the prefixes and composed headers are new.
    With ``files`` a whole stored object may be its held-open file (see
    :meth:`StoreReader.payloads`; the data listener sends it with ``sendfile``). ``zstd``: the
    client accepts it (see :func:`encode_body`).
    """
    payloads = reader.payloads(split, ids, names, files, compressed=True)
    try:
        return encode_body(payloads, zstd, framed=True)
    except BaseException:
        for parts in payloads:
            close_all(parts)
        raise


def payload(
    reader: StoreReader,
    split: str,
    batch_id: int,
    names: list[str] | None,
    files: bool = False,
    zstd: bool = False,
) -> Body:
    """The body of ``GET /v1/splits/{split}/batches/{id}`` (see :func:`frames`)."""
    payloads = reader.payloads(split, [batch_id], names, files, compressed=True)
    try:
        return encode_body(payloads, zstd, framed=False)
    except BaseException:
        close_all(payloads[0])
        raise


def close_all(chunks: Iterable[Any]) -> None:
    """Close the stored files among chunks (a payload's, compressed or not)."""
    for chunk in chunks:
        if isinstance(chunk, Compressed | Sendable):
            chunk.close()
