"""The composite batch store: one safetensors file per batch and attribute group.

Layout under the store directory::

    plan.json                                   written when a prime starts (config hash, id sets)
    manifest.json                               written last, once every batch is stored
    batches/<split>/<batch id>/<group>.safetensors

A group is a set of attribute names (the reference's composite stash groups) and is named by its
sorted attributes joined with ``+``. Every group file is written for every batch, empty when a
prediction batch has none of its attributes, so a batch is stored exactly when all its group files
exist and verify.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from batchstash.client import BatchError, CorruptStoreError, PayloadError, wire

from .files import VerifiedFiles, atomic_write, file_identity, map_file, read_file, safe_name

__all__ = ["CompositeBatchStore", "expect_metadata", "group_name", "resolve_groups"]


def resolve_groups(
    groups: Iterable[Iterable[str]] | None, attributes: Sequence[str]
) -> list[frozenset[str]]:
    """The attribute groups of a store: ``groups`` plus one group per attribute left out.

    Raises:
        BatchError: groups overlap, are empty or name unmapped attributes.
    """
    result = [frozenset(g) for g in groups or ()]
    seen: set[str] = set()
    for group in result:
        if not group or group & seen or not group <= set(attributes):
            raise BatchError(
                f"groups must be disjoint, non-empty sets of mapped attributes: "
                f"{[sorted(g) for g in result]}"
            )
        seen |= group
    result.extend(frozenset([a]) for a in attributes if a not in seen)
    return result


def group_name(group: Iterable[str]) -> str:
    """The file stem of an attribute group: its sorted attribute names joined with ``+``."""
    return "+".join(sorted(group))


class CompositeBatchStore:
    """Reads and writes the group files of batches under one directory.

    Args:
        path: the store directory.
        groups: the attribute groups; each attribute belongs to exactly one.
    """

    def __init__(
        self, path: Path, groups: Sequence[frozenset[str]], verified_capacity: int = 65536
    ) -> None:
        self.path = Path(path)
        self.verified = VerifiedFiles(verified_capacity)
        self.groups = tuple(frozenset(g) for g in groups)
        self._group_of = {attr: g for g in self.groups for attr in g}
        self._names = {g: group_name(g) for g in self.groups}
        self._root = str(self.batches_path)
        self._safe_splits: set[str] = set()

    @property
    def batches_path(self) -> Path:
        """The directory holding every batch's files."""
        return self.path / "batches"

    def batch_path(self, split: str, batch_id: int) -> Path:
        """The directory of one batch (split name and id validated as path components)."""
        return self.batches_path / safe_name(split, "split") / str(int(batch_id))

    def group_path(self, split: str, batch_id: int, group: frozenset[str]) -> Path:
        """The file of one group of one batch."""
        return Path(self._group_file(split, batch_id, group))

    def _group_file(self, split: str, batch_id: int, group: frozenset[str]) -> str:
        # string joins, not pathlib: this runs for every served batch
        if split not in self._safe_splits:
            self._safe_splits.add(safe_name(split, "split"))
        return f"{self._root}/{split}/{int(batch_id)}/{self._names[group]}.safetensors"

    def groups_for(self, attributes: Iterable[str] | None) -> tuple[frozenset[str], ...]:
        """The groups holding ``attributes`` (all groups for ``None``)."""
        if attributes is None:
            return self.groups
        wanted = {self._group_of[a] for a in attributes}
        return tuple(g for g in self.groups if g in wanted)

    def write(
        self,
        split: str,
        batch_id: int,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
    ) -> None:
        """Write every group file of one batch (atomically, one file at a time)."""
        for group in self.groups:
            subset = {a: t for a, t in tensors.items() if a in group}
            parts = wire.encode_parts(subset, metadata)  # written from the tensors' memory
            atomic_write(self.group_path(split, batch_id, group), parts)

    def _read(
        self,
        split: str,
        batch_id: int,
        group: frozenset[str],
        expect: Mapping[str, str],
        reader: Callable[[str], Any] = read_file,
    ) -> tuple[Any, wire.Header]:
        path = self._group_file(split, batch_id, group)
        buf = reader(path)
        try:
            header = wire.parse_header(buf)
        except PayloadError as exc:
            raise CorruptStoreError(f"{path}: {exc.message}") from None
        for key, value in expect.items():
            if header.metadata.get(key) != value:
                raise CorruptStoreError(
                    f"{path}: metadata {key} is {header.metadata.get(key)!r}, expected {value!r}"
                )
        unexpected = set(header.entries) - group
        if unexpected:
            raise CorruptStoreError(f"{path}: holds tensors outside its group: {unexpected}")
        return buf, header

    def read_verified(
        self,
        split: str,
        batch_id: int,
        attributes: Iterable[str] | None,
        expect: Mapping[str, str],
        mapped: bool = False,
        trust_verified: bool = False,
    ) -> list[tuple[Any, wire.Header]]:
        """Read and fully verify the group files holding ``attributes``.

        Args:
            split: the batch's split.
            batch_id: the batch id.
            attributes: the attributes wanted (all when ``None``).
            expect: metadata every file must carry (split, batch id, fingerprint...).
            mapped: map the files read-only (for serving) instead of reading them into
                writable buffers (for decoding in place).
            trust_verified: skip the checksums of files that verified before and have not
                changed since (:attr:`verified`); headers and metadata are still checked.

        Raises:
            FileNotFoundError: a group file is missing.
            CorruptStoreError: a file is truncated, malformed, mislabelled or fails a checksum.
        """
        sources = []
        for group in self.groups_for(attributes):
            path = self._group_file(split, batch_id, group)
            identity = file_identity(path)  # before reading: a change after it is seen next time
            buf, header = self._read(
                split, batch_id, group, expect, map_file if mapped else read_file
            )
            if not (trust_verified and self.verified.is_verified(path, identity)):
                try:
                    wire.verify(buf, header)
                except PayloadError as exc:
                    raise CorruptStoreError(f"{path}: {exc.message}") from None
                self.verified.add(path, identity)
            sources.append((buf, header))
        return sources

    def is_stored(self, split: str, batch_id: int, expect: Mapping[str, str]) -> bool:
        """Whether every group file of the batch exists and verifies."""
        try:
            self.read_verified(split, batch_id, None, expect)
        except (FileNotFoundError, CorruptStoreError):
            return False
        return True

    def exists(self, split: str, batch_id: int) -> bool:
        """Whether every group file of the batch exists (cheap: no read)."""
        return all(self.group_path(split, batch_id, g).is_file() for g in self.groups)

    def size_bytes(self) -> int:
        """The bytes used by stored batch files."""
        if not self.batches_path.exists():
            return 0
        return sum(p.stat().st_size for p in self.batches_path.rglob("*.safetensors"))

    def clear(self) -> None:
        """Remove every stored batch."""
        self.verified.clear()
        shutil.rmtree(self.batches_path, ignore_errors=True)


def expect_metadata(
    split: str, batch_id: int, fingerprint: str, ids: Sequence[Any]
) -> dict[str, str]:
    """The metadata every group file of a batch carries (and is checked against on read)."""
    return {
        wire.KEY_SPLIT: split,
        wire.KEY_BATCH_ID: str(int(batch_id)),
        wire.KEY_FINGERPRINT: fingerprint,
        wire.KEY_DATA_POINT_IDS: json.dumps(list(ids), separators=(",", ":")),
    }
