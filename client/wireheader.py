"""Reading a payload header: parsed and validated without touching the tensor bytes.

:func:`parse_header` is the first step of every read of a payload (see
:mod:`batchstash.client.wire`): it checks the header against the format and the payload's size,
so that verifying and decoding can trust the offsets. Any malformed input raises
:class:`PayloadError` and nothing else.
"""

from __future__ import annotations

import json
import operator
import struct
from typing import Any

import orjson

from .errors import PayloadError
from .wireformat import DTYPES, MAX_HEADER, Header, TensorEntry

__all__ = ["parse_header"]

_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_STR_TYPE = frozenset((str,))
_BY_OFFSETS = operator.attrgetter("begin", "end")


def _entry(name: str, spec: Any) -> TensorEntry:
    # every header of every batch passes here: plain type checks, one loop (no sets, no genexps)
    if type(spec) is not dict or spec.keys() != _ENTRY_KEYS:
        raise PayloadError(f"tensor {name!r}: header entry is malformed")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    torch_dtype = DTYPES.get(dtype) if type(dtype) is str else None
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
