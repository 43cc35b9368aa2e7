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

Nothing here does I/O. Any malformed input raises :class:`PayloadError` and nothing else.
"""

from __future__ import annotations

import json
import operator
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import torch
import xxhash

from .errors import ChecksumError, PayloadError
from .frames import split_frames

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

FORMAT_VERSION = "2"
KEY_FORMAT = "batchstash.format"
KEY_SPLIT = "batchstash.split"
KEY_BATCH_ID = "batchstash.batch_id"
KEY_DATA_POINT_IDS = "batchstash.data_point_ids"
KEY_FINGERPRINT = "batchstash.fingerprint"
CHECKSUM_PREFIX = "batchstash.checksum."
KEY_IDENTITY = "batchstash.identity_checksum"
IDENTITY_KEYS = (KEY_SPLIT, KEY_BATCH_ID, KEY_FINGERPRINT, KEY_DATA_POINT_IDS)
MAX_HEADER = 100 * 1024 * 1024

_CODES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a payload."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype for :attr:`dtype`."""
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class Header:
    """A parsed payload header: the tensors, the metadata and where the data region starts."""

    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


@dataclass
class Payload:
    """A decoded payload: tensors by name plus the batchstash metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> str:
        """The split the batch belongs to."""
        return self.metadata.get(KEY_SPLIT, "")

    @property
    def batch_id(self) -> int:
        """The batch id."""
        return int(self.metadata.get(KEY_BATCH_ID, "-1"))

    @property
    def data_point_ids(self) -> list[Any]:
        """The ids of the data points the batch was encoded from."""
        return list(json.loads(self.metadata.get(KEY_DATA_POINT_IDS, "[]")))

    @property
    def fingerprint(self) -> str:
        """The configuration hash of the store that encoded the batch."""
        return self.metadata.get(KEY_FINGERPRINT, "")


def dtype_code(dtype: torch.dtype) -> str:
    """Return the safetensors dtype code of a torch dtype."""
    try:
        return _CODES[dtype]
    except KeyError:
        raise PayloadError(f"dtype {dtype} cannot be stored in a batch payload") from None


def tensor_checksum(name: str, dtype: str, shape: Iterable[int], data: Any) -> str:
    """Return the checksum of one tensor record (see the module docstring).

    Args:
        name: the tensor (attribute) name.
        dtype: the safetensors dtype code.
        shape: the tensor's dimensions.
        data: a buffer with the tensor's bytes.
    """
    digest = xxhash.xxh3_128(f"{name}\0{dtype}\0{','.join(map(str, shape))}\0".encode())
    digest.update(data)
    return str(digest.hexdigest())


def identity_checksum(metadata: Mapping[str, str]) -> str:
    """Return the checksum of a batch's identity metadata (see the module docstring)."""
    text = "\0".join([metadata.get(key, "") for key in IDENTITY_KEYS])
    return str(xxhash.xxh3_128_hexdigest(text.encode()))


def verify_identity(metadata: Mapping[str, str]) -> None:
    """Check the identity checksum of a payload's metadata.

    Raises:
        PayloadError: there is none.
        ChecksumError: it does not match.
    """
    expected = metadata.get(KEY_IDENTITY)
    if expected is None:
        raise PayloadError("payload has no identity checksum")
    if identity_checksum(metadata) != expected:
        raise ChecksumError(
            "the batch's identity (split, batch id, fingerprint, data point ids) fails its checksum"
        )


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data.cast("B")


def _alignment_order(item: tuple[str, str]) -> tuple[int, str]:
    name, code = item
    return (-_DTYPES[code].itemsize, name)


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
        metadata: string metadata (the ``batchstash.*`` keys above and any others).

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


_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_STR_TYPE = frozenset((str,))
_BY_OFFSETS = operator.attrgetter("begin", "end")


def _entry(name: str, spec: Any) -> TensorEntry:
    # every header of every batch passes here: plain type checks, one loop (no sets, no genexps)
    if type(spec) is not dict or spec.keys() != _ENTRY_KEYS:
        raise PayloadError(f"tensor {name!r}: header entry is malformed")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    torch_dtype = _DTYPES.get(dtype) if type(dtype) is str else None
    if torch_dtype is None:
        raise PayloadError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if type(shape) is not list or type(offsets) is not list or len(offsets) != 2:
        raise PayloadError(f"tensor {name!r}: shape or data_offsets are not non-negative ints")
    numel, bound = 1, 1
    for dim in (*shape, *offsets):
        if type(dim) is not int or dim < 0:
            raise PayloadError(f"tensor {name!r}: shape or data_offsets are not non-negative ints")
    for dim in shape:
        numel *= dim
        bound *= dim or 1
    if bound >= 2**63:  # torch cannot even describe an empty tensor this large
        raise PayloadError(f"tensor {name!r}: shape {shape} overflows 64-bit sizes")
    begin, end = offsets
    if end - begin != numel * torch_dtype.itemsize:
        raise PayloadError(f"tensor {name!r}: data_offsets do not match dtype and shape")
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def parse_header(buf: Any) -> Header:
    """Parse and validate a payload header without touching the tensor bytes.

    Args:
        buf: the whole payload (any buffer).

    Raises:
        PayloadError: the bytes are not a well-formed payload.
    """
    view = memoryview(buf).cast("B")
    if view.nbytes < 8:
        raise PayloadError(f"payload of {view.nbytes} bytes is too short for a header")
    (size,) = struct.unpack_from("<Q", view, 0)
    if size > min(MAX_HEADER, view.nbytes - 8):
        raise PayloadError(f"header length {size} exceeds the payload ({view.nbytes} bytes)")
    try:
        # orjson parses the header in place, 2 x faster than json (a header a batch, ~2 KB)
        doc = orjson.loads(view[8 : 8 + size])
    except orjson.JSONDecodeError:
        doc = _strict_json(view[8 : 8 + size])  # what orjson refuses: json's word for it
    if not isinstance(doc, dict):
        raise PayloadError("header is not a JSON object")
    metadata = doc.pop("__metadata__", {})
    # JSON object keys are always strings: only the values need a look
    if type(metadata) is not dict or not {*map(type, metadata.values())} <= _STR_TYPE:
        raise PayloadError("__metadata__ is not a map of strings")
    try:
        entries = {name: _entry(name, spec) for name, spec in doc.items()}
    except PayloadError:
        # orjson reads integers beyond 64 bits as floats: json's ints say what is wrong exactly
        strict = _strict_json(view[8 : 8 + size])
        strict.pop("__metadata__", None)
        for name, spec in strict.items():
            _entry(name, spec)
        raise
    offset = 0
    for entry in sorted(entries.values(), key=_BY_OFFSETS):
        if entry.begin != offset:
            raise PayloadError(f"tensor {entry.name!r}: data region has a hole or an overlap")
        offset = entry.end
    data_start = 8 + size
    if data_start + offset != view.nbytes:
        raise PayloadError(
            f"payload is {view.nbytes} bytes but its header describes {data_start + offset}"
        )
    return Header(entries, metadata, data_start)


def _strict_json(raw: memoryview) -> Any:
    """Parse with :mod:`json`: for a precise error where orjson refused or changed a value.

    json keeps integers beyond 64 bits as integers (orjson refuses them, or reads them as
    floats), so an oversized shape is reported as such by the entry checks.
    """
    try:
        return json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"header is not valid JSON: {exc}") from None


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
