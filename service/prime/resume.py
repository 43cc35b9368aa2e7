"""What a resumed prime finds stored: from a listing checked against the ledger, or by reading.

By default the generation's objects are listed once (sizes and versions) and compared with the
ledger (:mod:`~batchstash.service.store.ledger`): a batch whose every group object is listed as
recorded is stored, with no read. A batch with an object listed but not as recorded (written
after the ledger's last part, or changed since) is read and verified as before, and recorded
again if it passes; a batch with an object missing is encoded. ``verify`` reads and verifies
every stored object (the full check, for a store whose disk is suspect).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..dataset.idset import DataPointIDSet
from ..store.layout import generation_prefix
from ..store.ledger import Ledger
from ..store.writer import BatchWriter

__all__ = ["Resume", "resume"]

logger = logging.getLogger(__name__)


@dataclass
class Resume:
    """What is stored: the id sets still to encode and the bytes of those stored.

    Attributes:
        ledger: the generation's ledger (objects verified now are pending in it).
        todo: the id sets to encode.
        stored_bytes: the bytes of the batches stored.
        listed: batches taken as stored from the listing alone.
        read: batches read and verified.
    """

    ledger: Ledger
    todo: list[DataPointIDSet] = field(default_factory=list)
    stored_bytes: int = 0
    listed: int = 0
    read: int = 0


def resume(writer: BatchWriter, id_sets: Sequence[DataPointIDSet], verify: bool = False) -> Resume:
    """Which planned batches are stored whole (see the module).

    Args:
        writer: the generation's writer (keys, groups, identity checks).
        id_sets: the plan.
        verify: read and verify every stored object instead of trusting the ledger.
    """
    backend = writer.backend
    ledger = Ledger.read(backend, writer.generation)
    listing = {
        key: (size, version)
        for key, size, version in backend.list_versions(generation_prefix(writer.generation))
    }
    found = Resume(ledger=ledger)
    for id_set in id_sets:
        split, batch_id = id_set.split_name, id_set.batch_id
        keys = [writer.key(split, batch_id, group) for group in writer.groups]
        listed = [listing.get(key) for key in keys]
        if not verify and all(
            ledger.trusts(k, entry) for k, entry in zip(keys, listed, strict=True)
        ):
            found.stored_bytes += sum(entry[0] for entry in listed if entry is not None)
            found.listed += 1
            continue
        if any(entry is None for entry in listed):
            found.todo.append(id_set)
            continue
        size = writer.stored_bytes(split, batch_id, id_set.data_point_ids)
        found.read += 1
        if size is None:
            found.todo.append(id_set)
        else:
            found.stored_bytes += size
            ledger.add(keys)  # verified now: recorded with the prime's next part
    if found.read:
        logger.info(
            "resume: %d batches stored as the ledger records them, %d read and verified%s",
            found.listed,
            found.read,
            " (verify)" if verify else "",
            extra={"listed": found.listed, "verified": found.read},
        )
    return found
