"""The import rules of the layers: arrows run one way, the client never imports the service.

Every ``import batchstash...`` and relative import in the packages, type-checking blocks
included, is checked against the layer table below (DESIGN.md, "The store-centric core"), and
no module takes another's private (leading underscore) names.
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
# where a layer may use only some modules of another one, the rest being that layer's inside:
# the api serves from the store's reader and runs the prime job. It also names the backend
# interface (opening a store by URL, the sendable objects the reader returns), the records and
# the compressed objects (store.codec) the reader returns, never a backend; it is given what a
# prime needs (prime.inputs, built from the dataset factory), never the stash.
ONLY = {
    "service.api": {
        "service.store": {
            "batchstash.service.store.reader",
            "batchstash.service.store.backend",
            "batchstash.service.store.codec",
            "batchstash.service.store.records",
        },
        "service.prime": {"batchstash.service.prime.job", "batchstash.service.prime.inputs"},
    },
    "service.server": {"service.prime": {"batchstash.service.prime.run"}},
}
# the routes serve from the server state (the store's reader and the job) alone
ROUTES_ALLOWED = {"client", "service.api"}


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


MODULES = modules()
NAMES = {name for name, _ in MODULES}


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    anchor = base[: len(base) - node.level + 1]
    return ".".join(anchor + ([node.module] if node.module else []))


def imports_of(name: str, path: Path) -> set[str]:
    """The batchstash modules ``name`` imports (``from pkg import module`` names the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("batchstash.")}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path, node)
            if not target.startswith("batchstash."):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                out.add(submodule if submodule in NAMES else target)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(name: str, path: Path) -> set[tuple[str, str, str]]:
    """``(module, source, name)`` for each private name ``name`` takes from another module.

    A private name imported (``from .x import _y``), a private module imported, or a private
    attribute read off an imported module (``from . import x`` then ``x._y``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    bound: dict[str, str] = {}  # local name -> the batchstash module it is
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("batchstash."):
                    parts = alias.name.split(".")
                    found |= {(name, alias.name, p) for p in parts if _private(p)}
                    if alias.asname:
                        bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path, node)
            if not target.startswith("batchstash."):
                continue
            found |= {(name, target, p) for p in target.split(".") if _private(p)}
            for alias in node.names:
                if _private(alias.name):
                    found.add((name, target, alias.name))
                elif f"{target}.{alias.name}" in NAMES:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
        ):
            found.add((name, bound[node.value.id], node.attr))
    return found


def test_every_module_is_in_a_layer() -> None:
    unknown = {layer_of(n) for n, _ in MODULES} - set(ALLOWED)
    assert not unknown


def test_every_module_the_rules_name_exists() -> None:
    named = {m for rules in ONLY.values() for modules in rules.values() for m in modules}
    assert named <= NAMES, sorted(named - NAMES)


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[n for n, _ in MODULES])
def test_imports_follow_the_layers(name: str, path: Path) -> None:
    mine = layer_of(name)
    allowed = ALLOWED[mine]
    if allowed is None:
        return
    if ".api.routes" in name:
        allowed = ROUTES_ALLOWED
    only = ONLY.get(mine, {})
    wrong = sorted(
        target
        for target in imports_of(name, path)
        if layer_of(target) != mine
        and (
            layer_of(target) not in allowed
            or (layer_of(target) in only and target not in only[layer_of(target)])
        )
    )
    assert not wrong, f"{name} ({mine}) imports {wrong}"


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[n for n, _ in MODULES])
def test_no_module_takes_another_modules_private_names(name: str, path: Path) -> None:
    taken = private_uses(name, path)
    assert not taken, f"{name} takes private names: {sorted(taken)}"


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
        "from ..store import layout\n"
        "if TYPE_CHECKING:\n    from batchstash.service.api import create_app\n"
    )
    found = imports_of("batchstash.service.store.x", fake)
    assert found == {
        "batchstash.service.stash",
        "batchstash.service.store.layout",
        "batchstash.service.api",
    }


def test_the_checker_sees_private_names_however_they_are_taken(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text(
        "from __future__ import annotations\n"
        "from .reader import _IDENTITY, StoreReader\n"
        "from . import layout\n"
        "import batchstash.service.store.lease as lease\n"
        "def f():\n    return layout._GROUP, lease._owner(), layout.BATCHES, StoreReader.__name__\n"
    )
    found = private_uses("batchstash.service.store.x", fake)
    assert found == {
        ("batchstash.service.store.x", "batchstash.service.store.reader", "_IDENTITY"),
        ("batchstash.service.store.x", "batchstash.service.store.layout", "_GROUP"),
        ("batchstash.service.store.x", "batchstash.service.store.lease", "_owner"),
    }


def test_the_api_may_not_reach_the_stash_or_a_backend(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text(
        "from batchstash.service.stash import BatchStash\n"
        "from batchstash.service.store.local import LocalBackend\n"
        "from batchstash.service.prime.run import prime_store\n"
        "from batchstash.service.store.reader import StoreReader\n"
    )
    imported = imports_of("batchstash.service.api.x", fake)
    only = ONLY["service.api"]
    refused = {
        t
        for t in imported
        if layer_of(t) not in ALLOWED["service.api"]
        or (layer_of(t) in only and t not in only[layer_of(t)])
    }
    assert refused == {
        "batchstash.service.stash",
        "batchstash.service.store.local",
        "batchstash.service.prime.run",
    }


# registries that import the implementation a URL or a name asks for, when asked: the
# implementations import the registry's interface (cycles through a call, never at import)
REGISTRY_EDGES = {
    ("batchstash.service.store.backend", "batchstash.service.store.local"),
    ("batchstash.service.store.backend", "batchstash.service.store.s3"),
    ("batchstash.service.prime.executors", "batchstash.service.prime.ray_executor"),
}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (module -> modules it imports), each once."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles_in_the_service_but_its_registries() -> None:
    graph = {
        name: {m for m in imports_of(name, path) if m in NAMES and m != name}
        - {b for a, b in REGISTRY_EDGES if a == name}
        for name, path in MODULES
        if path.name != "__init__.py"  # packages re-export lazily
    }
    cycles = [c for c in import_cycles(graph) if c[0].startswith("batchstash.service")]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    for registry, implementation in REGISTRY_EDGES:
        assert implementation in imports_of(registry, dict(MODULES)[registry])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
