"""The ``widen`` setting: attributes converted to another dtype as a client reads batches.

A store may keep an attribute in a narrow dtype (token ids as ``int16``: a quarter of the bytes
on the wire and in the store) that a trainer wants wider; ``BatchClient(url, widen={"tokens":
torch.int64})`` converts it in each verified payload before the batch is built. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import wire

__all__ = ["widen_dtypes", "widened"]


def widen_dtypes(widen: Mapping[str, torch.dtype] | None) -> dict[str, torch.dtype]:
    """The ``widen`` setting as a dict (attribute -> dtype; empty for ``None``).

    Raises:
        TypeError: a value is not a ``torch.dtype``.
    """
    dtypes = dict(widen or {})
    wrong = {n: d for n, d in dtypes.items() if not isinstance(d, torch.dtype)}
    if wrong:
        raise TypeError(f"widen takes torch dtypes by attribute, not {wrong}")
    return dtypes


def widened(payload: wire.Payload, widen: Mapping[str, torch.dtype]) -> wire.Payload:
    """``payload`` with the ``widen`` attributes it holds converted (verified already)."""
    tensors = dict(payload.tensors)
    for name, dtype in widen.items():
        tensor = tensors.get(name)
        if tensor is not None and tensor.dtype != dtype:
            tensors[name] = tensor.to(dtype)
    return wire.Payload(tensors, payload.metadata)
