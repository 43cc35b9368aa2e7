"""The store's plan and manifest: which configuration built it and which batches it holds."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchstash.client import CorruptStoreError

from .files import atomic_write_json

__all__ = [
    "MANIFEST_FILE",
    "PLAN_FILE",
    "RecordHashes",
    "StoreRecord",
    "read_config_hash",
    "read_record",
    "write_record",
]

PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class StoreRecord:
    """The content of ``plan.json`` (at prime start) and ``manifest.json`` (written last).

    Attributes:
        config_hash: the hash of the configuration that encodes the batches.
        groups: the attribute group names.
        splits: per split, the number of batches and data points.
        id_sets: the data point id sets of every batch (``DataPointIDSet.to_dict()`` form).
    """

    config_hash: str
    groups: list[str]
    splits: dict[str, dict[str, int]]
    id_sets: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "format": FORMAT,
            "config_hash": self.config_hash,
            "groups": self.groups,
            "splits": self.splits,
            "id_sets": self.id_sets,
        }


def write_record(path: Path, record: StoreRecord) -> None:
    """Atomically write a plan or manifest."""
    atomic_write_json(path, record.to_dict())


def read_record(path: Path) -> StoreRecord | None:
    """Read a plan or manifest; ``None`` when it does not exist.

    Raises:
        CorruptStoreError: the file exists but is not a valid record.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"{path}: not valid JSON ({exc})") from None
    try:
        if doc["format"] != FORMAT:
            raise CorruptStoreError(f"{path}: unsupported format {doc['format']!r}")
        return StoreRecord(
            str(doc["config_hash"]), list(doc["groups"]), dict(doc["splits"]), list(doc["id_sets"])
        )
    except (KeyError, TypeError) as exc:
        raise CorruptStoreError(f"{path}: missing or malformed field {exc}") from None


_HEAD = re.compile(rb'\A\{\s*"config_hash":\s*"([0-9a-f]{1,64})",\s*"format":\s*(\d+),')


def read_config_hash(path: Path) -> str | None:
    """The config hash of a plan or manifest without parsing its id sets; ``None`` if absent.

    :func:`write_record` sorts keys, so ``config_hash`` and ``format`` open the file: reading
    its first KiB is enough, where a full parse of a large store's record would allocate
    hundreds of bytes a data point. Anything else is left to :func:`read_record`.

    Raises:
        CorruptStoreError: the file exists but is not a valid record.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(1024)
    except FileNotFoundError:
        return None
    match = _HEAD.match(head)
    if match is not None and int(match.group(2)) == FORMAT:
        return match.group(1).decode("ascii")
    record = read_record(path)
    return None if record is None else record.config_hash


class RecordHashes:
    """The config hashes of a store's plan and manifest, re-read only when a file changes.

    Every served batch checks freshness, so this costs one ``stat`` a file. Only the hash is
    kept: the records hold every id set, and keeping them parsed would make a server's memory
    grow with its store.

    Args:
        path: the store directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, tuple[tuple[int, int, int], str | None]] = {}

    def get(self, name: str) -> str | None:
        """The config hash in ``name`` (``PLAN_FILE`` or ``MANIFEST_FILE``); ``None`` if absent."""
        path = self.path / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._cache.pop(name, None)
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, read_config_hash(path))
            self._cache[name] = cached
        return cached[1]
