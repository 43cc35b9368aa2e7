"""The rows of a window of stored batches, permuted and dealt into new, re-padded batches.

A window's stored batches are read in order and their rows numbered ``0..R-1`` as if
concatenated. The rows are permuted by a Fisher-Yates shuffle driven by
``random.Random(key).random()`` (the one sequence CPython guarantees across versions, as
:func:`~.plan.shuffled` uses), where ``key`` is the window's seed (see
:meth:`~.rebatch.RebatchPlan.window_key`). New batch ``i`` takes the next ``sizes[i]`` rows of
the permutation, where ``sizes`` are the stored batches' sizes from largest to smallest: a
window gives as many batches as it pooled, of the store's batch size (a split's last, smaller
batch stays the smaller one).

**Fields.** Which fields can be re-dealt is read from the store's metadata
(:class:`~.metadata.BatchFieldMetadata`):

- a field encoded one data point at a time (not ``is_agg``) has independent rows;
- an ``is_agg`` field (encoded over its whole batch) has independent rows only when its
  vectorizer says so: ``extra["per_row"]`` true, or a pad value (``extra["pad_value"]`` or
  ``extra["pad_id"]``: a padding vectorizer pads each row on its own);
- a field with a varying dimension (``-1`` in its shape) needs a pad value: a new batch is padded
  with it to its longest row, and trimmed to that. A row's length along such a dimension is where
  its last element that is not the pad value ends (a trailing pad value counts as padding).

Any other field makes re-dealing an error that names it: its rows are not the field's values
for those data points alone, and re-dealing would serve wrong training data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .batch import Batch
from .errors import BatchError
from .metadata import BatchMetadata

if TYPE_CHECKING:
    from .rebatch import RebatchPlan
    from .staging import DeviceStage

__all__ = [
    "DealtWindow",
    "FieldRule",
    "RedealtBatchId",
    "field_rules",
    "permutation",
    "redealt",
]


@dataclass(frozen=True)
class FieldRule:
    """How one attribute's rows are re-dealt.

    Attributes:
        name: the attribute.
        pad: the pad value of its varying dimensions (``None``: its shape is fixed).
    """

    name: str
    pad: float | int | None


def _pad_value(extra: dict[str, Any]) -> float | int | None:
    for key in ("pad_value", "pad_id"):
        value = extra.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def field_rules(metadata: BatchMetadata | None, attributes: Iterable[str]) -> dict[str, FieldRule]:
    """The rule of each of ``attributes``, or an error naming every field that cannot be re-dealt.

    Raises:
        BatchError: no metadata, an attribute it does not describe, an ``is_agg`` field whose
            vectorizer does not declare independent rows, or a varying field without a pad
            value.
    """
    if metadata is None:
        raise BatchError("shuffle_window needs the store's batch metadata to re-deal rows")
    rules, refused = {}, []
    for name in attributes:
        fld = metadata.fields_by_attribute.get(name)
        if fld is None:
            refused.append(f"{name!r} (not in the store's metadata)")
            continue
        extra = fld.vectorizer.extra
        pad = _pad_value(extra)
        if fld.field.is_agg and not (extra.get("per_row") is True or pad is not None):
            refused.append(
                f"{name!r} (is_agg: vectorizer {fld.vectorizer.feature_id!r} encodes a batch "
                "at once and does not declare its rows independent, extra['per_row'])"
            )
        elif -1 in fld.shape and pad is None:
            refused.append(f"{name!r} (its shape {fld.shape} varies and it declares no pad value)")
        else:
            rules[name] = FieldRule(name, pad if -1 in fld.shape else None)
    if refused:
        raise BatchError(
            "shuffle_window cannot re-deal the rows of field(s) " + ", ".join(refused) + "; read "
            "without shuffle_window, or leave the field out with attributes="
        )
    return rules


def permutation(count: int, key: str) -> list[int]:
    """``range(count)`` in the deterministic order of ``key`` (a hex digest)."""
    rng = random.Random(int(key, 16))
    order = list(range(count))
    for i in range(count - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    return order


class RedealtBatchId(int):
    """The id of a re-dealt batch: its item number in the epoch's plan, saying where it came from.

    It is an ``int`` (the item id, unique in the epoch) whose attributes say it was re-dealt.

    Attributes:
        window: the window's number in the epoch.
        index: the batch's index in its window.
        batch_ids: the stored batches the window pooled.
    """

    window: int
    index: int
    batch_ids: tuple[int, ...]

    def __new__(
        cls, item: int, window: int, index: int, batch_ids: Sequence[int]
    ) -> RedealtBatchId:
        """Make the id of item ``item``, batch ``index`` of window ``window``."""
        self = super().__new__(cls, item)
        self.window, self.index, self.batch_ids = window, index, tuple(batch_ids)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (int(self), self.window, self.index, self.batch_ids)

    def __repr__(self) -> str:
        return f"RedealtBatchId({int(self)}, window={self.window}, index={self.index})"


def _extents(tensor: torch.Tensor, pad: float | int) -> torch.Tensor:
    """``(rows, dims)``: each row's length along each dimension (after its last non-pad value)."""
    real = tensor != pad
    out = []
    for dim in range(1, tensor.dim()):
        others = [d for d in range(1, tensor.dim()) if d != dim]
        along = real.any(dim=tuple(others)) if others else real  # (rows, size)
        size = along.shape[1]
        last = size - along.flip(1).int().argmax(dim=1)
        out.append(torch.where(along.any(dim=1), last, torch.zeros_like(last)))
    return torch.stack(out, dim=1) if out else torch.zeros(tensor.shape[0], 0, dtype=torch.long)


