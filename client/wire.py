r"""The batch payload: a standard safetensors file with checksummed tensors (spec + pure functions).

Byte layout (the safetensors format, https://github.com/huggingface/safetensors):

```
offset 0        8 bytes   N, unsigned little-endian 64-bit: length of the JSON header
offset 8        N bytes   JSON header, UTF-8, right-padded with spaces so that 8 + N % 8 == 0
offset 8 + N    ...       data region: the tensors' bytes, little-endian, C order, no holes
```

The header maps every tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data region) and holds ``"__metadata__"``, a string-to-string map.
batchstash writes tensors in order of decreasing alignment (8-byte dtypes first, then by name) so
every tensor starts aligned and can be viewed in place with ``torch.frombuffer``. JSON keys are
sorted, so equal tensors and metadata always give identical bytes.

Metadata keys written by batchstash (all values are strings):

| key | value |
| --- | --- |
| ``batchstash.format`` | ``"2"`` |
| ``batchstash.split`` | split name, e.g. ``"train"`` |
| ``batchstash.batch_id`` | the batch id, a decimal integer |
| ``batchstash.data_point_ids`` | JSON array of the batch's data point ids |
| ``batchstash.fingerprint`` | the store's configuration hash |
| ``batchstash.checksum.<name>`` | checksum of tensor ``<name>`` (below) |
| ``batchstash.identity_checksum`` | checksum of the batch's identity (below) |

A tensor's checksum is the hex XXH3-128 digest of ``name + "\0" + dtype + "\0" + shape + "\0"``
followed by its bytes, where ``shape`` is the dimensions joined by ``","``. Because each checksum
covers one tensor, a server can cut a payload down to some attributes, or join the stored files of
several attribute groups, without re-hashing (:func:`compose`). :func:`decode` verifies every
tensor.

The identity checksum is the hex XXH3-128 digest of ``split + "\0" + batch_id + "\0" +
fingerprint + "\0" + data_point_ids`` (the metadata values above, ``""`` when absent): a batch
cannot claim another split, id, store or data points without failing it. :func:`verify` and
:func:`decode` check it as they check the tensors.

Several payloads travel in one response as frames: see :mod:`batchstash.client.frames`
(:func:`split_frames` is re-exported here).

This module checks and reads payloads (:func:`verify`, :func:`decode`) and is where every part
of the codec is imported from: the format's keys, records and checksums live in
:mod:`~batchstash.client.wireformat`, header parsing in :mod:`~batchstash.client.wireheader`,
writing (:func:`encode`, :func:`compose`) in :mod:`~batchstash.client.wirewrite`.

Nothing here does I/O. Any malformed input raises :class:`PayloadError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import ChecksumError as ChecksumError
from .errors import PayloadError as PayloadError
from .frames import split_frames
from .wireformat import (
    CHECKSUM_PREFIX,
    FORMAT_VERSION,
    Header,
    Payload,
    TensorEntry,
    identity_checksum,
    tensor_checksum,
    verify_identity,
)
from .wireformat import IDENTITY_KEYS as IDENTITY_KEYS
from .wireformat import KEY_BATCH_ID as KEY_BATCH_ID
from .wireformat import KEY_DATA_POINT_IDS as KEY_DATA_POINT_IDS
from .wireformat import KEY_FINGERPRINT as KEY_FINGERPRINT
from .wireformat import KEY_FORMAT as KEY_FORMAT
from .wireformat import KEY_IDENTITY as KEY_IDENTITY
from .wireformat import KEY_SPLIT as KEY_SPLIT
from .wireformat import MAX_HEADER as MAX_HEADER
from .wireformat import dtype_code as dtype_code
from .wireheader import parse_header
from .wirewrite import compose, encode, encode_parts

__all__ = [
    "CHECKSUM_PREFIX",
    "FORMAT_VERSION",
    "Header",
    "Payload",
    "TensorEntry",
    "compose",
    "decode",
    "encode",
    "encode_parts",
    "identity_checksum",
    "parse_header",
    "split_frames",
    "tensor_checksum",
    "verify",
    "verify_identity",
]


# verify and decode look tensor_checksum and parse_header up in this module, as every caller
# (and a test's monkeypatch of wire.tensor_checksum or wire.parse_header) does


def _verify(entry: TensorEntry, data: memoryview, metadata: Mapping[str, str]) -> None:
    expected = metadata.get(CHECKSUM_PREFIX + entry.name)
    if expected is None:
        raise PayloadError(f"tensor {entry.name!r} has no checksum")
    if tensor_checksum(entry.name, entry.dtype, entry.shape, data) != expected:
        raise ChecksumError(f"tensor {entry.name!r} fails its checksum: the bytes are corrupt")


def verify(buf: Any, header: Header | None = None) -> Header:
    """Check the identity and every tensor's checksum without building tensors (a server's check).

    Args:
        buf: the whole payload.
        header: its parsed header (parsed here when ``None``).

    Returns:
        The header.

    Raises:
        PayloadError: malformed bytes or a missing checksum.
        ChecksumError: a tensor's bytes or the identity do not match their checksums.
    """
    header = header or parse_header(buf)
    verify_identity(header.metadata)
    view = memoryview(buf).cast("B")
    for entry in header.entries.values():
        data = view[header.data_start + entry.begin : header.data_start + entry.end]
        _verify(entry, data, header.metadata)
    return header


def decode(
    buf: Any,
    names: Iterable[str] | None = None,
    verify: bool = True,
    header: Header | None = None,
) -> Payload:
    """Decode a payload into tensors that share its memory (no copy when ``buf`` is writable).

    Args:
        buf: the payload; a writable buffer (``bytearray``) is viewed in place, a read-only one
            (``bytes``) is copied once.
        names: only decode these tensors (all when ``None``).
        verify: check the identity and every decoded tensor's checksum.
        header: its header as :func:`parse_header` (or :func:`verify`) returned it for these
            very bytes (parsed here when ``None``).

    Raises:
        PayloadError: malformed bytes, a missing tensor or a missing checksum.
        ChecksumError: a tensor's bytes or the identity do not match their checksums.
    """
    header = header or parse_header(buf)
    if header.metadata.get(KEY_FORMAT) != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload format {header.metadata.get(KEY_FORMAT)!r}")
    if verify:
        verify_identity(header.metadata)
    view = memoryview(buf).cast("B")
    if view.readonly:
        view = memoryview(bytearray(view))
    wanted = list(header.entries) if names is None else list(names)
    tensors = {}
    for name in wanted:
        entry = header.entries.get(name)
        if entry is None:
            raise PayloadError(f"payload has no tensor {name!r}")
        if verify:
            data = view[header.data_start + entry.begin : header.data_start + entry.end]
            _verify(entry, data, header.metadata)
        tensors[name] = _view_tensor(entry, view, header.data_start)
    return Payload(tensors, dict(header.metadata))


def _view_tensor(entry: TensorEntry, view: memoryview, data_start: int) -> torch.Tensor:
    dtype = entry.torch_dtype
    if entry.end == entry.begin:
        return torch.empty(entry.shape, dtype=dtype)
    offset = data_start + entry.begin
    if offset % dtype.itemsize:
        # a payload written by another tool may be unaligned: copy that tensor only
        aligned = bytearray(view[offset : data_start + entry.end])
        return torch.frombuffer(aligned, dtype=dtype).reshape(entry.shape)
    # ``view`` is writable here (decode copies read-only input), so torch does not warn
    flat = torch.frombuffer(
        view, dtype=dtype, count=(entry.end - entry.begin) // dtype.itemsize, offset=offset
    )
    return flat.reshape(entry.shape)
