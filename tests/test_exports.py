"""Public API: each package's ``__all__`` is sorted and resolvable; trainers find what they use."""

from __future__ import annotations

import importlib
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


# what a trainer's code and the README use: each must be importable from the package itself
CLIENT_API = {
    "Batch",
    "BatchClient",
    "BatchDataset",
    "BatchFeatureMapping",
    "BatchIterator",
    "BatchMetadata",
    "BatchSource",
    "EpochPlan",
    "MetadataNetworkSettings",
    "NotPrimedError",
    "PlanError",
    "RedealtBatchId",
    "RetryPolicy",
    "TransportError",
    "resolve_rank",
    "wire",
}


def test_the_client_exports_what_trainers_use():
    missing = CLIENT_API - set(batchstash.client.__all__)
    assert not missing, f"batchstash.client does not export {sorted(missing)}"
    for name in CLIENT_API:
        assert getattr(batchstash.client, name) is not None


# what a dataset's code uses: each from batchstash.service, the very class its module defines
SERVICE_API = {
    "BatchStash": "batchstash.service.stash",
    "DataPoint": "batchstash.service.dataset.datapoint",
    "RowDataPoint": "batchstash.service.dataset.datapoint",
    "CategoryEncodableFeatureVectorizer": "batchstash.service.dataset.vectorize",
    "TokenIdFeatureVectorizer": "batchstash.service.dataset.vectorize",
    "TensorFeatureVectorizer": "batchstash.service.dataset.tensors",
    "MultiLabelFeatureVectorizer": "batchstash.service.dataset.tensors",
}


@pytest.mark.parametrize(("name", "module"), sorted(SERVICE_API.items()))
def test_the_service_exports_what_datasets_use(name, module):
    import batchstash.service as service

    assert name in service.__all__ and name in dir(service)
    assert getattr(service, name) is getattr(importlib.import_module(module), name)


def test_wire_classes_are_reached_through_the_wire_namespace():
    from batchstash.client import wire

    assert "wire" in batchstash.client.__all__
    assert {"Header", "Payload", "TensorEntry"} <= set(wire.__all__)


def test_service_reexports_client_objects():
    import batchstash.service as service

    shared = set(service.__all__) & set(batchstash.client.__all__)
    assert {"Batch", "BatchMetadata", "TorchConfig"} <= shared
    for name in shared:
        assert getattr(service, name) is getattr(batchstash.client, name)
