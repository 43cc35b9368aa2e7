"""The feature vectorizer's contract: the base class every vectorizer subclasses.

A vectorizer turns one feature of a data point into a tensor. Write your own by subclassing
:class:`FeatureVectorizer`::

    @dataclass
    class LengthVectorizer(FeatureVectorizer):
        DESCRIPTION = "text length"

        def encode(self, value):               # one data point's feature -> tensor
            return torch.tensor([len(value)], dtype=torch.float32)

        @property
        def shape(self):                       # one data point's tensor shape (-1: varies)
            return (1,)

Priming checks every encoded tensor against :attr:`FeatureVectorizer.shape` and
:attr:`FeatureVectorizer.dtype`: a field's batch tensor must be ``(data points, *shape)`` (a
``-1`` or ``None`` dimension may take any size) of exactly that dtype, or the prime fails.

Fields with ``is_agg=True`` call :meth:`FeatureVectorizer.encode_batch` with the values of every
data point at once (to pad, for instance); the others call :meth:`FeatureVectorizer.encode` per
data point and stack the results, or :meth:`FeatureVectorizer.encode_many` once where the
vectorizer's class writes it for its ``encode`` (the engine's category, one-hot, series and
tensor vectorizers: one tensor a batch instead of one a value).
:meth:`FeatureVectorizer.config` goes into the store's configuration hash: include everything
that changes the tensors. It holds the class's
``VERSION`` and a digest of the source code of every class of the vectorizer's own (not
batchstash's or a library's, which their versions cover), so editing a vectorizer's code makes
the store stale; bump ``VERSION`` when what the code calls changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, ClassVar

import torch

from batchstash.client import VectorizerMetadata

from .describe import code_digest, jsonable

__all__ = ["FeatureVectorizer", "encodes_many"]


@dataclass
class FeatureVectorizer(ABC):
    """Base class of feature vectorizers.

    Attributes:
        feature_id: the unique id the field mappings refer to.
    """

    DESCRIPTION: ClassVar[str] = "feature vectorizer"
    VERSION: ClassVar[str] = "1"

    feature_id: str

    @abstractmethod
    def encode(self, value: Any) -> torch.Tensor:
        """Vectorize one data point's feature value into a tensor of shape :attr:`shape`."""

    def encode_batch(self, values: Sequence[Any]) -> torch.Tensor:
        """Vectorize every data point's value at once (``is_agg`` fields): stacks by default."""
        return torch.stack([self.encode(v) for v in values])

    def encode_many(self, values: Sequence[Any]) -> torch.Tensor:
        """The stacked :meth:`encode` of each value, in one call (fields that are not ``is_agg``).

        Override it where one call is cheaper than a tensor a value; it must give the bytes the
        stacked ``encode`` calls give. A batch calls it only when it is defined by the class
        that defines :meth:`encode` or a subclass of it (:func:`encodes_many`), so a subclass
        that overrides ``encode`` alone is encoded value by value; when it raises, the batch
        encodes value by value to name the data point that fails.
        """
        return torch.stack([self.encode(v) for v in values])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tensors."""
        return torch.float32

    @property
    def shape(self) -> tuple[int | None, ...]:
        """The shape of one data point's tensor; ``-1`` (or ``None``) where it varies by batch."""
        return ()

    def config(self) -> dict[str, Any]:
        """JSON-able configuration that determines the tensors (hashed to detect stale stores).

        Field values that are not JSON (a numpy array, a tensor...) enter by their content
        digest; override this method for a field whose content cannot be fingerprinted.

        Raises:
            BatchError: a field holds a value that cannot be described exactly.
        """
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": self.VERSION,
            "code": code_digest(type(self)),
            **{
                f.name: jsonable(
                    getattr(self, f.name), f"vectorizer {self.feature_id!r} field {f.name!r}"
                )
                for f in fields(self)
            },
        }

    def metadata(self) -> VectorizerMetadata:
        """Return the vectorizer's metadata for models and clients (``None`` dims as ``-1``).

        Its ``extra`` has ``per_row: True`` when :meth:`encode_batch` is the stacking default:
        each row of an ``is_agg`` field is then its own value's, so a client may re-deal rows
        into other batches (``shuffle_window``). A vectorizer that pads declares its pad value
        (``pad_value``) instead.
        """
        per_row = type(self).encode_batch is FeatureVectorizer.encode_batch
        return VectorizerMetadata(
            feature_id=self.feature_id,
            name=type(self).__name__,
            description=self.DESCRIPTION,
            dtype=str(self.dtype).removeprefix("torch."),
            shape=tuple(-1 if d is None else int(d) for d in self.shape),
            extra={"per_row": True} if per_row else {},
        )


@cache
def encodes_many(cls: type[FeatureVectorizer]) -> bool:
    """Whether ``cls.encode_many`` is written for ``cls.encode`` (a batch may call it then).

    True when the class defining ``encode_many`` is not :class:`FeatureVectorizer` and is the
    class defining ``encode`` or a subclass of it. The engine's own overrides fall back to the
    stacked ``encode`` calls where it is false (a user's subclass that overrides ``encode``).
    """
    many = next(c for c in cls.__mro__ if "encode_many" in c.__dict__)
    one = next(c for c in cls.__mro__ if "encode" in c.__dict__)
    return many is not FeatureVectorizer and issubclass(many, one)
