"""Dataset factories: the importable ``package.module:function`` that builds a stash."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from batchstash.client import BatchError, BatchstashError

__all__ = ["call_factory", "load_factory"]


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


def call_factory(spec: str, kwargs: Mapping[str, Any]) -> Any:
    """Import the factory named ``package.module:function`` and call it with ``kwargs``.

    Whatever the user's factory raises becomes one readable line, its cause chained.

    Raises:
        BatchError: the factory cannot be imported, does not take these options, or failed.
    """
    make = load_factory(spec)
    try:
        return make(**kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise BatchError(f"dataset factory {spec!r} failed: TypeError: {exc}") from exc
        raise BatchError(
            f"dataset factory {spec!r} does not take these options "
            f"({', '.join(sorted(kwargs))}): {exc}"
        ) from None
    except BatchstashError:
        raise
    except Exception as exc:  # the user's factory: one readable line, the cause chained
        raise BatchError(f"dataset factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
