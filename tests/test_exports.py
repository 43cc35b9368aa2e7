"""Public API: each package's ``__all__`` is sorted, resolvable and (for the client) exhaustive."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import batchstash.client

PACKAGES = [
    "batchstash.client",
    "batchstash.service",
    "batchstash.service.examples",
]
CLIENT_MODULES = sorted(
    m.name for m in pkgutil.iter_modules(batchstash.client.__path__, "batchstash.client.")
)
# programs, not API: their classes are not re-exported
CLIENT_PROGRAMS = {"batchstash.service.cli", "batchstash.client.demo"}


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 "isort-style" order: SCREAMING_CASE, then CamelCase, then everything else
    if re.fullmatch(r"[A-Z0-9_]+", name) and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def _check(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key), f"{module_name}.__all__ is not sorted"
    assert len(names) == len(set(names)), f"{module_name}.__all__ has duplicates"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_sorted_and_resolvable(package):
    _check(package)


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_module_all_is_sorted_and_resolvable(module):
    mod = importlib.import_module(module)
    if not hasattr(mod, "__all__"):
        pytest.skip(f"{module} has no __all__")
    _check(module)


def _exported_by_client(cls: type) -> bool:
    """Exported directly, or through a module the client exports as a namespace (``wire``)."""
    for name in batchstash.client.__all__:
        obj = getattr(batchstash.client, name)
        if obj is cls or (inspect.ismodule(obj) and getattr(obj, cls.__name__, None) is cls):
            return True
    return False


@pytest.mark.parametrize("module", sorted(set(CLIENT_MODULES) - CLIENT_PROGRAMS))
def test_client_exports_every_public_class(module):
    mod = importlib.import_module(module)
    public = [
        obj
        for name, obj in vars(mod).items()
        if inspect.isclass(obj) and obj.__module__ == module and not name.startswith("_")
    ]
    missing = sorted(c.__name__ for c in public if not _exported_by_client(c))
    assert not missing, f"{module} defines public classes not exported by batchstash.client"


def test_wire_classes_are_reached_through_the_wire_namespace():
    from batchstash.client import wire

    assert "wire" in batchstash.client.__all__
    assert {"Header", "Payload", "TensorEntry"} <= set(wire.__all__)
    assert _exported_by_client(wire.Payload)
    assert not _exported_by_client(type("Stray", (), {}))


def test_service_reexports_client_objects():
    import batchstash.service as service

    shared = set(service.__all__) & set(batchstash.client.__all__)
    assert {"Batch", "BatchMetadata", "TorchConfig"} <= shared
    for name in shared:
        assert getattr(service, name) is getattr(batchstash.client, name)
