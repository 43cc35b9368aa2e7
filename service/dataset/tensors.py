"""Vectorizers of array-valued features: n-d tensors of any dtype, and multi-label k-hot vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from batchstash.client import BatchError, VectorizerMetadata
from batchstash.client.rowcopy import numpy_dtype

from .vectorize import CategoryEncodableFeatureVectorizer, FeatureVectorizer, encodes_many

__all__ = ["MultiLabelFeatureVectorizer", "TensorFeatureVectorizer", "as_torch_dtype"]


def as_torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Return the torch dtype ``dtype`` names (``"float32"``, ``"torch.int64"``, ``"uint8"``...).

    Raises:
        BatchError: ``dtype`` names no torch dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else None
    if not isinstance(found, torch.dtype):
        raise BatchError(f"unknown dtype {dtype!r}: give a torch.dtype or its name ('float32')")
    return found


def _as_array(value: Any) -> np.ndarray[Any, Any]:
    """``value`` as a numeric numpy array, possibly a view of it (never written to).

    Object arrays (what pyarrow and pandas give for nested list columns) and lists of arrays
    are stacked; a ragged value raises :class:`ValueError`.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        if numpy_dtype(tensor.dtype) is None:
            tensor = tensor.to(torch.float32)  # the narrow floats numpy lacks
        return tensor.numpy()
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype != object:
        return array
    if array.ndim == 0:
        item = array.item()
        nested = isinstance(item, (np.ndarray, torch.Tensor, list, tuple, int, float, complex))
        return _as_array(item) if nested else array  # anything else: refused as no number
    parts = [_as_array(v) for v in array.flat]
    if not parts:  # an empty list column
        return np.zeros(array.shape)
    inner = {p.shape for p in parts}
    if len(inner) != 1:
        raise ValueError(f"ragged: its items have shapes {sorted(inner)}")
    stacked: np.ndarray[Any, Any] = np.stack(parts).reshape(array.shape + parts[0].shape)
    return stacked


@dataclass(init=False)
class TensorFeatureVectorizer(FeatureVectorizer):
    """Encodes an n-d numeric field (an image, an embedding...) as a tensor of any dtype.

    A value may be a number, a (nested) list, a numpy array (object arrays of arrays, as
    pyarrow and pandas give nested list columns, are stacked) or a tensor; it is copied and
    converted to :attr:`dtype`. A ``-1`` (or ``None``) dimension of :attr:`shape` varies: map
    such a field with ``is_agg=True`` so :meth:`encode_batch` right-pads it with
    :attr:`pad_value` to the batch's longest.

    Args:
        feature_id: the unique id the field mappings refer to.
        shape: one data point's shape (``()`` for a scalar); ``-1`` or ``None`` where it varies.
        dtype: the tensors' dtype, a ``torch.dtype`` or its name (``"float32"``, ``"uint8"``).
        pad_value: what pads the varying dimensions; it must fit ``dtype``.

    Raises:
        BatchError: a dimension is neither ``>= 0`` nor ``-1``/``None``, an unknown dtype, or a
            pad value that does not fit it.
    """

    DESCRIPTION: ClassVar[str] = "n-d tensor"

    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32
    pad_value: float = 0

    def __init__(
        self,
        feature_id: str,
        shape: Sequence[int | None] | int = (),
        dtype: torch.dtype | str = torch.float32,
        pad_value: float = 0,
    ) -> None:
        self.feature_id = feature_id
        self.shape = shape  # type: ignore[assignment]  # normalized by __post_init__
        self.dtype = dtype  # type: ignore[assignment]
        self.pad_value = pad_value
        self.__post_init__()

    def __post_init__(self) -> None:
        raw: Any = self.shape
        dims = (raw,) if isinstance(raw, int) else tuple(-1 if d is None else d for d in raw)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in dims):
            raise BatchError(f"{self.feature_id}: shape {raw!r} takes ints >= 0, -1 or None")
        self.shape, self.dtype = dims, as_torch_dtype(self.dtype)
        self.pad_value = _fitted(self.pad_value, self.dtype, self.feature_id)
        # numpy assembles each batch; a dtype numpy lacks is built in float32, then converted
        self._work: np.dtype[Any] = numpy_dtype(self.dtype) or np.dtype(np.float32)

    @property
    def varies(self) -> bool:
        """Whether a dimension varies by batch (the field then needs ``is_agg=True``)."""
        return -1 in self.shape

    def encode(self, value: Any) -> torch.Tensor:
        """Return one value as a tensor of :attr:`shape` (its own size on varying dims).

        Raises:
            BatchError: the value is not numeric, or not of :attr:`shape`.
        """
        return self._assemble([value], pad=False)[0]

    def encode_many(self, values: Sequence[Any]) -> torch.Tensor:
        """Return ``(len(values), *shape)`` (one buffer, no stack); shapes must agree.

        Raises:
            BatchError: a value is not numeric, or not of :attr:`shape`, or shapes differ.
        """
        if not encodes_many(type(self)):
            return super().encode_many(values)
        stacked = self._stack(values)
        return self._assemble(values, pad=False) if stacked is None else stacked

    def _stack(self, values: Sequence[Any]) -> torch.Tensor | None:
        """Rows that are dense CPU tensors of exactly :attr:`dtype` and :attr:`shape`, stacked.

        ``torch.stack`` copies their bits as the numpy assembly would, a tenth of its cost for
        rows of 64 values. Types and dtypes are checked first (two set comprehensions, a quarter
        of the cost of checking row by row); ``torch.stack`` checks the shapes and devices, and
        the result shows another layout, device or shape: those rows (``None``) are assembled
        instead, as are rows that are not all plain tensors of :attr:`dtype`.
        """
        if -1 in self.shape or self.dtype.is_complex or numpy_dtype(self.dtype) is None:
            return None
        if not values or {type(v) for v in values} != {torch.Tensor}:
            return None
        if {v.dtype for v in values} != {self.dtype}:
            return None
        try:
            with torch.no_grad():
                out = torch.stack(list(values))
        except RuntimeError:  # shapes or devices differ
            return None
        if out.layout is not torch.strided or not out.is_cpu:
            return None
        return out if out.shape[1:] == torch.Size(self.shape) else None

    def encode_batch(self, values: Sequence[Any]) -> torch.Tensor:
        """Return ``(len(values), *shape)``, varying dims right-padded with :attr:`pad_value`.

        Raises:
            BatchError: a value is not numeric, or not of :attr:`shape`.
        """
        return self._assemble(values, pad=True)

    def _assemble(self, values: Sequence[Any], pad: bool) -> torch.Tensor:
        arrays = [self._checked(v) for v in values]
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1 and not pad:
            raise BatchError(f"{self.feature_id}: shapes {sorted(sizes)} differ")
        longest = (
            tuple(max(dims) for dims in zip(*sizes, strict=True))
            if arrays
            else tuple(max(d, 0) for d in self.shape)
        )
        out = np.full((len(arrays), *longest), self.pad_value, dtype=self._work)
        for i, array in enumerate(arrays):  # one copy and cast each, into a buffer of our own
            region: tuple[int | slice, ...] = (i, *(slice(0, n) for n in array.shape))
            out[region] = array
        tensor = torch.from_numpy(out)
        return tensor if tensor.dtype == self.dtype else tensor.to(self.dtype)

    def _checked(self, value: Any) -> np.ndarray[Any, Any]:
        try:
            array = _as_array(value)
        except (ValueError, TypeError) as exc:
            raise BatchError(f"{self.feature_id}: not an array: {exc}") from None
        if array.dtype.kind not in ("biufc" if self._work.kind == "c" else "biuf"):
            raise BatchError(f"{self.feature_id}: values of dtype {array.dtype} are not numbers")
        if len(array.shape) != len(self.shape) or any(
            d >= 0 and d != n for d, n in zip(self.shape, array.shape, strict=True)
        ):
            raise BatchError(
                f"{self.feature_id}: expected shape {_dims(self.shape)}, got {_dims(array.shape)}"
            )
        return array

    def metadata(self) -> VectorizerMetadata:
        """Metadata with the pad value of the varying dimensions."""
        meta = super().metadata()
        extra = {**meta.extra, "pad_value": self.pad_value}
        return VectorizerMetadata(**{**meta.__dict__, "extra": extra})


