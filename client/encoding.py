"""Compressed response bodies (``Content-Encoding: zstd``): what the client accepts and decodes.

A server whose store holds zstd-compressed batch objects sends them as they are stored, with
``Content-Encoding: zstd``, to a client that sends ``Accept-Encoding: zstd``; every other client
gets the decompressed bytes. The body is then one or more zstd frames whose concatenated output
is the usual body (a payload, or a frames body); ``X-Batchstash-Decoded-Length`` gives its
length, so it is decompressed straight into one receive buffer. The checksums are those of the
decompressed tensors, verified as for any body.

zstd comes from the optional ``zstandard`` package (the ``zstd`` extra): without it the client
asks for ``identity`` and the server decompresses. Nothing here does network I/O; bad bytes
raise :class:`PayloadError` and nothing else.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import PayloadError

__all__ = [
    "ZSTD_MAGIC",
    "accept_encoding",
    "content_size",
    "decode_length",
    "decompress_into",
    "zstd_available",
]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""The first four bytes of a zstd frame (no payload starts so: its header length would be
over 4 GiB)."""

_module: ModuleType | None = None
_missing = False


def _zstandard() -> ModuleType | None:
    global _module, _missing
    if _module is None and not _missing:
        try:
            _module = importlib.import_module("zstandard")
        except ImportError:
            _missing = True
    return _module


def zstd_available() -> bool:
    """Whether ``zstandard`` is importable (the ``zstd`` extra is installed)."""
    return _zstandard() is not None


def accept_encoding() -> str:
    """The ``Accept-Encoding`` the client sends: ``zstd`` if it can decode it, else ``identity``."""
    return "zstd" if zstd_available() else "identity"


def decode_length(value: str | None) -> int | None:
    """The ``X-Batchstash-Decoded-Length`` header as a length (``None``: absent or malformed)."""
    return int(value) if value is not None and value.isdigit() else None


def content_size(src: Any) -> int | None:
    """The decompressed size a zstd frame's header declares (``None``: not declared).

    Raises:
        PayloadError: not a zstd frame, or ``zstandard`` is not installed.
    """
    zstd = _require()
    try:
        size = int(zstd.frame_content_size(src))
    except zstd.ZstdError as exc:
        raise PayloadError(f"not a zstd frame: {exc}") from None
    return None if size < 0 else size


def decompress_into(src: Any, out: Any) -> None:
    """Decompress the zstd frames in ``src``, one after the other, into ``out``, exactly filled.

    Raises:
        PayloadError: ``src`` is not valid zstd, or decompresses to more or fewer bytes than
            ``out`` holds.
    """
    zstd = _require()
    view = memoryview(out).cast("B")
    got = 0
    try:
        reader = zstd.ZstdDecompressor().stream_reader(
            memoryview(src).cast("B"), read_size=1 << 20, read_across_frames=True
        )
        with reader:
            while got < view.nbytes:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
            extra = reader.read(1) if got == view.nbytes else b""
    except zstd.ZstdError as exc:
        raise PayloadError(f"the zstd body is corrupt: {exc}") from None
    if got != view.nbytes or extra:
        more = "more" if extra else f"{got}"
        raise PayloadError(f"the zstd body decompresses to {more} bytes, not {view.nbytes}")


def _require() -> Any:
    zstd = _zstandard()
    if zstd is None:
        raise PayloadError("a zstd body needs the zstandard package: pip install batchstash[zstd]")
    return zstd
