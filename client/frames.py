"""Frames: several batch payloads in one HTTP body (``GET /v1/splits/{split}/payloads``).

For each payload, in request order: its length as an unsigned 64-bit little-endian integer, then
the payload bytes (see :mod:`batchstash.client.wire`). :func:`split_frames` cuts a body apart
without copying. Nothing here does I/O; a malformed body raises :class:`PayloadError`.
"""

from __future__ import annotations

import struct
from typing import Any

from .errors import PayloadError

__all__ = ["FRAMES_MEDIA_TYPE", "frame_prefix", "split_frames"]

FRAMES_MEDIA_TYPE = "application/x-batchstash-frames"
_PREFIX = struct.Struct("<Q")


def frame_prefix(size: int) -> bytes:
    """The 8 bytes that precede a payload of ``size`` bytes in a frames body."""
    return _PREFIX.pack(size)


def split_frames(buf: Any) -> list[memoryview]:
    """Cut a frames body (length-prefixed payloads) into views of each payload (no copy).

    Raises:
        PayloadError: a length runs past the end of the body.
    """
    view = memoryview(buf).cast("B")
    frames, pos = [], 0
    while pos < view.nbytes:
        if pos + 8 > view.nbytes:
            raise PayloadError(f"frame header at byte {pos} is truncated")
        (size,) = _PREFIX.unpack_from(view, pos)
        if size > view.nbytes - pos - 8:
            raise PayloadError(f"frame at byte {pos} claims {size} bytes, past the end")
        frames.append(view[pos + 8 : pos + 8 + size])
        pos += 8 + size
    return frames
