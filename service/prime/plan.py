"""The store's plan on the writer side: made once, read back after, repaired when damaged; clear.

The functions here run under the store's job lease (:mod:`batchstash.service.store.lease`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any

from batchstash.client import CorruptStoreError, StaleStoreError

from ..dataset.idset import DataPointIDSet
from ..encode import Encoder
from ..store import layout
from ..store.backend import StoreBackend
from ..store.lease import JobLease, JobState
from ..store.ledger import LEDGER
from ..store.records import Manifest, Plan, StoreInfo, read_record, write_record

__all__ = ["clear_store", "describe_store", "ensure_plan", "split_totals"]

logger = logging.getLogger(__name__)


def _readable(backend: StoreBackend, cls: Any) -> object:
    try:
        return read_record(backend, cls)
    except CorruptStoreError as exc:
        logger.warning("%s: rewriting it from the dataset", exc.message)
        return None


def _generations(backend: StoreBackend) -> set[str]:
    found = set()
    for key in backend.list(layout.BATCHES):
        parsed = layout.parse_group_key(key)
        if parsed is not None:
            found.add(parsed[0])
    return found


def split_totals(id_sets: Iterable[DataPointIDSet]) -> dict[str, dict[str, int]]:
    """Per split, the number of ``batches`` and ``data_points`` of a plan."""
    splits: dict[str, dict[str, int]] = {}
    for id_set in id_sets:
        entry = splits.setdefault(id_set.split_name, {"batches": 0, "data_points": 0})
        entry["batches"] += 1
        entry["data_points"] += len(id_set.data_point_ids)
    return splits


def ensure_plan(
    backend: StoreBackend,
    encoder: Encoder,
    decoded_attributes: Iterable[str] | None,
) -> tuple[list[DataPointIDSet], StoreInfo]:
    """The store's plan and description, made now if absent and rewritten if damaged.

    A stored plan of this fingerprint is read back, never recomputed (a container may list ids
    in another order in another process). A damaged plan is recomputed in the generation the
    other records (or the stored batch objects) name, so valid batches are kept.

    Raises:
        StaleStoreError: the store holds another configuration's batches.
    """
    plan = _readable(backend, Plan)
    info = _readable(backend, StoreInfo)
    manifest = _readable(backend, Manifest)
    if manifest is None:
        backend.delete(layout.MANIFEST)  # a damaged one; rewritten once every batch is stored
    fingerprint = encoder.fingerprint
    for record in (plan, info, manifest):
        if isinstance(record, Plan | StoreInfo | Manifest) and record.fingerprint != fingerprint:
            raise StaleStoreError(
                f"the store was encoded with configuration {record.fingerprint[:12]}, this "
                f"dataset is {fingerprint[:12]}: clear it and prime again"
            )
    if isinstance(plan, Plan):
        id_sets = [DataPointIDSet.from_dict(d) for d in plan.id_sets]
        generation = plan.generation
    else:
        id_sets = encoder.plan()
        named = [r.generation for r in (info, manifest) if isinstance(r, StoreInfo | Manifest)]
        on_disk = _generations(backend) if not named else set()
        if named:
            generation = named[0]
        elif len(on_disk) == 1:
            generation = on_disk.pop()
        else:
            generation = secrets.token_hex(8)
        write_record(backend, Plan(fingerprint, generation, [s.to_dict() for s in id_sets]))
    decoded = None if decoded_attributes is None else sorted(decoded_attributes)
    wanted = StoreInfo(
        fingerprint,
        generation,
        [layout.group_name(g) for g in encoder.groups],
        split_totals(id_sets),
        encoder.batch_metadata.to_dict(),
        decoded,
        info.compression if isinstance(info, StoreInfo) else None,  # the prime decides it
    )
    if info != wanted:
        write_record(backend, wanted)
    return id_sets, wanted


def describe_store(
    backend: StoreBackend, encoder: Encoder, decoded_attributes: Iterable[str] | None
) -> None:
    """Write the plan and the store's description if the store has none (nothing encoded).

    A server with the dataset serves metadata and split counts before any prime.

    Raises:
        ConflictError: the store has no description and another job holds its lease.
    """
    if backend.version(layout.STORE_INFO) is not None:
        return
    lease = JobLease.acquire(backend, "plan")
    try:
        ensure_plan(backend, encoder, decoded_attributes)
    finally:
        lease.finish(JobState.DONE)


def clear_store(backend: StoreBackend) -> None:
    """Remove every record and batch object, under the job lease.

    The manifest goes first, so the store stops claiming anything before a file is removed.

    Raises:
        ConflictError: a prime (or another clear) holds the lease.
    """
    lease = JobLease.acquire(backend, "clear")
    try:
        backend.delete(layout.MANIFEST)
        backend.delete(layout.STORE_INFO)
        backend.delete(layout.PLAN)
        backend.delete(layout.DEMAND)
        backend.delete_prefix(layout.BATCHES)
        backend.delete_prefix(LEDGER)
        backend.sweep_temporaries()
    except BaseException as exc:
        lease.finish(JobState.FAILED, error={"code": "store_error", "message": str(exc)})
        raise
    lease.finish(JobState.DONE)
