"""The writer side of the store: batch objects of one generation, and the checks a resume makes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from batchstash.client import CorruptStoreError, PayloadError, wire

from . import layout
from .backend import NoSuchKey, StoreBackend
from .codec import compress_parts, decompress_object, is_compressed, level_of

__all__ = ["BatchWriter", "check_object", "identity_metadata"]


def identity_metadata(
    split: str, batch_id: int, fingerprint: str, ids: Sequence[Any]
) -> dict[str, str]:
    """The identity every group object of a batch carries (covered by its identity checksum)."""
    return {
        wire.KEY_SPLIT: split,
        wire.KEY_BATCH_ID: str(int(batch_id)),
        wire.KEY_FINGERPRINT: fingerprint,
        wire.KEY_DATA_POINT_IDS: json.dumps(list(ids), separators=(",", ":")),
    }


def check_object(
    key: str,
    buf: Any,
    group: frozenset[str],
    expect: Mapping[str, str],
    tensors: bool,
    header: wire.Header | None = None,
) -> wire.Header:
    """Parse one stored group object and check what it claims to be.

    Args:
        key: its key (named in errors).
        buf: its bytes.
        group: the attributes it may hold.
        expect: identity metadata it must carry (a subset of its keys).
        tensors: also verify every tensor's checksum.
        header: its header as parsed and verified before, from these very bytes (the same
            object version): not parsed again; what it claims is still checked.

    Raises:
        CorruptStoreError: malformed, mislabelled, or a checksum fails.
    """
    try:
        if header is None:
            header = wire.parse_header(buf)
            wire.verify_identity(header.metadata)
        if tensors:
            wire.verify(buf, header)
    except PayloadError as exc:
        raise CorruptStoreError(f"stored object {key}: {exc.message}") from None
    for name, value in expect.items():
        if header.metadata.get(name) != value:
            raise CorruptStoreError(
                f"stored object {key}: {name} is {header.metadata.get(name)!r}, expected {value!r}"
            )
    if not set(header.entries) <= group:
        raise CorruptStoreError(f"stored object {key}: holds tensors outside its group")
    return header


class BatchWriter:
    """Writes the group objects of batches into one generation of a store.

    Args:
        backend: the store.
        groups: the attribute groups.
        fingerprint: the store's fingerprint (from its plan: never recomputed by a worker).
        generation: the plan's generation.
        codecs: each group's codec by group name, ``"none"`` or ``"zstd-<level>"`` (see
            :mod:`.codec`; a group not named: ``"none"``).
    """

    def __init__(
        self,
        backend: StoreBackend,
        groups: Sequence[frozenset[str]],
        fingerprint: str,
        generation: str,
        codecs: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.groups = tuple(groups)
        self.fingerprint = fingerprint
        self.generation = generation
        self._names = {g: layout.group_name(g) for g in self.groups}
        codecs = codecs or {}
        self._levels = {g: level_of(codecs.get(name, "none")) for g, name in self._names.items()}

    def key(self, split: str, batch_id: int, group: frozenset[str]) -> str:
        """The key of one group object."""
        return layout.group_key(self.generation, split, batch_id, self._names[group])

    def expect(self, split: str, batch_id: int, ids: Sequence[Any]) -> dict[str, str]:
        """The identity of one batch's objects."""
        return identity_metadata(split, batch_id, self.fingerprint, ids)

    def write(
        self, split: str, batch_id: int, ids: Sequence[Any], tensors: Mapping[str, torch.Tensor]
    ) -> int:
        """Write every group object of one batch (each all or nothing); returns the bytes.

        Objects are written unsynced (:meth:`StoreBackend.write_unsynced`): the prime makes
        them durable with one :meth:`StoreBackend.sync` before its manifest claims them.
        """
        layout.safe_name(split, "split")
        metadata = self.expect(split, batch_id, ids)
        written = 0
        for group in self.groups:
            subset = {a: t for a, t in tensors.items() if a in group}
            parts = wire.encode_parts(subset, metadata)  # written from the tensors' memory
            level = self._levels[group]
            if level is not None:
                parts = compress_parts(parts, level)
            self.backend.write_unsynced(self.key(split, batch_id, group), parts)
            written += sum(memoryview(p).nbytes for p in parts)
        return written

    def stored_bytes(self, split: str, batch_id: int, ids: Sequence[Any]) -> int | None:
        """The bytes of a batch whose every group object exists and verifies, else ``None``."""
        expect, size = self.expect(split, batch_id, ids), 0
        for group in self.groups:
            key = self.key(split, batch_id, group)
            try:
                buf = self.backend.read(key)
                payload = decompress_object(key, buf) if is_compressed(buf) else buf
                check_object(key, payload, group, expect, tensors=True)
            except (NoSuchKey, CorruptStoreError):
                return None
            size += len(buf)
        return size
