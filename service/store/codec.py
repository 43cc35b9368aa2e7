"""Batch objects stored zstd-compressed: the codecs, the ``auto`` choice and zstd framing.

A stored group object is either the payload itself (see :mod:`batchstash.client.wire`) or one
zstd frame of it, with the payload's size in the frame header. Which one is read from its first
four bytes (:data:`~batchstash.client.encoding.ZSTD_MAGIC`; a payload never starts so), so a
store may hold both, and the codec is no part of the fingerprint: the tensors and their
checksums are those of the uncompressed payload either way.

| ``compression`` | objects written |
| --- | --- |
| ``none`` | the payload |
| ``zstd`` | a zstd frame of it, at ``compression_level`` |
| ``auto`` | per attribute group, from a sample batch: zstd where it shrinks the group's object |
|          | by :data:`AUTO_MIN_RATIO` or more, else the payload |

A server sends a compressed object as it is stored to a client that accepts zstd
(``Content-Encoding: zstd``); for the body of several batches the 8-byte frame prefixes become
zstd frames of their own (:func:`raw_frame`), so the body is a run of zstd frames whose output
is the usual frames body.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from batchstash.client import CorruptStoreError, InvalidRequestError, PayloadError, wire
from batchstash.client.encoding import ZSTD_MAGIC, decompress_into, zstd_available

from .backend import Sendable

__all__ = [
    "AUTO_MIN_RATIO",
    "CODECS",
    "Compressed",
    "GroupCodecs",
    "check_codec",
    "choose_codecs",
    "compress_parts",
    "decompress_object",
    "is_compressed",
    "raw_frame",
]

CODECS = ("none", "zstd", "auto")
AUTO_MIN_RATIO = 1.2
"""``auto`` compresses a group whose sample shrinks to 1 / 1.2 of its size or less."""
DEFAULT_LEVEL = 3

GroupCodecs = Mapping[str, str]
"""Each attribute group's codec for new objects, by group name: ``"none"``, ``"zstd-<level>"``."""


def check_codec(compression: str, level: int) -> None:
    """Refuse an unknown codec, a level zstd does not have, or zstd without ``zstandard``.

    Raises:
        InvalidRequestError: any of those.
    """
    if compression not in CODECS:
        raise InvalidRequestError(
            f"compression must be one of {', '.join(CODECS)}, not {compression!r}"
        )
    if not -7 <= level <= 22:
        raise InvalidRequestError(f"compression_level must be in -7 .. 22, not {level}")
    if compression != "none" and not zstd_available():
        raise InvalidRequestError(
            f"compression={compression} needs the zstandard package: pip install batchstash[zstd]"
        )


def _zstd() -> Any:
    import zstandard

    return zstandard


def compress_parts(parts: Iterable[Any], level: int) -> list[bytes | memoryview]:
    """One zstd frame of the concatenated ``parts`` (a payload's header and tensors), sized."""
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(v.nbytes for v in views)
    zstd = _zstd().ZstdCompressor(level=level, write_content_size=True)
    compressor = zstd.compressobj(size=total)
    out: list[bytes | memoryview] = [compressor.compress(v) for v in views]
    out.append(compressor.flush())
    return [o for o in out if len(o)]


def codec_name(level: int) -> str:
    """The record's name of zstd at ``level``."""
    return f"zstd-{level}"


def level_of(codec: str) -> int | None:
    """The zstd level a codec name says (``None``: ``none``)."""
    if not codec.startswith("zstd-"):
        return None
    return int(codec.removeprefix("zstd-"))


def choose_codecs(compression: str, level: int, samples: Mapping[str, list[Any]]) -> dict[str, str]:
    """The codec of each group, given the encoded payload parts of a sample batch by group name.

    ``auto`` compresses a group's sample and keeps zstd where the ratio is
    :data:`AUTO_MIN_RATIO` or more (random-looking floats stay raw: zstd would cost CPU on
    both sides for nothing).
    """
    if compression == "none":
        return dict.fromkeys(samples, "none")
    if compression == "zstd":
        return {name: codec_name(level) for name in samples}
    chosen = {}
    for name, parts in samples.items():
        raw = sum(memoryview(p).nbytes for p in parts)
        packed = sum(len(c) for c in compress_parts(parts, level))
        chosen[name] = codec_name(level) if packed and raw / packed >= AUTO_MIN_RATIO else "none"
    return chosen


