"""Tensors for new batches, and the row views their copies read: numpy where it can.

The copies of re-dealt rows go through numpy where it can: single-threaded, without the GIL, so
they run beside the reader's thread at memory speed; torch's own copies of a MiB are split over
its intra-op threads, and wait on each other when the cores are busy. ``take`` is told
``mode="clip"`` (the rows are in range by construction): with ``out`` and the default
``"raise"`` numpy buffers the result and copies it twice.
"""

from __future__ import annotations

import math

import numpy
import torch

from .buffers import BufferPool

__all__ = ["allocate", "extents", "numpy_dtype", "numpy_view"]

_ALIGN = 64

_NUMPY: dict[torch.dtype, numpy.dtype | None] = {}  # torch dtype -> numpy's (None: it has none)


def numpy_dtype(dtype: torch.dtype) -> numpy.dtype | None:
    """The numpy dtype of ``dtype``; ``None`` where numpy has none (``bfloat16``, ``float8``)."""
    if dtype not in _NUMPY:
        try:
            _NUMPY[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
        except (RuntimeError, TypeError):
            _NUMPY[dtype] = None
    return _NUMPY[dtype]


def allocate(
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
    pool: BufferPool | None,
    pinned: bool = False,
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors of these shapes, carved from one buffer of ``pool`` when given.

    A pooled buffer is reused once no tensor views it any more (see :class:`BufferPool`), so
    a steady stream of batches does not touch fresh pages; ``pinned``: page-locked memory.
    The views are numpy's where it has the dtype: a torch operation lets go of the GIL and
    takes it again, which costs a wait while the reader's thread holds it.
    """
    sizes = {n: math.prod(sh) * dt.itemsize for n, (sh, dt) in shapes.items()}
    total = sum(-(-size // _ALIGN) * _ALIGN for size in sizes.values())
    if pool is None or total < pool.min_bytes:  # a small one is cheap: the pool would not keep it
        return {n: torch.empty(sh, dtype=dt, pin_memory=pinned) for n, (sh, dt) in shapes.items()}
    raw = pool.get(total, pinned)
    out, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        region, kind = raw[offset : offset + sizes[name]], numpy_dtype(dtype)
        if kind is None:
            out[name] = torch.from_numpy(region).view(dtype).view(shape)
        else:
            out[name] = torch.from_numpy(region.view(kind).reshape(shape))
        offset += -(-sizes[name] // _ALIGN) * _ALIGN
    return out


def numpy_view(tensor: torch.Tensor) -> numpy.ndarray | None:
    """The tensor's memory as an array, when numpy has its dtype (``None``: bfloat16...)."""
    try:
        return tensor.numpy()  # a decoded tensor: no autograd to detach from
    except (RuntimeError, TypeError):
        pass
    try:
        return tensor.detach().numpy()
    except (RuntimeError, TypeError):  # a dtype numpy lacks (bfloat16), a view it cannot take
        return None


def extents(tensor: torch.Tensor, pad: float | int) -> torch.Tensor:
    """``(rows, dims)``: each row's length along each dimension (after its last non-pad value)."""
    real = tensor != pad
    out = []
    for dim in range(1, tensor.dim()):
        others = tuple(d for d in range(1, tensor.dim()) if d != dim)
        along = real.any(dim=others) if others else real  # (rows, size)
        last = along.shape[1] - along.flip(1).int().argmax(dim=1)
        out.append(torch.where(along.any(dim=1), last, torch.zeros_like(last)))
    return torch.stack(out, dim=1) if out else torch.zeros(tensor.shape[0], 0, dtype=torch.long)