def _fitted(pad: Any, dtype: torch.dtype, feature_id: str) -> float:
    """``pad`` as a plain number of ``dtype``'s kind (``int`` or ``float``).

    Raises:
        BatchError: ``pad`` is no number, or ``dtype`` cannot hold it (a fraction or an
            out-of-range integer, a finite float that overflows).
    """
    if isinstance(pad, np.generic):
        pad = pad.item()
    if not isinstance(pad, (int, float)):
        raise BatchError(f"{feature_id}: pad_value {pad!r} is not a number")
    if dtype.is_floating_point or dtype.is_complex:
        if math.isfinite(pad) and not torch.tensor(float(pad)).to(dtype).isfinite().all():
            raise BatchError(f"{feature_id}: pad_value {pad!r} overflows {dtype}")
        return float(pad)
    low, high = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if not (math.isfinite(pad) and pad == int(pad) and low <= int(pad) <= high):
        raise BatchError(f"{feature_id}: pad_value {pad!r} does not fit {dtype}")
    return int(pad)


def _dims(shape: Sequence[int]) -> str:
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


@dataclass
class MultiLabelFeatureVectorizer(CategoryEncodableFeatureVectorizer):
    """Encodes a set of class labels as a k-hot ``float32`` vector of ``len(categories)``.

    The value is an iterable of labels (a list, tuple, set or numpy array; empty for none),
    each matched as :class:`CategoryEncodableFeatureVectorizer` matches one label. Train with
    ``binary_cross_entropy_with_logits``.
    """

    DESCRIPTION: ClassVar[str] = "multi-label k-hot"

    def encode(self, value: Any) -> torch.Tensor:
        """Return the k-hot vector of the labels in ``value``.

        Raises:
            BatchError: a label is no category, or ``value`` is not an iterable of labels.
        """
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                raise BatchError(f"{self.feature_id}: labels of shape {value.shape}, not 1-d")
        elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise BatchError(
                f"{self.feature_id}: multi-label values are iterables of labels, not a "
                f"{type(value).__name__} ({value!r:.60})"
            )
        vec = torch.zeros(len(self.categories), dtype=torch.float32)
        indices = [self.index(label) for label in value]
        vec[indices] = 1.0
        return vec

    @property
    def dtype(self) -> torch.dtype:
        """``float32``."""
        return torch.float32

    @property
    def shape(self) -> tuple[int, ...]:
        """``(number of classes,)``."""
        return (len(self.categories),)

    def metadata(self) -> VectorizerMetadata:
        """Metadata listing the classes, marked multi-label."""
        meta = super().metadata()
        extra = {**meta.extra, "multi_label": True}
        return VectorizerMetadata(**{**meta.__dict__, "extra": extra})
