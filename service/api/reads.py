"""What both read paths share: query parsing, ETags and the frames of a multi-batch response.

The FastAPI routes (:mod:`.routes.batches`) and the data listener (:mod:`.datapath`) answer the
same URLs with the same bytes, headers and errors; this module is the one place that says how.
Nothing here does I/O beyond the store reader.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

from batchstash.client import InvalidRequestError
from batchstash.client.frames import frame_prefix
from batchstash.client.headers import DATA_PORT_HEADER, FINGERPRINT_HEADER
from batchstash.service.store.backend import nbytes
from batchstash.service.store.reader import StoreReader
from batchstash.service.store.records import StoreInfo

__all__ = [
    "DATA_PORT_HEADER",
    "FINGERPRINT_HEADER",
    "MAX_IDS",
    "PAYLOAD_MEDIA_TYPE",
    "batch_etag",
    "check_single_values",
    "etag_matches",
    "frames",
    "parse_attributes",
    "parse_ids",
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


def frames(
    reader: StoreReader,
    split: str,
    ids: Sequence[int],
    names: list[str] | None,
    files: bool = False,
) -> list[Any]:
    """The body of ``GET /v1/splits/{split}/payloads``: each payload after its length prefix.

    The chunks view the stored (mapped) bytes; only the prefixes and composed headers are new.
    With ``files`` a whole stored object may be its held-open file (see
    :meth:`StoreReader.payloads`; the data listener sends it with ``sendfile``).
    """
    chunks: list[Any] = []
    for parts in reader.payloads(split, ids, names, files):
        chunks.append(frame_prefix(sum(map(nbytes, parts))))
        chunks.extend(parts)
    return chunks
