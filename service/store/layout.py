"""The store's keys, and the attribute groups of the composite per-group batch storage.

```
store.json                    StoreInfo: fingerprint, generation, groups, split counts, metadata
plan.json                     Plan: every split's data point id sets (read back, never recomputed)
manifest.json                 Manifest: written last, once a listing confirms every batch object
job.json                      JobRecord: the one prime or clear at a time (lease), its progress
demand.json                   batches trainers wait for, for the prime to do first (a hint)
batches/<generation>/<split>/<batch id>/<group>.safetensors
```

A group is a set of attribute names (the reference's composite stash groups), named by its sorted
attributes joined with ``+``. Every group object is written for every batch, empty when a batch
has none of its attributes, so a batch is stored exactly when all its group objects exist and
verify. A generation is a random name given when a plan is made: a clear removes it, and a
straggler still writing into it can never make its batches part of a later plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from batchstash.client import BatchError, InvalidRequestError

__all__ = [
    "BATCHES",
    "DEMAND",
    "JOB",
    "MANIFEST",
    "PLAN",
    "STORE_INFO",
    "batch_prefix",
    "generation_prefix",
    "group_key",
    "group_name",
    "parse_group_key",
    "resolve_groups",
    "safe_name",
]

STORE_INFO = "store.json"
PLAN = "plan.json"
MANIFEST = "manifest.json"
JOB = "job.json"
DEMAND = "demand.json"
BATCHES = "batches/"
SUFFIX = ".safetensors"

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one key component, else raise ``InvalidRequestError``."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise InvalidRequestError(f"{what} {name!r} must match {_SAFE.pattern} without '..'")
    return name


def generation_prefix(generation: str) -> str:
    """The prefix of every batch object of one generation."""
    return f"{BATCHES}{generation}/"


def batch_prefix(generation: str, split: str, batch_id: int) -> str:
    """The prefix of one batch's group objects."""
    return f"{BATCHES}{generation}/{split}/{int(batch_id)}/"


def group_key(generation: str, split: str, batch_id: int, group: str) -> str:
    """The key of one group object of one batch (``group`` is a :func:`group_name`)."""
    return f"{BATCHES}{generation}/{split}/{int(batch_id)}/{group}{SUFFIX}"


def parse_group_key(key: str) -> tuple[str, str, int, str] | None:
    """``(generation, split, batch id, group)`` of a group key; ``None`` for anything else."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] + "/" != BATCHES or not parts[4].endswith(SUFFIX):
        return None
    try:
        batch_id = int(parts[3])
    except ValueError:
        return None
    return parts[1], parts[2], batch_id, parts[4][: -len(SUFFIX)]


def resolve_groups(
    groups: Iterable[Iterable[str]] | None,
    attributes: Sequence[str],
    dropped: Iterable[str] = (),
) -> list[frozenset[str]]:
    """The attribute groups of a store: ``groups`` plus one group per attribute left out.

    As the reference does, attributes a mapping's field edits ``dropped`` are pruned from the
    groups, and a group left empty is dropped.

    Raises:
        BatchError: groups overlap, are empty or name attributes that are neither mapped nor
            ``dropped`` (a typo).
    """
    given = [frozenset(g) for g in groups or ()]
    mapped, gone = set(attributes), set(dropped)
    result: list[frozenset[str]] = []
    seen: set[str] = set()
    for group in given:
        unknown, twice = sorted(group - mapped - gone), sorted(group & seen)
        if not group or unknown or twice:
            reason = (
                f"{unknown} not mapped (mapped: {sorted(mapped)})"
                if unknown
                else f"{twice} in two groups"
                if twice
                else "an empty group"
            )
            raise BatchError(
                f"groups must be disjoint, non-empty sets of mapped attributes: "
                f"{[sorted(g) for g in given]}: {reason}"
            )
        seen |= group
        if group & mapped:
            result.append(frozenset(group & mapped))
    result.extend(frozenset([a]) for a in attributes if a not in seen)
    return result


def group_name(group: Iterable[str]) -> str:
    """The object stem of an attribute group: its sorted attribute names joined with ``+``."""
    return "+".join(sorted(group))
