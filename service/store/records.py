"""The store's records: what built it (info), its id sets (plan), what it holds (manifest).

Records are small JSON objects, each written whole (all or nothing). A record that exists but
cannot be read raises :class:`CorruptStoreError` naming its key (never a server path); a prime
rewrites it from the dataset and keeps the batches that verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import orjson

from batchstash.client import CorruptStoreError

from . import layout
from .backend import NoSuchKey, StoreBackend

__all__ = [
    "FORMAT",
    "Manifest",
    "Plan",
    "StoreInfo",
    "decode_record",
    "encode_record",
    "read_record",
    "write_record",
]

FORMAT = 2

R = TypeVar("R", bound="StoreInfo | Plan | Manifest")


@dataclass(frozen=True)
class StoreInfo:
    """``store.json``: everything a reader needs, without the dataset's code.

    Attributes:
        fingerprint: the hash of the configuration that encodes the batches.
        generation: the plan's generation (the prefix of its batch objects).
        groups: the attribute group names.
        splits: per split, the number of ``batches`` and ``data_points``.
        metadata: the batch metadata (``BatchMetadata.to_dict()``).
        decoded_attributes: the attributes served when a request names none (``None``: all).
        compression: how the last prime wrote the batch objects: ``{"setting", "level",
            "groups": {group name: "none" or "zstd-<level>"}}`` (``None``: uncompressed). Not
            part of the fingerprint: each object says itself whether it is compressed.
    """

    fingerprint: str
    generation: str
    groups: list[str]
    splits: dict[str, dict[str, int]]
    metadata: dict[str, Any]
    decoded_attributes: list[str] | None = None
    compression: dict[str, Any] | None = None


@dataclass(frozen=True)
class Plan:
    """``plan.json``: the id sets of every batch, written once and read back by every process.

    Attributes:
        fingerprint: as in :class:`StoreInfo`.
        generation: as in :class:`StoreInfo`.
        id_sets: ``DataPointIDSet.to_dict()`` of every batch, split by split.
    """

    fingerprint: str
    generation: str
    id_sets: list[dict[str, Any]]


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: written last, once every planned batch object is confirmed stored.

    Attributes:
        fingerprint: as in :class:`StoreInfo`.
        generation: as in :class:`StoreInfo`; a manifest of another generation claims nothing.
        splits: per split, the number of ``batches`` stored.
        bytes: the bytes of every stored batch object.
    """

    fingerprint: str
    generation: str
    splits: dict[str, int]
    bytes: int = 0


KEYS: dict[type, str] = {StoreInfo: layout.STORE_INFO, Plan: layout.PLAN, Manifest: layout.MANIFEST}


def encode_record(record: StoreInfo | Plan | Manifest) -> bytes:
    """A record as key-sorted JSON with its format.

    Written with orjson (a plan of 100,000 ids in a twentieth of the time ``asdict`` and
    :mod:`json` take); a value orjson refuses (an integer beyond 64 bits) goes through
    :mod:`json`, which keeps it exact.
    """
    doc = {"format": FORMAT, **{f.name: getattr(record, f.name) for f in fields(record)}}
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(doc, sort_keys=True).encode()


def decode_record(cls: type[R], key: str, raw: bytes | bytearray) -> R:
    """Parse a record of type ``cls``.

    Raises:
        CorruptStoreError: not valid JSON, another format or missing fields.
    """
    try:  # json, not orjson: orjson reads an integer beyond 64 bits (an id) as a float
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CorruptStoreError(f"store record {key} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise CorruptStoreError(f"store record {key} is not a JSON object")
    if doc.pop("format", None) != FORMAT:
        raise CorruptStoreError(f"store record {key} has another format than {FORMAT}")
    try:
        record = cls(**doc)
    except TypeError:
        raise CorruptStoreError(f"store record {key} has missing or unknown fields") from None
    if not isinstance(record.fingerprint, str) or not isinstance(record.generation, str):
        raise CorruptStoreError(f"store record {key} has a malformed fingerprint or generation")
    return record


def read_record(backend: StoreBackend, cls: type[R]) -> R | None:
    """Read the record of type ``cls``; ``None`` when it does not exist.

    Raises:
        CorruptStoreError: it exists but cannot be read.
    """
    key = KEYS[cls]
    try:
        raw = backend.read(key)
    except NoSuchKey:
        return None
    return decode_record(cls, key, raw)


def write_record(backend: StoreBackend, record: StoreInfo | Plan | Manifest) -> None:
    """Write a record whole."""
    backend.write(KEYS[type(record)], [encode_record(record)])
