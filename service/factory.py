"""Dataset factories: the importable ``package.module:function`` that builds a stash."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from batchstash.client import BatchError

__all__ = ["load_factory"]


def load_factory(spec: str) -> Callable[..., Any]:
    """Import the stash factory named ``package.module:function``.

    Like ``uvicorn``, modules in the working directory are importable without ``PYTHONPATH``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BatchError(f"dataset factory {spec!r} must look like 'package.module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BatchError(f"cannot import dataset factory {spec!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        message = f"importing dataset factory {spec!r} failed: {type(exc).__name__}: {exc}"
        raise BatchError(message) from exc
    if not callable(factory):
        raise BatchError(f"dataset factory {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]
