"""Shared fixtures: temporary store paths, example stashes, an environment for spawned workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _importable_tests() -> Iterator[None]:
    """Let spawned priming workers import ``tests.*`` factories, however pytest was started."""
    with pytest.MonkeyPatch.context() as mp:
        current = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), current) if p))
        mp.syspath_prepend(str(REPO_ROOT))
        yield


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A store directory that does not exist yet."""
    return tmp_path / "store"


@pytest.fixture
def make_iris(tmp_path: Path) -> Callable[..., Any]:
    """Build the iris example stash under ``tmp_path`` (``name`` picks a sub-directory)."""
    from batchstash.service.examples import iris

    def make(name: str = "iris", **kwargs: Any) -> Any:
        return iris(path=str(tmp_path / name), **kwargs)

    return make


@pytest.fixture
def make_text(tmp_path: Path) -> Callable[..., Any]:
    """Build the text example stash under ``tmp_path`` (``name`` picks a sub-directory)."""
    from batchstash.service.examples import text

    def make(name: str = "text", **kwargs: Any) -> Any:
        return text(path=str(tmp_path / name), **kwargs)

    return make
