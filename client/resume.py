"""An iterator's resume state: what :meth:`BatchIterator.state_dict` saves, and its checks.

A state is a JSON-able dict naming the epoch's plan by its inputs and hash, and how far one rank
read it. Resuming rebuilds the plan from the inputs and the split's batch ids, and refuses a
state whose plan no longer comes out the same: a resumed epoch reads every batch exactly once
or fails, never silently another order.

Keys: ``version``, ``plan_hash``, ``fingerprint``, ``split``, ``seed``, ``epoch``, ``shuffle``,
``pad_ranks``, ``world_size``, ``rank``, ``position`` (batches the rank has yielded),
``per_rank`` (batches of each rank in the plan), ``resumed_from`` (earlier ``[world_size,
position]`` segments of the epoch), ``batches`` (batches in the split) and, with a
``shuffle_window``, ``shuffle_window`` and ``bucket_window`` (the store's bucketing window,
``0``: none).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import PlanError
from .plan import PLAN_VERSION, EpochPlan
from .rebatch import RebatchPlan, make_plan

__all__ = ["restore", "state_of"]

logger = logging.getLogger(__name__)


def state_of(
    plan: EpochPlan | RebatchPlan, rank: int, position: int, batches: int
) -> dict[str, Any]:
    """The state of ``rank`` having yielded ``position`` batches of ``plan``.

    ``batches``: the number of batches in the split.
    """
    window = (
        {"shuffle_window": plan.window, "bucket_window": plan.bands}
        if isinstance(plan, RebatchPlan)
        else {}
    )
    return {
        **window,
        "version": PLAN_VERSION,
        "plan_hash": plan.hash,
        "fingerprint": plan.fingerprint,
        "split": plan.split,
        "seed": plan.seed,
        "epoch": plan.epoch,
        "shuffle": plan.shuffle,
        "pad_ranks": plan.pad,
        "world_size": plan.world_size,
        "rank": rank,
        "position": position,
        "per_rank": plan.per_rank,
        "resumed_from": [list(s) for s in plan.resumed_from],
        "batches": batches,
    }


def restore(
    state: Mapping[str, Any], current: EpochPlan | RebatchPlan, batch_ids: Sequence[int]
) -> tuple[EpochPlan | RebatchPlan, int, int]:
    """The plan, position and bucket window to go on with from ``state``.

    ``current``: the plan of the iterator that resumes (its split, store and world size);
    ``batch_ids``: the split's. At the saved world size the saved plan goes on at the saved
    position; at another, the batches no rank read are dealt to the new ranks from position 0.

    Raises:
        PlanError: the state is malformed, of another split or plan version, the store's
            fingerprint changed since it was saved, or the split's batch ids no longer give the
            saved plan.
    """
    try:
        version, split = int(state["version"]), str(state["split"])
        fingerprint, saved_hash = str(state["fingerprint"]), str(state["plan_hash"])
        saved_size, position = int(state["world_size"]), int(state["position"])
        segments = [(int(w), int(p)) for w, p in state.get("resumed_from", [])]
        seed, epoch, shuffle = int(state["seed"]), int(state["epoch"]), bool(state["shuffle"])
        pad = bool(state.get("pad_ranks", True))
        window = int(state.get("shuffle_window", 0))
        bands = int(state.get("bucket_window", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"not a batch iterator state: {exc!r}") from None
    if version != PLAN_VERSION:
        raise PlanError(f"state has plan version {version}; this client plans {PLAN_VERSION}")
    if split != current.split:
        raise PlanError(f"state is for split {split!r}, not {current.split!r}")
    if fingerprint != current.fingerprint:
        raise PlanError(
            f"the store changed since the state was saved (fingerprint {fingerprint} -> "
            f"{current.fingerprint}): its batches differ, so the epoch cannot be resumed; "
            "start the epoch over without the state"
        )
    if window < 0 or bands < 0:
        raise PlanError(f"not a batch iterator state: shuffle_window {window}, {bands}")
    saved = make_plan(
        fingerprint,
        split,
        batch_ids,
        seed=seed,
        epoch=epoch,
        world_size=saved_size,
        shuffle=shuffle,
        resumed_from=segments,
        pad=pad,
        window=window,
        bands=bands,
    )
    if saved.hash != saved_hash:
        raise PlanError(
            f"the batch ids of split {split!r} no longer give the saved plan "
            f"({saved_hash} != {saved.hash}); start the epoch over"
        )
    saved.check_position(position)
    if saved_size == current.world_size:
        return saved, position, bands
    plan = saved.replan(position, current.world_size)
    logger.info(
        "re-planned %s epoch %d from %d to %d ranks: %d batches left",
        split,
        epoch,
        saved_size,
        plan.world_size,
        len(plan.order),
    )
    return plan, 0, bands
