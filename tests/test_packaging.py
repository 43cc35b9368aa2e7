"""Packaging: the explicit package list matches the source tree; the client needs no server deps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"client": "batchstash.client", "service": "batchstash.service"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _source_packages() -> set[str]:
    found = set()
    for folder, package in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
                found.add(".".join([package, *parts]))
    return found


def test_package_dir_mapping():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {package: folder for folder, package in PACKAGE_DIRS.items()}


def test_packages_list_is_every_source_package():
    listed = _pyproject()["tool"]["setuptools"]["packages"]
    assert len(listed) == len(set(listed))
    assert set(listed) == _source_packages()


def test_typed_markers_and_example_data_are_package_data():
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for folder, package in PACKAGE_DIRS.items():
        assert "py.typed" in data[package]
        assert (ROOT / folder / "py.typed").is_file()
    assert list((ROOT / "service" / "examples" / "data").glob("*.csv"))


BLOCKER = textwrap.dedent(
    """
    import sys

    BLOCKED = {"fastapi", "uvicorn", "pydantic_settings", "starlette"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT.parent,  # not the repository: only the installed package is importable
    )


def test_client_imports_without_server_dependencies():
    result = _run(
        """
        import batchstash.client as c
        from batchstash.client import wire
        import torch
        payload = wire.encode({"x": torch.arange(3)}, {})
        assert wire.decode(payload).tensors["x"].tolist() == [0, 1, 2]
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        print("ok", c.__name__, loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok batchstash.client []"


def test_blocker_really_blocks():
    result = _run("import fastapi")
    assert result.returncode == 1
    assert "No module named 'fastapi' (blocked)" in result.stderr
