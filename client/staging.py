"""An iteration's host-to-device copies: on a side stream for CUDA, handed over by an event.

:meth:`Batch.to` copies on the caller's current stream, which is what a single batch wants.
An iterator copies in its background thread while the trainer computes on the batch before,
and on one stream the two would queue behind each other. :class:`DeviceStage` gives the
iteration a CUDA stream of its own: a group of batches is copied there (``non_blocking``, from
the pinned receive buffer the body was read into, so no ``pin_memory()`` copy), an event is
recorded after the copies, and the consumer's current stream waits for that event when the
batch is handed over (:meth:`DeviceStage.hand_over`, in the thread that calls ``next()``): the
wait is on the GPU, the trainer's thread does not block. The receive buffer is fenced with the
same event (:meth:`~.buffers.BufferPool.fence`), so it is not refilled before the copies that
read it are done. Other targets (``"cpu"``, ``"meta"``...) are a plain :meth:`Batch.to`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .batch import Batch
    from .buffers import BufferPool

__all__ = ["DeviceStage"]

_READY = "_ready"  # the batch attribute that holds the event its tensors are ready after


class DeviceStage:
    """Copies an iteration's batches to ``device``; for CUDA on a stream of its own.

    Args:
        device: the target.
        buffers: the pool the receive buffers come from (its buffers get fenced); ``None``:
            no pooled buffers to guard.

    Attributes:
        stream: the side stream (``None`` unless ``device`` is CUDA).
    """

    def __init__(self, device: str | torch.device, buffers: BufferPool | None = None) -> None:
        self.device = torch.device(device)
        self.buffers = buffers
        self.stream: Any = None
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]

    @property
    def pinned(self) -> bool:
        """Whether bodies should be received into pinned buffers (a CUDA target)."""
        return self.stream is not None

    def copy(self, batches: list[Batch]) -> list[Batch]:
        """The batches on the device (called in the thread that decoded them)."""
        if self.stream is None:
            return [batch.to(self.device) for batch in batches]
        with torch.cuda.stream(self.stream):
            moved = [batch.to(self.device) for batch in batches]
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self.stream)
        if self.buffers is not None:
            sources = (t for batch in batches for t in batch.attributes.values() if t.is_pinned())
            self.buffers.fence(sources, ready)
        for batch in moved:
            setattr(batch, _READY, ready)
        return moved

    def hand_over(self, batch: Batch) -> Batch:
        """Make ``batch`` safe to use on the calling thread's current stream (no host wait).

        That stream waits for the copies, and each tensor is recorded as used there, so the
        caching allocator does not give its memory to the side stream while kernels of the
        consumer's stream may still read it.
        """
        ready = batch.__dict__.pop(_READY, None)
        if ready is None:
            return batch
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(ready)
        for tensor in batch.attributes.values():
            if tensor.is_cuda:
                tensor.record_stream(stream)
        return batch
