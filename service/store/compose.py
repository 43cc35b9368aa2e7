"""A batch from its verified stored objects: wire payload chunks, or decoded tensors.

Served, a batch is its payload without a tensor decoded: when the wanted attributes are exactly
one stored group object, that object is the payload, byte for byte; otherwise the tensors of
the objects are joined with :func:`wire.compose`, their identity and checksums taken from the
objects themselves. Loaded (``BatchStash.load``), its wanted tensors are decoded.
"""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any

from batchstash.client import CorruptStoreError, PayloadError, wire

from .backend import Sendable
from .codec import Compressed

if TYPE_CHECKING:
    import torch

__all__ = ["IDENTITY", "Source", "compose_payload", "decode_sources", "source_bytes"]

Source = tuple[Any, wire.Header]
"""A verified stored group object: its bytes and parsed header."""

IDENTITY = (*wire.IDENTITY_KEYS, wire.KEY_IDENTITY)
"""The metadata keys a joined payload takes from its objects: who the batch is."""


def compose_payload(
    sources: list[Source], wanted: set[str] | None, compressed: bool = False
) -> list[Any]:
    """One batch's payload chunks from its verified ``sources``.

    Args:
        sources: the batch's verified group objects (see ``StoreReader.read_sources``).
        wanted: the attributes wanted (``None``: every stored one).
        compressed: a whole object stored compressed stays its
            :class:`~batchstash.service.store.codec.Compressed`; without, it is decompressed.
    """
    present = {n for _, h in sources for n in h.entries}
    names = present if wanted is None else wanted & present
    if len(sources) == 1 and names == set(sources[0][1].entries):
        whole = sources[0][0]
        if isinstance(whole, Compressed) and not compressed:
            return [whole.decoded()]
        return [whole]
    sources = [(source_bytes(buf), header) for buf, header in sources]
    meta = sources[0][1].metadata
    identity = {k: meta[k] for k in IDENTITY if k in meta}
    return wire.compose(sources, names, identity)


def source_bytes(source: Any) -> Any:
    """A source's bytes (a held-open file is read or mapped, then closed)."""
    if isinstance(source, Compressed):
        return source.decoded()
    if isinstance(source, Sendable):
        with closing(source):
            return source.view()
    return source


def decode_sources(sources: list[Source], wanted: set[str] | None) -> wire.Payload:
    """The ``wanted`` tensors (``None``: all) of a batch's verified ``sources``, and its identity.

    Raises:
        CorruptStoreError: an object fails to decode (they are verified already: defensive).
    """
    tensors: dict[str, torch.Tensor] = {}
    for buf, header in sources:
        names = [n for n in header.entries if wanted is None or n in wanted]
        try:
            tensors.update(wire.decode(buf, names, verify=False).tensors)
        except PayloadError as exc:  # verified by read_sources; defensive only
            raise CorruptStoreError(exc.message) from None
    meta = sources[0][1].metadata if sources else {}
    identity = {k: v for k, v in meta.items() if k in wire.IDENTITY_KEYS}
    return wire.Payload(tensors, identity)
