"""The canonical bytes of fingerprinted values: type tags, lengths, dtypes and shapes.

A leaf value (``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``bytearray``, ``memoryview``, by exact type) goes into a hash as a one-letter type tag, its
length where it has one, then its bytes: :data:`LEAVES` holds the encoder of each. The helpers
give the length-prefixed text, exact dtype descriptions, shapes and array bytes that the content
hasher (:mod:`batchstash.service.dataset.fingerprint`) writes for containers, arrays and tensors.
These bytes name the stores on disk: a change to any of them makes every store stale.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "LEAVES",
    "array_head",
    "dtype_descr",
    "encode_length",
    "encode_shape",
    "encode_text",
    "pack_int64",
    "type_name",
    "update_bytes",
]

_Q = struct.Struct("<Q").pack
pack_int64 = struct.Struct("<q").pack
"""A signed 64-bit integer, little-endian."""
_d = struct.Struct("<d").pack
_dd = struct.Struct("<dd").pack


def type_name(value: Any) -> str:
    """``module.QualName`` of a value's type (``builtins`` left out)."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def encode_length(n: int) -> bytes:
    """A length or a count: an unsigned 64-bit integer, little-endian."""
    return _Q(n)


def encode_text(text: str) -> bytes:
    """UTF-8 text (lone surrogates kept), after its length in bytes."""
    data = text.encode("utf-8", "surrogatepass")
    return _Q(len(data)) + data


def dtype_descr(dtype: np.dtype[Any]) -> bytes:
    """A dtype's exact description: byte order, kind and size, fields and units included."""
    if dtype.fields is None and dtype.subdtype is None:
        return encode_text(dtype.str)
    return encode_text(str(np.lib.format.dtype_to_descr(dtype)))


@functools.lru_cache(maxsize=256)
def array_head(dtype: np.dtype[Any]) -> bytes:
    """The tag and dtype an array's shape and values follow."""
    return b"A" + dtype_descr(dtype)


@functools.lru_cache(maxsize=64)
def _shape_struct(ndim: int) -> struct.Struct:
    return struct.Struct(f"<Q{ndim}Q")


def encode_shape(shape: Sequence[int]) -> bytes:
    """The number of dimensions, then each."""
    return _shape_struct(len(shape)).pack(len(shape), *shape)


def update_bytes(h: Any, arr: np.ndarray[Any, Any]) -> None:
    """Feed the array's bytes in C order (copied only when it is not C-contiguous)."""
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    try:
        h.update(arr)  # the array's own buffer
    except (BufferError, TypeError, ValueError):  # a dtype the buffer protocol does not take
        h.update(arr.reshape(-1).view(np.uint8))


# the leaf encoders: (the hasher, unused; the hash; the value) --------------------------------


def _none(_: object, h: Any, __: None) -> None:
    h.update(b"N")


def _bool(_: object, h: Any, value: bool) -> None:
    h.update(b"?1" if value else b"?0")


def _int(_: object, h: Any, value: int) -> None:
    if -(2**63) <= value < 2**63:
        h.update(b"i" + pack_int64(value))
    else:
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        h.update(b"I" + _Q(len(data)) + data)


def _float(_: object, h: Any, value: float) -> None:
    h.update(b"f" + _d(value))


def _complex(_: object, h: Any, value: complex) -> None:
    h.update(b"c" + _dd(value.real, value.imag))


def _str(_: object, h: Any, value: str) -> None:
    h.update(b"s" + encode_text(value))


def _bytes(_: object, h: Any, value: bytes) -> None:
    h.update(b"b" + _Q(len(value)))
    h.update(value)


def _bytearray(_: object, h: Any, value: bytearray) -> None:
    h.update(b"y" + _Q(len(value)))
    h.update(value)


def _memoryview(_: object, h: Any, value: memoryview) -> None:
    h.update(b"m" + encode_text(value.format) + _Q(value.ndim))
    for dim in value.shape or ():
        h.update(_Q(dim))
    h.update(value.cast("B") if value.c_contiguous else value.tobytes())


LEAVES: dict[type, Callable[[Any, Any, Any], None]] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: _bytes,
    bytearray: _bytearray,
    memoryview: _memoryview,
}
"""The encoder of each leaf type, by exact type (a subclass is not a leaf)."""