def is_compressed(buf: Any) -> bool:
    """Whether a stored object (bytes, or a file held open) is a zstd frame."""
    if isinstance(buf, Sendable):
        return os.pread(buf.fileno(), 4, 0) == ZSTD_MAGIC
    view = memoryview(buf).cast("B")
    return view.nbytes >= 4 and view[:4] == ZSTD_MAGIC


def decompress_object(key: str, stored: Any) -> bytearray:
    """The payload a compressed stored object holds.

    Raises:
        CorruptStoreError: not valid zstd (or no size declared), or ``zstandard`` is missing.
    """
    view = stored.view() if isinstance(stored, Sendable) else stored
    try:
        size = int(_zstd().frame_content_size(view))
    except ImportError:
        raise CorruptStoreError(
            f"stored object {key} is zstd-compressed: install zstandard (batchstash[zstd])"
        ) from None
    except Exception as exc:  # zstandard.ZstdError: a damaged frame header
        raise CorruptStoreError(f"stored object {key}: not a valid zstd frame ({exc})") from None
    if size < 0 or size > 1 << 40:
        raise CorruptStoreError(f"stored object {key}: a zstd frame without a valid size")
    out = bytearray(size)
    try:
        decompress_into(view, out)
    except PayloadError as exc:
        raise CorruptStoreError(f"stored object {key}: {exc.message}") from None
    return out


class Compressed:
    """A whole payload as its compressed stored object: sent as it is, or decompressed.

    Attributes:
        stored: the stored bytes (a buffer, or the file held open, a :class:`Sendable`).
        size: the payload's size once decompressed.
    """

    __slots__ = ("_decoded", "key", "size", "stored")

    def __init__(self, key: str, stored: Any, size: int, decoded: Any = None) -> None:
        self.key, self.stored, self.size, self._decoded = key, stored, size, decoded

    @property
    def wire_size(self) -> int:
        """The stored (compressed) size."""
        stored = self.stored
        return stored.size if isinstance(stored, Sendable) else memoryview(stored).nbytes

    def decoded(self) -> Any:
        """The payload's bytes (the stored file, if held open, is closed).

        Raises:
            CorruptStoreError: the stored bytes no longer decompress.
        """
        if self._decoded is None:
            self._decoded = decompress_object(self.key, self.stored)
        self.close()
        return self._decoded

    def close(self) -> None:
        """Let go of a held-open stored file."""
        if isinstance(self.stored, Sendable):
            self.stored.close()


def payload_size(header: wire.Header) -> int:
    """A payload's size from its parsed header."""
    return header.data_start + max((e.end for e in header.entries.values()), default=0)


_RAW_BLOCK = 1 << 17  # a zstd block holds at most 128 KiB


def raw_frame(data: bytes) -> bytes:
    """``data`` as one zstd frame of raw (stored, uncompressed) blocks, its size declared.

    Built by hand (RFC 8878, 3.1.1): magic, a single-segment frame header with the content
    size (1 byte under 256, else 8), then blocks of at most 128 KiB, the last one flagged.
    """
    if len(data) < 256:  # a frame prefix: a 1-byte content size
        out = [ZSTD_MAGIC, b"\x20", bytes([len(data)])]
    else:
        out = [ZSTD_MAGIC, b"\xe0", struct.pack("<Q", len(data))]
    blocks = [data[i : i + _RAW_BLOCK] for i in range(0, len(data), _RAW_BLOCK)] or [b""]
    for i, block in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out.append(struct.pack("<I", last | (len(block) << 3))[:3])  # block type 0: raw
        out.append(block)
    return b"".join(out)