class DealtWindow:
    """A window's stored batches, permuted; :meth:`batch` builds its new batches one by one.

    Only the stored batches are held (no concatenated copy): a new batch gathers its rows from
    them, so a window costs its stored batches plus the batch being built.

    Args:
        batches: the window's stored batches, in window order.
        key: the window's seed (a hex digest).
        rules: the rule of each attribute (see :func:`field_rules`); each batch must have
            exactly these attributes.
        ids: builds the id of new batch ``i``.
    """

    def __init__(
        self,
        batches: Sequence[Batch],
        key: str,
        rules: dict[str, FieldRule],
        ids: Any,
    ) -> None:
        self.batches = list(batches)
        self.rules = rules
        self._ids = ids
        sizes = [len(b.data_point_ids) for b in self.batches]
        for batch, size in zip(self.batches, sizes, strict=True):
            if set(batch.attributes) != set(rules):
                raise BatchError(
                    f"batch {batch.split_name}/{batch.id} has attributes "
                    f"{sorted(batch.attributes)}, not {sorted(rules)}"
                )
            for name, tensor in batch.attributes.items():  # ids and rows must agree
                if tensor.dim() == 0 or tensor.shape[0] != size:
                    raise BatchError(
                        f"batch {batch.split_name}/{batch.id}: {name!r} has shape "
                        f"{tuple(tensor.shape)}, not one row for each of its {size} data points"
                    )
        starts = torch.tensor([0, *sizes]).cumsum(0)
        self.sizes = sorted(sizes, reverse=True)
        order = torch.tensor(permutation(int(starts[-1]), key), dtype=torch.long)
        self._source = torch.searchsorted(starts[1:], order, right=True)  # batch of each row
        self._local = order - starts[self._source]  # its row there
        self._cuts = [0, *torch.tensor(self.sizes).cumsum(0).tolist()] if sizes else [0]
        self._extents: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        """The number of new batches (that of stored batches)."""
        return len(self.sizes)

    def _extent(self, source: int, name: str, pad: float | int) -> torch.Tensor:
        key = (source, name)
        if key not in self._extents:
            self._extents[key] = _extents(self.batches[source].attributes[name], pad)
        return self._extents[key]

    def batch(self, index: int, pin: bool = False) -> Batch:
        """New batch ``index`` (in pinned memory with ``pin``, for a CUDA copy)."""
        lo, hi = self._cuts[index], self._cuts[index + 1]
        source, local = self._source[lo:hi], self._local[lo:hi]
        parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (batch, new rows, its rows)
        for s in sorted(set(source.tolist())):
            where = (source == s).nonzero().flatten()
            parts.append((s, where, local[where]))
        first = self.batches[0]
        tensors = {}
        for name, rule in self.rules.items():
            like = first.attributes[name]
            if rule.pad is None:
                shape = [hi - lo, *like.shape[1:]]
                out = torch.empty(shape, dtype=like.dtype, pin_memory=pin)
            else:
                ext = [self._extent(s, name, rule.pad)[rows] for s, _, rows in parts]
                dims = torch.cat(ext).amax(dim=0).tolist() if ext else [0] * (like.dim() - 1)
                out = torch.full([hi - lo, *dims], rule.pad, dtype=like.dtype, pin_memory=pin)
            for s, where, rows in parts:
                src = self.batches[s].attributes[name]
                sizes = zip(src.shape[1:], out.shape[1:], strict=True)
                region = [slice(0, min(a, b)) for a, b in sizes]
                target: tuple[torch.Tensor | slice, ...] = (where, *region)
                every: tuple[slice, ...] = (slice(None), *region)
                out[target] = src[rows][every]
            tensors[name] = out
        ids: list[Any] = [None] * (hi - lo)
        for s, where, rows in parts:
            names = self.batches[s].data_point_ids
            for w, r in zip(where.tolist(), rows.tolist(), strict=True):
                ids[w] = names[r]
        return first.with_rows(self._ids(index), tensors, ids)

    def release(self) -> None:
        """Drop the stored batches (the window's memory)."""
        self.batches = []
        self._extents.clear()


def redealt(
    plan: RebatchPlan,
    items: list[int],
    read: Callable[[list[int]], Generator[Batch, None, None]],
    stage: DeviceStage | None,
) -> Generator[Batch, None, None]:
    """Yield the re-dealt batches ``items`` of ``plan``, in order.

    The stored batches of each window the items come from are read in order by ``read`` (one
    stream for all, so its prefetch runs ahead across windows), held while the window's
    batches are built on the CPU, then dropped; ``stage`` copies each new batch to its device
    (from pinned memory for CUDA) and hands it over in the caller's thread.

    Raises:
        BatchError: a field cannot be re-dealt (see :func:`field_rules`).
    """
    runs = plan.runs(items)
    stored = read([b for window, _ in runs for b in window.batch_ids])
    pin = stage is not None and stage.pinned
    rules = None
    try:
        for window, indices in runs:
            batches = [next(stored) for _ in window.batch_ids]
            if rules is None:
                rules = field_rules(batches[0].metadata, batches[0].attributes)

            def name(i: int, w: Any = window) -> RedealtBatchId:
                return RedealtBatchId(w.first + i, w.index, i, w.batch_ids)

            dealt = DealtWindow(batches, plan.window_key(window), rules, name)
            del batches
            for index in indices:
                batch = dealt.batch(index, pin=pin)
                yield batch if stage is None else stage.hand_over(stage.copy([batch])[0])
            dealt.release()
    finally:
        stored.close()
