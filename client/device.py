"""Device placement: the torch configuration and host-to-device copies (pinned, non-blocking)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["TorchConfig", "copy_to_device"]


@dataclass(frozen=True)
class TorchConfig:
    """The device and float dtype a model runs with (the reference's ``TorchConfig``).

    Attributes:
        device: where tensors are copied by ``Batch.to()``; ``"cuda"`` when one is available.
        data_type: the floating point type of the model.
    """

    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    data_type: str = "float32"

    @property
    def torch_device(self) -> torch.device:
        """The device as a ``torch.device``."""
        return torch.device(self.device)


def copy_to_device(
    tensors: Mapping[str, torch.Tensor], device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Copy tensors to ``device``.

    For a CUDA target each tensor is staged in page-locked (pinned) host memory and copied with
    ``non_blocking=True``, so the copy overlaps with compute on the current stream; the returned
    tensors are safe to use on that stream. Other targets get a plain copy.

    Args:
        tensors: tensors by name (CPU or any device).
        device: the target device.
    """
    target = torch.device(device)
    if target.type != "cuda":
        return {name: t.to(target, copy=True) for name, t in tensors.items()}
    copied = {}
    for name, tensor in tensors.items():
        host = tensor if tensor.is_pinned() or tensor.device.type != "cpu" else tensor.pin_memory()
        copied[name] = host.to(target, non_blocking=True)
    return copied
