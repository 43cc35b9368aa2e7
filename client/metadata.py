"""Batch metadata as data: fields, vectorizers, shapes, dtypes and label classes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import BatchError
from .mapping import BatchFeatureMapping, FieldFeatureMapping

__all__ = [
    "BatchFieldMetadata",
    "BatchMetadata",
    "MetadataNetworkSettings",
    "VectorizerMetadata",
]


@dataclass(frozen=True)
class VectorizerMetadata:
    """What a model needs to know of a feature vectorizer.

    Attributes:
        feature_id: the vectorizer's feature id.
        name: the vectorizer class name.
        description: a human readable description.
        dtype: the torch dtype name of its tensors (``"float32"``, ``"int64"``...).
        shape: the shape of one data point's tensor; ``-1`` marks a dimension that varies by batch
            (e.g. padded sequence length); priming checks every stored tensor against it.
        classes: the label classes, for category vectorizers (index ``i`` is class ``classes[i]``):
            strings, integers or booleans, as the vectorizer's categories are.
        vocab_size: the vocabulary size, for token id vectorizers (for an embedding layer).
        extra: other JSON-able facts about the vectorizer.
    """

    feature_id: str
    name: str
    description: str = ""
    dtype: str = "float32"
    shape: tuple[int, ...] = ()
    classes: tuple[str | int, ...] | None = None
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the vectorizer's tensors."""
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise BatchError(f"unknown dtype {self.dtype!r}")
        return dtype

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-able data."""
        return {
            "feature_id": self.feature_id,
            "name": self.name,
            "description": self.description,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "classes": None if self.classes is None else list(self.classes),
            "vocab_size": self.vocab_size,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorizerMetadata:
        """Rebuild from :meth:`to_dict` data."""
        classes = data.get("classes")
        return cls(
            feature_id=data["feature_id"],
            name=data["name"],
            description=data.get("description", ""),
            dtype=data.get("dtype", "float32"),
            shape=tuple(-1 if d is None else d for d in data.get("shape", ())),
            classes=None if classes is None else tuple(classes),
            vocab_size=data.get("vocab_size"),
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True)
class BatchFieldMetadata:
    """Data that describes a field mapping in a batch.

    Attributes:
        field: the field mapping.
        vectorizer: the vectorizer that maps the field.
    """

    field: FieldFeatureMapping
    vectorizer: VectorizerMetadata

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one data point's tensor (``-1`` where it varies)."""
        return self.vectorizer.shape

    @property
    def dtype(self) -> str:
        """The dtype name of the field's tensor."""
        return self.vectorizer.dtype


@dataclass(frozen=True)
class BatchMetadata:
    """Describes the batches of a stash.

    Attributes:
        data_point_class: the qualified name of the data point class.
        batch_class: the qualified name of the batch class.
        mapping: the mapping used to encode and decode the batches.
        fields_by_attribute: field metadata by attribute name.
        bucketing: how batches were cut by length, when they were (``None``: at random):
            ``{"key": the data point attribute, "window": batches a bucketing window}``;
            batch ``b`` of a split holds the ``b % window``-th shortest of its window.
    """

    data_point_class: str
    batch_class: str
    mapping: BatchFeatureMapping
    fields_by_attribute: dict[str, BatchFieldMetadata]
    bucketing: dict[str, Any] | None = field(default=None, compare=True)

    @property
    def label_classes(self) -> tuple[str | int, ...] | None:
        """The classes of the label vectorizer (``None`` without a category label)."""
        label = self.mapping.label_attribute_name
        fld = self.fields_by_attribute.get(label) if label else None
        return None if fld is None else fld.vectorizer.classes

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-able data (what ``GET /v1/metadata`` serves)."""
        return {
            "data_point_class": self.data_point_class,
            "batch_class": self.batch_class,
            "mapping": self.mapping.to_dict(),
            "fields": {
                attr: {"field": f.field.to_dict(), "vectorizer": f.vectorizer.to_dict()}
                for attr, f in self.fields_by_attribute.items()
            },
            **({} if self.bucketing is None else {"bucketing": dict(self.bucketing)}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchMetadata:
        """Rebuild from :meth:`to_dict` data."""
        fields = {
            attr: BatchFieldMetadata(
                FieldFeatureMapping(**f["field"]), VectorizerMetadata.from_dict(f["vectorizer"])
            )
            for attr, f in data["fields"].items()
        }
        return cls(
            data["data_point_class"],
            data["batch_class"],
            BatchFeatureMapping.from_dict(data["mapping"]),
            fields,
            None if data.get("bucketing") is None else dict(data["bucketing"]),
        )


@dataclass(frozen=True)
class MetadataNetworkSettings:
    """Sizes a model's layers from batch metadata (the reference's network settings helper).

    Attributes:
        batch_metadata: the metadata of the batches the model receives.
    """

    batch_metadata: BatchMetadata

    def _field(self, attr: str) -> BatchFieldMetadata:
        try:
            return self.batch_metadata.fields_by_attribute[attr]
        except KeyError:
            raise BatchError(f"no field {attr!r} in the batch metadata") from None

    def input_width(self, attributes: Iterable[str]) -> int:
        """The width of the concatenated last dimension of ``attributes``.

        Raises:
            BatchError: a field's last dimension varies by batch.
        """
        width = 0
        for attr in attributes:
            shape = self._field(attr).shape
            last = shape[-1] if shape else 1
            if last < 0:
                raise BatchError(f"field {attr!r} has a variable width")
            width += last
        return width

    @property
    def num_labels(self) -> int:
        """The number of label classes."""
        classes = self.batch_metadata.label_classes
        if classes is None:
            raise BatchError("the label vectorizer lists no classes")
        return len(classes)

    def vocab_size(self, attr: str) -> int:
        """The vocabulary size of a token id field (rows of its embedding layer)."""
        size = self._field(attr).vectorizer.vocab_size
        if size is None:
            raise BatchError(f"field {attr!r} has no vocabulary")
        return size
