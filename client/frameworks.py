"""What the client needs to know of the training frameworks around it (HF accelerate)."""

from __future__ import annotations

import sys

__all__ = ["accelerate_wraps"]


def accelerate_wraps(dataset: object) -> bool:
    """Whether HF accelerate is iterating a DataLoader it prepared over ``dataset``.

    accelerate's ``GradientState`` names the prepared DataLoader being iterated
    (``active_dataloader``); a prepared loader holds the dataset as ``dataset``, or wraps it
    once more (``IterableDatasetShard.dataset``, ``base_dataloader``).
    """
    state_module = sys.modules.get("accelerate.state")
    if state_module is None:
        return False
    try:
        active = state_module.GradientState().active_dataloader
    except Exception:  # an accelerate without this attribute: nothing to tell
        return False
    seen, todo = 0, [active]
    while todo and seen < 8:
        obj, seen = todo.pop(), seen + 1
        if obj is dataset:
            return True
        if obj is not None and not isinstance(obj, type(dataset)):
            todo += [getattr(obj, name, None) for name in ("dataset", "base_dataloader")]
    return False
