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


def _on_device(tensor: torch.Tensor, device: str | torch.device) -> bool:
    """Whether ``tensor`` already lives on ``device`` (``"cuda"``: the current CUDA device).

    Args:
        tensor: any tensor.
        device: the target device; without an index it means the current one of its type.
    """
    target = torch.device(device)
    have = tensor.device
    if have.type != target.type:
        return False
    if target.index is None:
        if target.type == "cuda":
            return have.index == torch.cuda.current_device()
        return True
    return have.index in (target.index, None)


def copy_to_device(
    tensors: Mapping[str, torch.Tensor], device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Place tensors on ``device``, copying only those that are not there yet.

    A tensor already on ``device`` (a CPU tensor for ``"cpu"``) is returned as it is: the
    result shares its memory, so writing to one writes to the other. For a CUDA target each
    other tensor is staged in page-locked (pinned) host memory and copied with
    ``non_blocking=True``, so the copy overlaps with compute on the current stream; the
    returned tensors are safe to use on that stream. Other targets get a plain copy.

    Args:
        tensors: tensors by name (CPU or any device).
        device: the target device.
    """
    target = torch.device(device)
    copied = {}
    for name, tensor in tensors.items():
        if _on_device(tensor, target):
            copied[name] = tensor
        elif target.type != "cuda":
            copied[name] = tensor.to(target)
        else:
            pinned = tensor.is_pinned() or tensor.device.type != "cpu"
            host = tensor if pinned else tensor.pin_memory()
            copied[name] = host.to(target, non_blocking=True)
    return copied
