"""Exact JSON descriptions of vectorizer configuration, and digests of a vectorizer's code.

:meth:`~batchstash.service.dataset.vectorizer_base.FeatureVectorizer.config` describes each field
with :func:`jsonable`: JSON values as they are, containers item by item, dtypes, enums, classes
and dataclasses by name, and anything else (a numpy array, a tensor...) by its content digest.
:func:`code_digest` covers the source of a user's own vectorizer classes. Both go into the
store's configuration hash, so what they write names stores on disk.
"""

from __future__ import annotations

import enum
import inspect
import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
import xxhash

from batchstash.client import BatchError

from .fingerprint import ContentHasher, Unfingerprintable, type_name

__all__ = ["code_digest", "jsonable"]


def code_digest(cls: type) -> str:
    """A digest of the source of ``cls`` and its bases outside batchstash (``""`` if unreadable).

    batchstash's own vectorizers are covered by the payload and store format versions; a
    user's class is hashed so an edit to its ``encode`` turns the store stale.
    """
    digest = xxhash.xxh3_64()
    for klass in cls.__mro__:
        if klass.__module__.startswith(("batchstash.", "builtins", "abc")):
            continue
        try:
            digest.update(inspect.getsource(klass).encode())
        except (OSError, TypeError):  # defined in a REPL or a C extension
            digest.update(klass.__qualname__.encode())
    return str(digest.hexdigest())


def jsonable(value: Any, where: str) -> Any:
    """``value`` as exact JSON: anything that is not JSON by its content digest.

    Raises:
        BatchError: a value (or one inside it) that cannot be fingerprinted.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value  # subclasses (bool, numpy's float64, str enums) dump as their value
    if isinstance(value, Mapping):
        return {
            k if isinstance(k, str) else f"{type_name(k)}:{json.dumps(jsonable(k, where))}": (
                jsonable(v, where)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(json.dumps(jsonable(v, where), sort_keys=True) for v in value)}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, np.dtype):
        return {"numpy_dtype": str(np.lib.format.dtype_to_descr(value))}
    if isinstance(value, enum.Enum):
        return {"enum": type_name(value), "value": jsonable(value.value, where)}
    if isinstance(value, type):
        return {"class": f"{value.__module__}.{value.__qualname__}", "code": code_digest(value)}
    if is_dataclass(value):
        return {
            "class": type_name(value),
            **{f.name: jsonable(getattr(value, f.name), where) for f in fields(value)},
        }
    hasher = ContentHasher()
    try:
        hasher.update(value)
    except Unfingerprintable as exc:
        raise BatchError(f"{exc.message(where)}; or override config() to describe it") from None
    return {"content": hasher.hexdigest()}
