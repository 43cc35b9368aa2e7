"""What a store's records say: freshness, the current manifest, split counts and attributes.

Pure functions of the records (``store.json``, ``manifest.json``, ``job.json``): the store
reader asks them, reading nothing itself, so each answer follows from the records alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from batchstash.client import InvalidRequestError, NotFoundError, StaleStoreError

from .lease import JobRecord
from .records import Manifest, StoreInfo

__all__ = [
    "attribute_groups",
    "batch_count",
    "check_fingerprint",
    "check_known",
    "count_splits",
    "is_current",
    "is_stale",
    "job_progress",
]


def check_fingerprint(info: StoreInfo, expect: str | None) -> StoreInfo:
    """``info``, if the store was encoded with the configuration ``expect`` (``None``: any).

    Raises:
        StaleStoreError: the store was encoded with another configuration.
    """
    if expect is not None and info.fingerprint != expect:
        raise StaleStoreError(
            f"the store was encoded with configuration {info.fingerprint[:12]}, this "
            f"server's dataset is {expect[:12]}: clear it and prime again"
        )
    return info


def is_stale(fingerprint: str | None, expect: str | None) -> bool:
    """Whether a store of ``fingerprint`` holds another configuration's batches than ``expect``."""
    return None not in (fingerprint, expect) and fingerprint != expect


def is_current(manifest: Manifest, info: StoreInfo) -> bool:
    """Whether ``manifest`` belongs to the store's current plan (fingerprint and generation)."""
    return (manifest.fingerprint, manifest.generation) == (info.fingerprint, info.generation)


def job_progress(info: StoreInfo, job: JobRecord | None) -> dict[str, int]:
    """Per split, the batches a prime of the current plan has stored so far (none: ``{}``)."""
    if job is not None and job.kind == "prime" and job.generation == info.generation:
        return {s: p[0] for s, p in job.progress.items()}
    return {}


def count_splits(info: StoreInfo, stored: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per split: ``batches``, ``data_points`` and ``stored`` (``stored``'s count, else 0)."""
    return {
        s: {
            "batches": c["batches"],
            "data_points": c["data_points"],
            "stored": stored.get(s, 0),
        }
        for s, c in info.splits.items()
    }


def batch_count(info: StoreInfo, split: str) -> int:
    """The number of batches planned for ``split``.

    Raises:
        NotFoundError: the store has no such split.
    """
    try:
        return info.splits[split]["batches"]
    except KeyError:
        raise NotFoundError(f"unknown split {split!r}; splits: {list(info.splits)}") from None


def attribute_groups(info: StoreInfo) -> dict[str, frozenset[str]]:
    """The store's attribute groups: each group object's name and the attributes it holds."""
    return {name: frozenset(name.split("+")) for name in info.groups}


def check_known(wanted: set[str], known: Iterable[str]) -> None:
    """Refuse attribute names that are not ``known``.

    Raises:
        InvalidRequestError: names the unknown attributes and the known ones.
    """
    names = list(known)
    unknown = wanted - set(names)
    if unknown:
        raise InvalidRequestError(f"unknown attributes {sorted(unknown)}; known: {sorted(names)}")
