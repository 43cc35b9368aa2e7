"""The payload format's vocabulary: metadata keys, dtype codes, parsed records and checksums.

What every part of the codec shares (see :mod:`batchstash.client.wire` for the byte layout and
what each checksum covers): the ``batchstash.*`` metadata keys, the safetensors dtype codes, the
records a header is parsed into (:class:`TensorEntry`, :class:`Header`), the decoded
:class:`Payload`, and the tensor and identity checksums. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from .errors import ChecksumError, PayloadError

__all__ = [
    "CHECKSUM_PREFIX",
    "DTYPES",
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "KEY_BATCH_ID",
    "KEY_DATA_POINT_IDS",
    "KEY_FINGERPRINT",
    "KEY_FORMAT",
    "KEY_IDENTITY",
    "KEY_SPLIT",
    "MAX_HEADER",
    "Header",
    "Payload",
    "TensorEntry",
    "dtype_code",
    "identity_checksum",
    "tensor_checksum",
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
DTYPES = {code: dtype for dtype, code in _CODES.items()}
"""The torch dtype of each safetensors dtype code a payload may hold."""


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
        return DTYPES[self.dtype]


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
    """Return the checksum of one tensor record (see :mod:`batchstash.client.wire`).

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
    """Return the checksum of a batch's identity metadata (see :mod:`batchstash.client.wire`)."""
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
