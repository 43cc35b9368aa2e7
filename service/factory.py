"""Dataset factories: the importable ``package.module:function`` that builds a stash."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from batchstash.client import BatchError

__all__ = ["load_factory"]


def load_factory(spec: str) -> Callable[..., Any]:
    """Import the stash factory named ``package.module:function``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BatchError(f"dataset factory {spec!r} must look like 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BatchError(f"cannot import dataset factory {spec!r}: {exc}") from None
    if not callable(factory):
        raise BatchError(f"dataset factory {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]
