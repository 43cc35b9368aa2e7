"""The client's modules call only downward: no import cycle, no private name across modules.

Every import in ``client/*.py`` counts: at the top, under ``if TYPE_CHECKING:`` and inside
functions (a lazy import is still an arrow). The package ``__init__`` is left out: it is the
registry that re-exports every module lazily (DESIGN.md, "The client, in layers that call only
downward").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"
PACKAGE = "batchstash.client"
REGISTRIES = {"__init__"}  # lazy exports of every module: not a layer


def module_names() -> list[str]:
    return sorted(p.stem for p in CLIENT.glob("*.py") if p.stem not in REGISTRIES)


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for each client import in ``name``."""
    tree = ast.parse((CLIENT / f"{name}.py").read_text(encoding="utf-8"))
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):  # every block: TYPE_CHECKING, functions, try
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{PACKAGE}."):
                    found.append((alias.name.split(".")[2], [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            taken = [alias.name for alias in node.names]
            if node.level == 1 and node.module:
                found.append((node.module.split(".")[0], taken, node.lineno))
            elif node.level == 1:  # from . import wire
                found.extend((t, [], node.lineno) for t in taken)
            elif node.module and node.module.startswith(f"{PACKAGE}."):
                found.append((node.module.split(".")[2], taken, node.lineno))
            elif node.module == PACKAGE:
                found.extend((t, [], node.lineno) for t in taken)
    return found


def graph() -> dict[str, set[str]]:
    """Each client module -> the client modules it imports (the registry left out)."""
    names = set(module_names())
    return {
        name: {target for target, _, _ in imports(name) if target in names and target != name}
        for name in sorted(names)
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_every_kind_of_import() -> None:
    edges = graph()
    assert "engine" in edges["http"]  # top level
    assert "batch" in edges["pipeline"]  # under TYPE_CHECKING
    assert "wire" in edges["decode"]  # from . import wire
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_client() -> None:
    found = cycles(graph())
    assert found == [], f"client modules that import each other (directly or round about): {found}"


@pytest.mark.parametrize("name", module_names())
def test_no_private_name_is_imported_across_modules(name: str) -> None:
    private = [
        f"{name}.py:{line}: from .{target} import {taken}"
        for target, names, line in imports(name)
        for taken in names
        if taken.startswith("_") and not taken.startswith("__")
    ]
    assert private == [], "a module's underscore names are its own"


def test_the_layers_of_the_request_path_run_downward() -> None:
    edges = graph()
    # the iterator knows a batch source, never the HTTP client; the reader never the client
    assert "http" not in edges["iterate"] and "pipeline" not in edges["iterate"]
    assert not {"http", "iterate"} & edges["pipeline"]
    # the policy is pure: it imports no client module
    assert edges["policy"] == set()
    assert "http" not in edges["engine"] and "pipeline" not in edges["engine"]
    assert not {"engine", "http", "pipeline", "iterate"} & edges["decode"]
