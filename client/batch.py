"""The batch: named tensors of one split's data points, with the reference's lifecycle states."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

import torch

from . import wire
from .device import TorchConfig, copy_to_device
from .errors import BatchError
from .mapping import BatchFeatureMapping
from .metadata import BatchMetadata, VectorizerMetadata
from .wire import Payload

__all__ = ["Batch", "check_batch_type"]

B = TypeVar("B", bound="Batch")


class Batch:
    """A batch of data in the machine learning sense: one tensor per attribute, first dim = points.

    A batch starts *nascent* with its data points; encoding turns each mapped field into a tensor
    and drops the data points (*encoded*); a batch read back from the store or the wire is
    *decoded*; :meth:`to` returns a *memory copied* clone on a device (sharing the tensors that
    are already there); :meth:`deallocate` releases everything (*deallocated*).

    Subclass it to add properties or methods; pass the subclass as a client's ``batch_type``
    (``BatchClient(url, batch_type=MyBatch)``) to get batches of it over HTTP.

    Attributes:
        batch_stash: the stash that made the batch (service side only; ``None`` on a client).
        id: the batch id, its sequence number within its split.
        split_name: the split the batch belongs to (``train``, ``dev``, ``test``...).
        metadata: the batch metadata (label classes, vectorizers), when known.
        torch_config: the device and dtype :meth:`to` copies to by default.
    """

    STATES = {
        "n": "nascent",
        "e": "encoded",
        "d": "decoded",
        "t": "memory copied",
        "k": "deallocated",
    }

    def __init__(
        self,
        batch_stash: Any,
        id: int,
        split_name: str,
        data_points: Sequence[Any] | None,
        *,
        metadata: BatchMetadata | None = None,
        torch_config: TorchConfig | None = None,
    ) -> None:
        self.batch_stash = batch_stash
        self.id = id
        self.split_name = split_name
        self.metadata = metadata
        self.torch_config = torch_config or TorchConfig()
        self._data_points: tuple[Any, ...] | None = (
            None if data_points is None else tuple(data_points)
        )
        # a tuple, or until first asked for (most trainers never ask) the payload's JSON text
        # or, for a re-dealt batch, a function that looks them up
        self._data_point_ids: tuple[Any, ...] | str | Callable[[], tuple[Any, ...]] = tuple(
            p.id for p in self._data_points or ()
        )
        self._attributes: dict[str, torch.Tensor] = {}
        self.state = "n"

    @classmethod
    def from_payload(
        cls: type[B],
        payload: Payload,
        metadata: BatchMetadata | None = None,
        torch_config: TorchConfig | None = None,
    ) -> B:
        """Build a *decoded* batch of this class from a decoded wire payload.

        A client's ``batch_type`` builds its batches with this; it calls the constructor as
        ``cls(None, id, split_name, None, metadata=..., torch_config=...)``, so a subclass with
        another constructor overrides it.
        """
        batch = cls(
            None,
            payload.batch_id,
            payload.split,
            None,
            metadata=metadata,
            torch_config=torch_config,
        )
        batch._take_payload(payload)
        return batch

    def _take_payload(self, payload: Payload) -> None:
        """Hold a decoded payload's tensors and data point ids: the batch is then *decoded*."""
        self._attributes = dict(payload.tensors)
        self._data_point_ids = payload.metadata.get(wire.KEY_DATA_POINT_IDS, "[]")
        self.state = "d"

    @property
    def data_point_ids(self) -> tuple[Any, ...]:
        """The ids of the batch's data points, in order."""
        ids = self._data_point_ids
        if isinstance(ids, str):
            ids = self._data_point_ids = tuple(json.loads(ids))
        elif callable(ids):
            ids = self._data_point_ids = ids()
        return ids

    @property
    def state_name(self) -> str:
        """The human readable name of the state (see :attr:`STATES`)."""
        return self.STATES[self.state]

    @property
    def attributes(self) -> dict[str, torch.Tensor]:
        """The batched tensors by attribute name."""
        return self._attributes

    @property
    def data_points(self) -> tuple[Any, ...] | None:
        """The data points given on creation; ``None`` once the batch is encoded."""
        return self._data_points

    @property
    def mapping(self) -> BatchFeatureMapping | None:
        """The feature mapping of the batch, when known."""
        return None if self.metadata is None else self.metadata.mapping

    def __getitem__(self, attr: str) -> torch.Tensor:
        try:
            return self._attributes[attr]
        except KeyError:
            have = ", ".join(sorted(self._attributes)) or "none"
            raise KeyError(f"batch has no attribute {attr!r} (has: {have})") from None

    def __contains__(self, attr: object) -> bool:
        return attr in self._attributes

    def __iter__(self) -> Iterator[str]:
        return iter(self._attributes)

    def __len__(self) -> int:
        """The number of data points in the batch."""
        if self._data_points is not None:
            return len(self._data_points)
        return len(self.data_point_ids)

    @property
    def has_labels(self) -> bool:
        """Whether the batch has labels; a batch without them is for prediction."""
        mapping = self.mapping
        label = None if mapping is None else mapping.label_attribute_name
        if label is None:
            return False
        if self.state == "n":
            fld = mapping.label_field if mapping else None
            accessor = label if fld is None else fld.attribute_accessor
            points = self._data_points or ()
            return bool(points) and all(getattr(p, accessor, None) is not None for p in points)
        return label in self._attributes

    def get_label_feature_vectorizer(self) -> VectorizerMetadata:
        """Return the metadata of the vectorizer that encodes the label."""
        mapping = self.mapping
        if self.metadata is None or mapping is None or mapping.label_attribute_name is None:
            raise BatchError("batch has no metadata for its label")
        fld = self.metadata.fields_by_attribute.get(mapping.label_attribute_name)
        if fld is None:
            raise BatchError(f"label attribute {mapping.label_attribute_name!r} is not mapped")
        return fld.vectorizer

    def get_label_classes(self) -> list[str | int]:
        """Return the labels of this batch as classes (needs a category label vectorizer)."""
        vectorizer = self.get_label_feature_vectorizer()
        if vectorizer.classes is None:
            raise BatchError(f"label vectorizer {vectorizer.feature_id!r} lists no classes")
        label = self[self.mapping.label_attribute_name]  # type: ignore[union-attr,index]
        indices = label.argmax(dim=-1) if label.dim() > 1 else label
        return [vectorizer.classes[int(i)] for i in indices.tolist()]

    def to(self, device: str | torch.device | None = None) -> Batch:
        """Return a *memory copied* clone (of the same class) with its tensors on ``device``.

        Only tensors not on ``device`` yet are copied: a tensor already there is shared with
        this batch (``batch.to("cpu")`` of a decoded batch copies nothing, and writing to a
        tensor of either batch writes to both). Call ``.clone()`` on a tensor for a private
        copy.

        Args:
            device: the target; defaults to ``torch_config.device``. CUDA copies are staged in
                pinned memory and issued ``non_blocking``.
        """
        if self.state == "k":
            raise BatchError(f"batch {self.split_name}/{self.id} is deallocated")
        clone = self._clone()
        clone._attributes = copy_to_device(self._attributes, device or self.torch_config.device)
        clone.state = "t"
        return clone

    def with_rows(
        self: B,
        id: int,
        attributes: dict[str, torch.Tensor],
        data_point_ids: Sequence[Any] | Callable[[], tuple[Any, ...]],
    ) -> B:
        """A *decoded* batch of this class and split holding other rows (a re-dealt batch).

        Args:
            id: its id.
            attributes: its tensors, one row per data point.
            data_point_ids: the ids of its data points, in row order, or a function returning
                them, called when they are first asked for.
        """
        batch = self._clone()
        batch.id = id
        batch._attributes = dict(attributes)
        batch._data_point_ids = (
            data_point_ids if callable(data_point_ids) else tuple(data_point_ids)
        )
        batch.state = "d"
        return batch  # type: ignore[return-value]

    def _clone(self) -> Batch:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._data_points = None
        return clone

    def deallocate(self) -> None:
        """Release the tensors and data points."""
        self._attributes = {}
        self._data_points = None
        self.batch_stash = None
        self.state = "k"

    def write(
        self, depth: int = 0, writer: TextIO | None = None, include_data_points: bool = False
    ) -> None:
        """Write a readable dump of the batch to ``writer`` (stdout by default).

        Args:
            depth: the starting indentation depth.
            writer: where to write.
            include_data_points: also write each data point (nascent batches only).
        """
        out = writer or sys.stdout
        pad = "  " * depth
        out.write(
            f"{pad}{type(self).__name__}: id={self.id}, split={self.split_name}, "
            f"size={len(self)}, state={self.state_name}\n"
        )
        for name, tensor in self._attributes.items():
            out.write(
                f"{pad}  {name}: shape={tuple(tensor.shape)}, dtype={tensor.dtype}, "
                f"device={tensor.device}\n"
            )
        if include_data_points and self._data_points:
            out.write(f"{pad}  data points:\n")
            for point in self._data_points:
                out.write(f"{pad}    {point!r}\n")

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._attributes.items())
        return (
            f"{type(self).__name__}(id={self.id}, split={self.split_name!r}, "
            f"state={self.state_name!r}, attributes=[{attrs}])"
        )


def check_batch_type(batch_type: object) -> type[Batch]:
    """Return ``batch_type`` if it is :class:`Batch` or a subclass of it.

    Raises:
        TypeError: it is anything else (an instance, another class).
    """
    if not (isinstance(batch_type, type) and issubclass(batch_type, Batch)):
        raise TypeError(
            f"batch_type must be batchstash.client.Batch or a subclass of it, not {batch_type!r}"
        )
    return batch_type
