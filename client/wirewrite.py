"""Writing a payload: tensors encoded (:func:`encode`), or stored payloads joined (:func:`compose`).

Both lay the tensors out in order of decreasing alignment and write the sorted JSON header of
the format (see :mod:`batchstash.client.wire`), so equal input always gives identical bytes.
Nothing here does I/O.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import PayloadError
from .wireformat import (
    CHECKSUM_PREFIX,
    DTYPES,
    FORMAT_VERSION,
    KEY_FORMAT,
    KEY_IDENTITY,
    Header,
    TensorEntry,
    dtype_code,
    identity_checksum,
    tensor_checksum,
)

__all__ = ["compose", "encode", "encode_parts"]


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data.cast("B")


def _alignment_order(item: tuple[str, str]) -> tuple[int, str]:
    name, code = item
    return (-DTYPES[code].itemsize, name)


def _header_bytes(entries: list[TensorEntry], metadata: Mapping[str, str]) -> bytes:
    doc: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    for entry in entries:
        doc[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _layout(parts: list[tuple[str, str, tuple[int, ...], Any]]) -> list[TensorEntry]:
    entries, offset = [], 0
    for name, code, shape, data in parts:
        size = memoryview(data).nbytes
        entries.append(TensorEntry(name, code, shape, offset, offset + size))
        offset += size
    return entries


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Encode tensors and metadata as a payload, adding each tensor's checksum.

    Args:
        tensors: tensors by attribute name (any device; copied to CPU).
        metadata: string metadata (the ``batchstash.*`` keys of the format and any others).

    Returns:
        The payload bytes; equal input always gives equal bytes.
    """
    return b"".join(encode_parts(tensors, metadata))


def encode_parts(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> list[bytes | memoryview]:
    """Like :func:`encode`, as the header then each tensor's bytes (views, not copies).

    Written one after the other they are the payload; the views share the tensors' memory, so
    keep the tensors unchanged until the parts are written.
    """
    records = {
        name: (dtype_code(t.dtype), tuple(t.shape), _tensor_bytes(t)) for name, t in tensors.items()
    }
    order = sorted(((n, r[0]) for n, r in records.items()), key=_alignment_order)
    parts = [(name, code, records[name][1], records[name][2]) for name, code in order]
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta[KEY_FORMAT] = FORMAT_VERSION
    meta[KEY_IDENTITY] = identity_checksum(meta)
    for name, code, shape, data in parts:
        meta[CHECKSUM_PREFIX + name] = tensor_checksum(name, code, shape, data)
    header = _header_bytes(_layout(parts), meta)
    return [header, *(p[3] for p in parts)]


def compose(
    sources: Iterable[tuple[Any, Header]],
    names: Iterable[str] | None,
    metadata: Mapping[str, str],
) -> list[memoryview | bytes]:
    """Build a payload from tensors of already-encoded payloads without decoding or re-hashing.

    Args:
        sources: ``(buffer, parsed header)`` of each source payload (e.g. the stored files of the
            attribute groups of one batch).
        names: the tensors to keep (all when ``None``).
        metadata: metadata for the new payload (pass a verified source's, identity checksum
            included); the kept tensors' checksums are copied over.

    Returns:
        The payload as a list of chunks (header first); ``b"".join(...)`` gives the bytes.

    Raises:
        PayloadError: a requested tensor is in none of the sources.
    """
    found: dict[str, tuple[TensorEntry, memoryview, str]] = {}
    for buf, header in sources:
        view = memoryview(buf).cast("B")
        for name, entry in header.entries.items():
            checksum = header.metadata.get(CHECKSUM_PREFIX + name)
            if checksum is None:
                raise PayloadError(f"tensor {name!r} has no checksum")
            data = view[header.data_start + entry.begin : header.data_start + entry.end]
            found[name] = (entry, data, checksum)
    keep = sorted(found) if names is None else sorted(set(names))
    missing = [n for n in keep if n not in found]
    if missing:
        raise PayloadError(f"no stored tensor for {', '.join(missing)}")
    order = sorted(((n, found[n][0].dtype) for n in keep), key=_alignment_order)
    parts = [(n, code, found[n][0].shape, found[n][1]) for n, code in order]
    meta = {str(k): str(v) for k, v in metadata.items() if not k.startswith(CHECKSUM_PREFIX)}
    meta[KEY_FORMAT] = FORMAT_VERSION
    meta.setdefault(KEY_IDENTITY, identity_checksum(meta))
    for name in keep:
        meta[CHECKSUM_PREFIX + name] = found[name][2]
    return [_header_bytes(_layout(parts), meta), *(p[3] for p in parts)]
