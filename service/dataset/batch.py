"""The default batch: encodes its data points with the stash's mappings and vectorizers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from batchstash.client import Batch, BatchError, BatchFeatureMapping, VectorizerError
from batchstash.client.wire import Payload

from .idset import DataPointIDSet
from .vectorize import FeatureVectorizer, encodes_many

__all__ = ["DefaultBatch"]

D = TypeVar("D", bound="DefaultBatch")


class DefaultBatch(Batch):
    """A batch encoded with ``batch_feature_mappings`` (by default the stash's mappings).

    A stash builds it nascent from its data points to encode it, and decoded (with no data
    points) when it loads it from the store (:meth:`from_stored`).

    Args:
        batch_stash: the stash that creates the batch.
        id: the batch id.
        split_name: the batch's split.
        data_points: the data points to encode (``None`` for a batch read from the store).
        batch_feature_mappings: the mappings to use instead of the stash's.
    """

    def __init__(
        self,
        batch_stash: Any,
        id: int,
        split_name: str,
        data_points: Sequence[Any] | None,
        batch_feature_mappings: BatchFeatureMapping | None = None,
    ) -> None:
        super().__init__(
            batch_stash,
            id,
            split_name,
            data_points,
            metadata=batch_stash.batch_metadata,
            torch_config=batch_stash.model_torch_config,
        )
        self.batch_feature_mappings = batch_feature_mappings

    @classmethod
    def from_stored(cls: type[D], batch_stash: Any, payload: Payload) -> D:
        """Build a *decoded* batch of this class from a payload read from ``batch_stash``'s store.

        The batch holds the stash; its :attr:`data_points` are rebuilt on first access. It is
        built as ``cls(batch_stash, id, split_name, None)``: a subclass with another
        constructor overrides this method.
        """
        batch = cls(batch_stash, payload.batch_id, payload.split, None)
        batch._take_payload(payload)
        return batch

    @property
    def data_points(self) -> tuple[Any, ...] | None:
        """The data points; ``None`` once the batch is encoded (or deallocated).

        A batch loaded from the store (decoded, or copied by :meth:`to`) rebuilds them from
        its stash's split container on first access, by its :attr:`data_point_ids`.
        """
        if self._data_points is None and self.state in ("d", "t") and self.batch_stash is not None:
            ids = tuple(_id_key(i) for i in self.data_point_ids)
            id_set = DataPointIDSet(self.id, ids, self.split_name)
            self._data_points = tuple(self.batch_stash.data_points(id_set))
        return self._data_points

    @property
    def mapping(self) -> BatchFeatureMapping:
        """The mappings of this batch."""
        if self.batch_feature_mappings is not None:
            return self.batch_feature_mappings
        return self.batch_stash.batch_feature_mappings  # type: ignore[no-any-return]

    def encode(self) -> None:
        """Vectorize every mapped field into :attr:`attributes` and drop the data points.

        Label fields are skipped when the batch has no labels (a prediction batch).

        Raises:
            VectorizerError: a vectorizer failed; the message names split, batch, data point and
                field.
        """
        if self.state != "n":
            raise BatchError(f"batch {self.split_name}/{self.id} is {self.state_name}, not nascent")
        mapping = self.mapping
        managers = self.batch_stash.vectorizer_manager_set
        points = self._data_points or ()
        if not points:
            raise BatchError(f"batch {self.split_name}/{self.id} has no data points")
        label_fld = mapping.label_field
        labels = self._label_values(points)  # read once: they tell has_labels and are encoded
        labelled = labels is not None
        if not labelled:
            self._refuse_partial_labels(points)
        attributes = {}
        for mng in mapping.manager_mappings:
            for fld in mng.fields:
                is_label = mapping.is_label_field(fld)
                if not labelled and is_label:
                    continue
                vectorizer = managers[mng.vectorizer_manager_name][fld.feature_id]
                attributes[fld.attr] = self._encode_field(
                    vectorizer,
                    fld.attr,
                    fld.attribute_accessor,
                    fld.is_agg,
                    labels if fld is label_fld else None,
                )
        self._attributes = attributes
        self._data_points = None
        self.state = "e"

    def _label_values(self, points: Sequence[Any]) -> list[Any] | None:
        """Every data point's label (``None``: the batch has no labels, as :attr:`has_labels`)."""
        mapping = self.mapping
        if mapping.label_attribute_name is None:
            return None
        fld = mapping.label_field
        accessor = mapping.label_attribute_name if fld is None else fld.attribute_accessor
        values = [getattr(p, accessor, None) for p in points]
        return values if all(v is not None for v in values) else None

    def _refuse_partial_labels(self, points: Sequence[Any]) -> None:
        """A batch is for prediction when no point has a label; some unlabelled is an error."""
        fld = self.mapping.label_field
        if fld is None:
            return
        accessor = fld.attribute_accessor
        missing = [p.id for p in points if getattr(p, accessor, None) is None]
        if len(missing) < len(points):
            raise VectorizerError(
                f"split {self.split_name!r}, batch {self.id}: data point {missing[0]!r} has no "
                f"label ({accessor!r} is None) while others do ({len(missing)} of {len(points)} "
                "unlabelled): label every data point, or none for a prediction batch"
            )

    def _where(self, attr: str, vectorizer: FeatureVectorizer, point: str) -> str:
        return (
            f"split {self.split_name!r}, batch {self.id}, {point}, field {attr!r} "
            f"(vectorizer {vectorizer.feature_id!r})"
        )

    def _encode_field(
        self,
        vectorizer: FeatureVectorizer,
        attr: str,
        accessor: str,
        is_agg: bool,
        read: list[Any] | None = None,
    ) -> torch.Tensor:
        """Encode one field of every data point (``read``: its values, already read)."""
        points = self._data_points or ()
        try:
            values = [getattr(point, accessor) for point in points] if read is None else read
        except Exception:  # read again one by one, to name the data point
            values = []
            for point in points:
                try:
                    values.append(getattr(point, accessor))
                except Exception as exc:
                    where = self._where(attr, vectorizer, f"data point {point.id!r}")
                    raise VectorizerError(f"{where}: cannot read {accessor!r}: {exc!r}") from exc
        if is_agg:
            try:
                return vectorizer.encode_batch(values)
            except Exception as exc:
                ids = [p.id for p in points]
                where = self._where(attr, vectorizer, f"data points {ids!r}")
                raise VectorizerError(f"{where}: {exc!r}") from exc
        if encodes_many(type(vectorizer)):
            try:
                many = vectorizer.encode_many(values)
            except Exception:  # value by value, below, names the data point that fails
                many = None
            if (
                isinstance(many, torch.Tensor)
                and many.layout == torch.strided
                and many.shape[:1] == (len(values),)
            ):
                return many
        encoded = []
        for point, value in zip(points, values, strict=True):
            try:
                encoded.append(vectorizer.encode(value))
            except Exception as exc:
                where = self._where(attr, vectorizer, f"data point {point.id!r}")
                raise VectorizerError(f"{where}: {exc!r}") from exc
            if encoded[-1].layout != torch.strided:
                where = self._where(attr, vectorizer, f"data point {point.id!r}")
                raise VectorizerError(
                    f"{where}: gave a {encoded[-1].layout} tensor; batches hold dense tensors "
                    "only: return tensor.to_dense()"
                )
        try:
            return torch.stack(encoded)
        except (RuntimeError, TypeError) as exc:
            raise VectorizerError(self._unstackable(vectorizer, attr, points, encoded)) from exc

    def _unstackable(
        self,
        vectorizer: FeatureVectorizer,
        attr: str,
        points: Sequence[Any],
        encoded: Sequence[Any],
    ) -> str:
        """Why the data points' tensors do not stack: the first two that differ in shape."""
        first = encoded[0]
        for point, tensor in zip(points, encoded, strict=True):
            if not isinstance(tensor, torch.Tensor):
                where = self._where(attr, vectorizer, f"data point {point.id!r}")
                return f"{where}: gave a {type(tensor).__name__}, not a tensor"
            if tensor.shape != first.shape:
                where = self._where(attr, vectorizer, "data points")
                return (
                    f"{where}: tensors of different shapes do not stack: {points[0].id!r} gave "
                    f"{tuple(first.shape)}, {point.id!r} gave {tuple(tensor.shape)}"
                    f"{_padding_hint(vectorizer, attr)}"
                )
        return f"{self._where(attr, vectorizer, 'data points')}: the tensors do not stack"


def _id_key(data_point_id: Any) -> Any:
    """A data point id as a container key: a JSON array (a stored tuple id) as a tuple."""
    if isinstance(data_point_id, list):
        return tuple(_id_key(i) for i in data_point_id)
    return data_point_id


def _padding_hint(vectorizer: FeatureVectorizer, attr: str) -> str:
    """Advice for a field whose vectorizer pads a varying shape in ``encode_batch``."""
    pads = type(vectorizer).encode_batch is not FeatureVectorizer.encode_batch
    if not pads or all(d is not None and d >= 0 for d in vectorizer.shape):
        return ""
    return (
        f"; its shape {tuple(vectorizer.shape)} varies: set is_agg=True on the field mapping "
        f"of {attr!r} so the vectorizer pads the batch"
    )
