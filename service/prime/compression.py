"""Which codec each attribute group's new objects get: the prime's ``compression`` setting.

``none`` and ``zstd`` need no look at the data; ``auto`` encodes the plan's first batch in this
process and compresses each group's object once (:func:`~..store.codec.choose_codecs`). The
choice is recorded in ``store.json`` (``compression``) and kept by later primes with the same
setting and level, so every worker and every resume writes a group the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from batchstash.client import wire

from ..dataset.idset import DataPointIDSet
from ..encode import Encoder
from ..store import layout
from ..store.backend import StoreBackend
from ..store.codec import check_codec, choose_codecs
from ..store.records import StoreInfo, write_record
from ..store.writer import identity_metadata

__all__ = ["group_codecs"]

logger = logging.getLogger(__name__)


def group_codecs(
    backend: StoreBackend,
    encoder: Encoder,
    info: StoreInfo,
    id_sets: Sequence[DataPointIDSet],
    compression: str,
    level: int,
) -> tuple[StoreInfo, dict[str, str]]:
    """The codec of each group (by group name), recorded in the store's description.

    Returns:
        The description as now stored, and the codecs.

    Raises:
        InvalidRequestError: an unknown setting, or zstd without ``zstandard``.
    """
    check_codec(compression, level)
    names = {layout.group_name(g): g for g in encoder.groups}
    known = info.compression or {}
    codecs = known.get("groups")
    same = (known.get("setting"), known.get("level")) == (compression, level)
    if not (same and isinstance(codecs, dict) and set(codecs) == set(names)):
        samples: dict[str, list[Any]] = {name: [] for name in names}
        if compression == "auto" and id_sets:
            first = id_sets[0]
            tensors = encoder.encode(first).attributes
            meta = identity_metadata(
                first.split_name, first.batch_id, info.fingerprint, first.data_point_ids
            )
            for name, group in names.items():
                subset = {a: t for a, t in tensors.items() if a in group}
                samples[name] = wire.encode_parts(subset, meta)
        codecs = choose_codecs(compression, level, samples)
        if compression == "auto":
            logger.info(
                "compression auto: %s",
                ", ".join(f"{name} {codec}" for name, codec in sorted(codecs.items())),
                extra={"codecs": codecs},
            )
    if compression != "none" and len(names) > 1:
        logger.warning(
            "compression=%s with %d attribute groups: a batch read whole is composed from "
            "several objects and sent decompressed; one group (groups=[{...all attributes}]) "
            "sends the stored bytes as they are",
            compression,
            len(names),
        )
    record = {"setting": compression, "level": level, "groups": dict(codecs)}
    if info.compression != record:
        info = dataclasses.replace(info, compression=record)
        write_record(backend, info)
    return info, dict(codecs)
