"""The import rules of the layers: arrows run one way, the client never imports the service.

Every ``import batchstash...`` and relative import in the packages, type-checking blocks
included, is checked against the layer table below (DESIGN.md, "The store-centric core").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"batchstash.client": REPO / "client", "batchstash.service": REPO / "service"}

# layer -> the layers it may import (itself always)
ALLOWED = {
    "client": set(),
    "service.dataset": {"client"},
    "service.store": {"client"},
    "service.factory": {"client"},
    "service.config": {"client"},
    "service.logs": set(),
    "service.encode": {"client", "service.dataset", "service.store"},
    "service.prime": {
        "client",
        "service.dataset",
        "service.encode",
        "service.store",
        "service.factory",
        "service.logs",
    },
    "service.stash": {
        "client",
        "service.dataset",
        "service.encode",
        "service.store",
        "service.prime",
        "service.factory",
    },
    "service.examples": {"client", "service.dataset", "service.stash"},
    "service.api": {"client", "service.config", "service.store", "service.prime"},
    "service.server": {"service.api", "service.config", "service.logs", "service.prime"},
    "service.cli": {"client", "service.config", "service.server"},
    "service": None,  # the package __init__: re-exports
}
# the routes serve from the store's reader and the job alone: never the stash or the dataset
ROUTES_ALLOWED = {"client", "service.api", "service.store", "service.prime"}


def layer_of(module: str) -> str:
    """``batchstash.service.store.reader`` -> ``service.store``."""
    parts = module.split(".")[1:]
    if parts[0] == "client":
        return "client"
    return ".".join(parts[:2]) if len(parts) > 1 else "service"


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            name = ".".join([package, *[p for p in rel if p != "__init__"]])
            found.append((name, path))
    return found


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("batchstash.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("batchstash."):
                out.add(target)
    return out


MODULES = modules()


def test_every_module_is_in_a_layer() -> None:
    unknown = {layer_of(n) for n, _ in MODULES} - set(ALLOWED)
    assert not unknown


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[n for n, _ in MODULES])
def test_imports_follow_the_layers(name: str, path: Path) -> None:
    mine = layer_of(name)
    allowed = ALLOWED[mine]
    if allowed is None:
        return
    if ".api.routes" in name:
        allowed = ROUTES_ALLOWED
    wrong = sorted(
        target
        for target in imports_of(name, path)
        if layer_of(target) != mine and layer_of(target) not in allowed
    )
    assert not wrong, f"{name} ({mine}) imports {wrong}"


def test_nothing_imports_the_api_or_the_cli_but_their_entry_points() -> None:
    users = {
        name
        for name, path in MODULES
        for target in imports_of(name, path)
        if layer_of(target) in {"service.api", "service.cli"} and layer_of(name) != layer_of(target)
    }
    assert users == {"batchstash.service.server"}


def test_the_client_never_imports_the_service() -> None:
    offenders = {
        name
        for name, path in MODULES
        if name.startswith("batchstash.client")
        and any(t.startswith("batchstash.service") for t in imports_of(name, path))
    }
    assert not offenders


def test_the_checker_sees_relative_and_type_checking_imports(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..stash import BatchStash\n"
        "if TYPE_CHECKING:\n    from batchstash.service.api import create_app\n"
    )
    found = imports_of("batchstash.service.store.x", fake)
    assert found == {"batchstash.service.stash", "batchstash.service.api"}
