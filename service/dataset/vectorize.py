"""The engine's feature vectorizers: class labels, one-hot classes, numeric vectors and tokens.

Each turns one feature of a data point into a tensor, as
:class:`~batchstash.service.dataset.vectorizer_base.FeatureVectorizer` (re-exported here, with
:func:`encodes_many` and :func:`code_digest`) describes; subclass it to write your own. A
vectorizer's configuration names its class by this module's path, so the stores made with
these classes are found by that name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from batchstash.client import BatchError, VectorizerMetadata

from .describe import code_digest as code_digest
from .fingerprint import type_name
from .vectorizer_base import FeatureVectorizer
from .vectorizer_base import encodes_many as encodes_many

__all__ = [
    "CategoryEncodableFeatureVectorizer",
    "FeatureVectorizer",
    "OneHotEncodedFeatureVectorizer",
    "SeriesFeatureVectorizer",
    "TokenIdFeatureVectorizer",
    "TokenLengthFeatureVectorizer",
]


def _category(value: Any) -> tuple[str, str | int] | None:
    """``(type family, plain value)`` of a class label; ``None`` for other types.

    ``int`` and numpy integers are one family, ``str`` and numpy strings another, ``bool`` and
    numpy booleans a third: ``1`` and ``np.int64(1)`` are the same class, ``"1"`` and ``True``
    are not that class.
    """
    if isinstance(value, (bool, np.bool_)):
        return "bool", bool(value)
    if isinstance(value, (int, np.integer)):
        return "int", int(value)
    if isinstance(value, (str, np.str_)):
        return "str", str.__str__(value)
    return None


def _labelled(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type_name(value)})"


@dataclass
class CategoryEncodableFeatureVectorizer(FeatureVectorizer):
    """Encodes a class label as its index in :attr:`categories` (class <-> index).

    The vectorizer of integer and string class labels alike: categories are strings, integers
    or booleans (numpy's included, kept as Python values), and the encoded label is a scalar
    ``int64`` index (what ``cross_entropy`` takes). A label matches a category of equal value
    in the same family: ``1`` and ``np.int64(1)`` match ``1``, while ``"1"`` (say, read from a
    CSV) matches ``"1"`` only. For integer labels ``0..k-1``, ``categories=range(k)`` maps each
    label to itself. Use :class:`OneHotEncodedFeatureVectorizer` for a one-hot vector and
    :class:`~batchstash.service.MultiLabelFeatureVectorizer` for several labels a data point.

    Attributes:
        categories: the classes, in index order.
    """

    DESCRIPTION: ClassVar[str] = "category label index"

    categories: Sequence[str | int] = ()

    def __post_init__(self) -> None:
        keys = []
        for value in self.categories:
            key = _category(value)
            if key is None:
                raise BatchError(
                    f"{self.feature_id}: category {_labelled(value)} is not a str, int or bool"
                )
            keys.append(key)
        if len(set(keys)) != len(keys) or not keys:
            raise BatchError(f"{self.feature_id}: categories must be unique and non-empty")
        self.categories = tuple(k[1] for k in keys)
        self._index = {k: i for i, k in enumerate(keys)}
        # plain str, int and bool labels by exact type: one lookup (True is not 1 here either)
        self._plain = {(type(k[1]), k[1]): i for i, k in enumerate(keys)}

    def index(self, value: Any) -> int:
        """Return the index of class ``value``.

        Raises:
            BatchError: ``value`` is no category (the message shows values with their types).
        """
        key = _category(value)
        found = None if key is None else self._index.get(key)
        if found is None:
            known = ", ".join(_labelled(c) for c in self.categories[:20])
            more = f", ... ({len(self.categories)} in all)" if len(self.categories) > 20 else ""
            raise BatchError(f"unknown class {_labelled(value)}; known: {known}{more}")
        return found

    def get_classes(self, indices: Iterable[int]) -> list[str | int]:
        """Map indices back to the categories themselves."""
        return [self.categories[int(i)] for i in indices]

    def encode(self, value: Any) -> torch.Tensor:
        """Return the class index as a scalar ``int64`` tensor."""
        return torch.tensor(self.index(value), dtype=torch.int64)

    def encode_many(self, values: Sequence[Any]) -> torch.Tensor:
        """Return the class indices as one ``int64`` vector."""
        if not encodes_many(type(self)):
            return super().encode_many(values)
        plain, index = self._plain, self.index
        try:
            found = [plain.get((type(v), v)) for v in values]
        except TypeError:  # an unhashable value: refused below
            found = [None]
        if None in found:  # numpy scalars, unknown labels: the full match and its errors
            found = [index(v) for v in values]
        return torch.tensor(found, dtype=torch.int64)

    @property
    def dtype(self) -> torch.dtype:
        """``int64`` (what ``cross_entropy`` takes)."""
        return torch.int64

    def metadata(self) -> VectorizerMetadata:
        """Metadata listing the classes (JSON strings, integers or booleans)."""
        meta = super().metadata()
        return VectorizerMetadata(**{**meta.__dict__, "classes": tuple(self.categories)})


@dataclass
class OneHotEncodedFeatureVectorizer(CategoryEncodableFeatureVectorizer):
    """Encodes a class as a one-hot ``float32`` vector of ``len(categories)``."""

    DESCRIPTION: ClassVar[str] = "one-hot category"

    def encode(self, value: Any) -> torch.Tensor:
        """Return the one-hot vector of ``value``."""
        vec = torch.zeros(len(self.categories), dtype=torch.float32)
        vec[self.index(value)] = 1.0
        return vec

    def encode_many(self, values: Sequence[Any]) -> torch.Tensor:
        """Return the one-hot vectors of ``values``, one row each."""
        if not encodes_many(type(self)):
            return super().encode_many(values)
        rows = torch.zeros(len(values), len(self.categories), dtype=torch.float32)
        rows[torch.arange(len(values)), [self.index(v) for v in values]] = 1.0
        return rows

    @property
    def dtype(self) -> torch.dtype:
        """``float32``."""
        return torch.float32

    @property
    def shape(self) -> tuple[int, ...]:
        """``(number of classes,)``."""
        return (len(self.categories),)


@dataclass
class SeriesFeatureVectorizer(FeatureVectorizer):
    """Encodes a fixed-length sequence of numbers as a ``float32`` vector.

    Attributes:
        dims: the number of values each data point has.
    """

    DESCRIPTION: ClassVar[str] = "numeric vector"

    dims: int = 1

    def encode(self, value: Any) -> torch.Tensor:
        """Return ``value`` as a float vector, checking its length."""
        vec = torch.as_tensor([float(v) for v in value], dtype=torch.float32)
        if vec.shape != (self.dims,):
            raise BatchError(f"{self.feature_id}: expected {self.dims} values, got {len(vec)}")
        return vec

    def encode_many(self, values: Sequence[Any]) -> torch.Tensor:
        """Return ``(len(values), dims)``, checking each length."""
        if not encodes_many(type(self)):
            return super().encode_many(values)
        rows = [[float(v) for v in value] for value in values]
        if any(len(row) != self.dims for row in rows):
            raise BatchError(f"{self.feature_id}: a value has not {self.dims} values")
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(dims,)``."""
        return (self.dims,)


@dataclass
class TokenIdFeatureVectorizer(FeatureVectorizer):
    """Maps token sequences to ids, padded to the batch's longest sequence (an ``is_agg`` field).

    Ids: :attr:`PAD` ``= 0`` pads each sequence on the right to the batch's longest,
    :attr:`UNK` ``= 1`` is a token not in the vocabulary, and ``vocab[i]`` is id ``i + 2``; so
    an embedding layer takes ``vocab_size = len(vocab) + 2`` and ``padding_idx=0``, and the
    mask of the real tokens is ``ids != 0``. The metadata's ``extra`` holds ``pad_id`` (also as
    ``pad_value``) and ``unk_id``. Without ``is_agg=True`` the sequences of a batch must all be
    of one length.

    Attributes:
        vocab: the tokens; id ``i + 2`` is ``vocab[i]``; id 0 pads, id 1 is unknown.
        max_length: sequences are cut to this many tokens.
    """

    DESCRIPTION: ClassVar[str] = "token ids padded to the longest sequence"
    PAD: ClassVar[int] = 0
    UNK: ClassVar[int] = 1

    vocab: Sequence[str] = ()
    max_length: int = 512

    def __post_init__(self) -> None:
        self.vocab = tuple(self.vocab)
        self._ids = {tok: i + 2 for i, tok in enumerate(self.vocab)}

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Return the ids of ``tokens`` (cut to ``max_length``)."""
        return [self._ids.get(t, self.UNK) for t in tokens[: self.max_length]]

    def encode(self, value: Any) -> torch.Tensor:
        """Return one sequence's ids (unpadded)."""
        return torch.tensor(self.ids(value), dtype=torch.int64)

    def encode_batch(self, values: Sequence[Any]) -> torch.Tensor:
        """Return ``[batch, longest]`` ids, right-padded with :attr:`PAD` (``0``)."""
        rows = [self.ids(v) for v in values]
        out = torch.full(
            (len(rows), max((len(r) for r in rows), default=0)), self.PAD, dtype=torch.int64
        )
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return out

    @property
    def dtype(self) -> torch.dtype:
        """``int64``."""
        return torch.int64

    @property
    def shape(self) -> tuple[int, ...]:
        """``(-1,)``: the length varies by batch."""
        return (-1,)

    def metadata(self) -> VectorizerMetadata:
        """Metadata with the vocabulary size (pad and unknown ids included)."""
        meta = super().metadata()
        return VectorizerMetadata(
            **{
                **meta.__dict__,
                "vocab_size": len(self.vocab) + 2,
                "extra": {"pad_id": self.PAD, "unk_id": self.UNK, "pad_value": self.PAD},
            }
        )


@dataclass
class TokenLengthFeatureVectorizer(FeatureVectorizer):
    """Records each token sequence's length (cut to ``max_length``), as ``int64``.

    Attributes:
        max_length: must equal the token id vectorizer's so lengths match the padded ids.
    """

    DESCRIPTION: ClassVar[str] = "token sequence lengths"

    max_length: int = 512

    def encode(self, value: Any) -> torch.Tensor:
        """Return the (cut) length of one sequence."""
        return torch.tensor(min(len(value), self.max_length), dtype=torch.int64)

    @property
    def dtype(self) -> torch.dtype:
        """``int64``."""
        return torch.int64
