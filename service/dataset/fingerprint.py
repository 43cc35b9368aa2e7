"""Content fingerprints of raw data: exact, streaming, never through ``repr``.

A value is fed to one ``xxh3_128`` stream as a type tag, then its dtype and shape where it has
them, then its raw bytes, so ``[1, 2]``, ``(1, 2)``, ``np.array([1, 2])`` and ``"12"`` differ
while values of equal content (and type) hash equal, wherever they live in memory. Arrays and
tensors are hashed from their own memory (a copy only when they are not C-contiguous), so the
cost is one pass over the bytes plus a few calls per Python object. The bytes of each leaf
value, length, dtype and shape are :mod:`batchstash.service.dataset.canonical`'s.

Covered: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``bytearray``,
``memoryview``, numpy arrays (object arrays element by element) and scalars, CPU torch tensors,
pandas ``DataFrame``/``Series``/``Index`` (when pandas is loaded), named tuples and
``list``/``tuple``/``dict``/``set``/``frozenset`` of those. Dict keys and set items count in no
order (they are sorted by their own digests). Anything else raises :class:`Unfingerprintable`,
which callers turn into a :class:`~batchstash.client.BatchError` naming where the value was.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import xxhash

from batchstash.client import BatchError

from .canonical import (
    LEAVES,
    array_head,
    dtype_descr,
    encode_length,
    encode_shape,
    encode_text,
    pack_int64,
    type_name,
    update_bytes,
)

__all__ = ["ContentHasher", "Unfingerprintable", "content_digest", "ordered_ids", "type_name"]

SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, bytearray, memoryview, numpy arrays and "
    "scalars, CPU torch tensors, pandas DataFrame/Series/Index, named tuples and "
    "list/tuple/dict/set/frozenset of these"
)


class Unfingerprintable(Exception):
    """A value that cannot be fingerprinted exactly.

    Args:
        value: the value (only its type is kept).
        reason: why, and what to do instead.
    """

    def __init__(self, value: Any, reason: str = "") -> None:
        self.type_name = type_name(value)
        self.reason = reason or f"fingerprints cover {SUPPORTED}"
        self.path: list[str] = []  # the keys and indices down to the value, outermost first
        super().__init__(self.type_name)

    def message(self, where: str) -> str:
        """One line naming the type, ``where`` (e.g. ``record 3``) and the path inside it."""
        at = f" (at {''.join(reversed(self.path))})" if self.path else ""
        return f"cannot fingerprint a value of type {self.type_name} in {where}{at}: {self.reason}"


class ContentHasher:
    """A streaming content hash (``xxh3_128``) of any number of values fed in order."""

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_128()
        self._key_digests: dict[str, bytes] = {}  # str dict keys repeat across records
        self._key_orders: dict[tuple[str, ...], list[tuple[bytes, Any]]] = {}

    def raw(self, data: bytes) -> None:
        """Feed bytes as they are (a domain tag or a format version)."""
        self._hash.update(data)

    def update(self, value: Any) -> None:
        """Feed one value.

        Raises:
            Unfingerprintable: the value, or one inside it, is of a type not covered.
        """
        try:
            self._feed(self._hash, value)
        except RecursionError:
            raise Unfingerprintable(value, "nested too deep, or a container holds itself") from None

    def hexdigest(self) -> str:
        """The digest of everything fed so far, as 32 hex digits."""
        return str(self._hash.hexdigest())

    def digest_of(self, value: Any) -> bytes:
        """The 16-byte digest of one value on its own (used to order keys and set items)."""
        if type(value) is str:
            cached = self._key_digests.get(value)
            if cached is None:
                cached = self._key_digests[value] = self._digest(value)
            return cached
        return self._digest(value)

    def _digest(self, value: Any) -> bytes:
        sub = xxhash.xxh3_128()
        self._feed(sub, value)
        return bytes(sub.digest())

    # the value walk -------------------------------------------------------------------------

    def _feed(self, h: Any, value: Any) -> None:
        handler = _EXACT.get(type(value))
        if handler is not None:
            handler(self, h, value)
            return
        if isinstance(value, np.ndarray):
            self._array(h, value)
        elif isinstance(value, np.generic):
            self._numpy_scalar(h, value)
        elif isinstance(value, torch.Tensor):
            self._tensor(h, value)
        elif isinstance(value, tuple) and hasattr(type(value), "_fields"):
            h.update(b"n" + encode_text(type_name(value)))
            self._sequence(h, b"(", value)
        elif not self._pandas(h, value):
            raise Unfingerprintable(value)

    def _sequence(self, h: Any, tag: bytes, items: Sequence[Any]) -> None:
        h.update(tag + encode_length(len(items)))
        for i, item in enumerate(items):
            try:
                self._feed(h, item)
            except Unfingerprintable as exc:
                exc.path.append(f"[{i}]")
                raise

    def _mapping(self, h: Any, tag: bytes, mapping: dict[Any, Any]) -> None:
        h.update(tag + encode_length(len(mapping)))
        key: Any = None
        keys = tuple(mapping)
        keyed = self._key_orders.get(keys)  # records share their str keys: sort them once
        if keyed is None or set(map(type, keys)) != {str}:
            try:
                keyed = sorted((self.digest_of(key), key) for key in keys)
            except Unfingerprintable as exc:
                exc.path.append(" (a dict key)")
                raise
            if set(map(type, keys)) == {str} and len(self._key_orders) < 1024:
                self._key_orders[keys] = keyed
        try:
            for digest, key in keyed:  # digests are unique: keys are never compared
                h.update(digest)
                self._feed(h, mapping[key])
        except Unfingerprintable as exc:
            exc.path.append(f"[{key!r}]" if len(repr(key)) < 60 else "[...]")
            raise

    def _set(self, h: Any, tag: bytes, items: Iterable[Any]) -> None:
        digests = sorted(self.digest_of(item) for item in items)
        h.update(tag + encode_length(len(digests)))
        for digest in digests:
            h.update(digest)

    def _array(self, h: Any, arr: np.ndarray[Any, Any]) -> None:
        if type(arr) is not np.ndarray and not isinstance(arr, np.memmap):
            raise Unfingerprintable(arr, "an ndarray subclass: give a plain numpy array")
        dtype = arr.dtype
        h.update(array_head(dtype) + encode_shape(arr.shape))
        if dtype.kind in "OT":  # object pointers or variable-width strings: walk the elements
            for i, item in enumerate(arr.flat):
                try:
                    self._feed(h, item)
                except Unfingerprintable as exc:
                    exc.path.append(f"[flat index {i}]")
                    raise
            return
        if dtype.hasobject:
            raise Unfingerprintable(arr, "a structured array with object fields")
        update_bytes(h, arr)

    def _numpy_scalar(self, h: Any, value: np.generic) -> None:
        dtype = value.dtype
        if dtype.hasobject or dtype.kind == "T":
            raise Unfingerprintable(value, "a numpy object scalar")
        h.update(b"g" + dtype_descr(dtype))
        update_bytes(h, np.asarray(value))

    def _tensor(self, h: Any, tensor: torch.Tensor) -> None:
        if tensor.layout != torch.strided or tensor.is_nested:
            raise Unfingerprintable(tensor, f"a {tensor.layout} tensor: give a dense tensor")
        if tensor.device.type != "cpu":
            raise Unfingerprintable(tensor, f"a tensor on {tensor.device}: move it to the CPU")
        if tensor.is_quantized:
            raise Unfingerprintable(tensor, "a quantized tensor: give its dequantized values")
        t = tensor.detach().resolve_conj().resolve_neg().contiguous()
        h.update(b"t" + encode_text(str(t.dtype)) + encode_shape(t.shape))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())

    # pandas, only when it is loaded (no value can be a pandas object otherwise) --------------

    def _pandas(self, h: Any, value: Any) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None:
            return False
        if isinstance(value, pd.DataFrame):
            h.update(b"D" + encode_length(value.shape[1]))
            self._pandas_index(h, value.columns)
            self._pandas_index(h, value.index)
            for i, (name, column) in enumerate(value.items()):
                try:
                    self._pandas_values(h, column.array)
                except Unfingerprintable as exc:
                    exc.path.append(f"[column {name!r}]" if len(repr(name)) < 60 else f"[col {i}]")
                    raise
        elif isinstance(value, pd.Series):
            h.update(b"S")
            self._feed(h, value.name)
            self._pandas_index(h, value.index)
            self._pandas_values(h, value.array)
        elif isinstance(value, pd.Index):
            self._pandas_index(h, value)
        elif value is pd.NA or value is pd.NaT:
            h.update(b"~" + encode_text(type_name(value)))
        else:
            return False
        return True

    def _pandas_index(self, h: Any, index: Any) -> None:
        pd = sys.modules["pandas"]
        h.update(b"X" + encode_text(type_name(index)))
        self._sequence(h, b"(", tuple(index.names))
        if isinstance(index, pd.RangeIndex):
            h.update(pack_int64(index.start) + pack_int64(index.stop) + pack_int64(index.step))
        elif isinstance(index, pd.MultiIndex):
            self._sequence(h, b"(", ())
            h.update(encode_length(index.nlevels))
            for level, codes in zip(index.levels, index.codes, strict=True):
                self._pandas_index(h, level)
                self._array(h, np.asarray(codes))
        else:
            self._pandas_values(h, index.array)

    def _pandas_values(self, h: Any, array: Any) -> None:
        """A pandas array: its dtype, then its values.

        Numpy-backed values go in as arrays; extension arrays as their NA mask and the values
        that are not NA (categoricals as categories and codes). ``pd.util.hash_pandas_object``
        is not used: it hashes object columns by their ``str``, so ``1`` and ``"1"`` would
        collide.
        """
        pd = sys.modules["pandas"]
        dtype = array.dtype
        h.update(b"P" + encode_text(str(dtype)))
        if isinstance(dtype, np.dtype):
            self._array(h, array.to_numpy())
            return
        if isinstance(dtype, pd.CategoricalDtype):
            h.update(b"?1" if dtype.ordered else b"?0")
            self._pandas_index(h, array.categories)
            self._array(h, np.asarray(array.codes))
            return
        mask = np.asarray(array.isna(), dtype=bool)
        self._array(h, mask)
        present = array[~mask]
        values = getattr(present, "asi8", None)  # datetimes with a time zone (in str(dtype))
        self._array(h, np.asarray(present) if values is None else np.asarray(values))


_EXACT: dict[type, Callable[[ContentHasher, Any, Any], None]] = {
    **LEAVES,
    list: lambda self, h, v: self._sequence(h, b"[", v),
    tuple: lambda self, h, v: self._sequence(h, b"(", v),
    dict: lambda self, h, v: self._mapping(h, b"{", v),
    OrderedDict: lambda self, h, v: self._mapping(h, b"{", v),
    defaultdict: lambda self, h, v: self._mapping(h, b"{", v),
    set: lambda self, h, v: self._set(h, b"<", v),
    frozenset: lambda self, h, v: self._set(h, b">", v),
    np.ndarray: lambda self, h, v: self._array(h, v),
}
"""Handlers by exact type: a subclass (an ``IntEnum``, a ``str`` subclass) may carry state its
base's bytes do not show, so it takes the slower checks and is refused unless covered there."""


def content_digest(value: Any, where: str) -> str:
    """The content digest of one value, as 32 hex digits.

    Args:
        value: the value.
        where: what it is, for the error (e.g. ``"vectorizer 'img' field 'mean'"``).

    Raises:
        BatchError: the value, or one inside it, cannot be fingerprinted exactly.
    """
    hasher = ContentHasher()
    try:
        hasher.update(value)
    except Unfingerprintable as exc:
        raise BatchError(exc.message(where)) from None
    return hasher.hexdigest()


def ordered_ids(hasher: ContentHasher, ids: Iterable[Any]) -> list[Any]:
    """Ids in an order that does not depend on how they were listed.

    All ``int`` or all ``str`` ids sort by value; any other mix sorts by content digest.
    """
    items = list(ids)
    kinds = {type(i) for i in items}
    if kinds <= {int} or kinds <= {str}:
        return sorted(items)
    keyed = sorted((hasher.digest_of(i), n) for n, i in enumerate(items))
    return [items[n] for _, n in keyed]
