"""Fixtures shared by the client tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .test_pipeline import Stack


@pytest.fixture
def stack() -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(*args: object, **kwargs: object) -> Stack:
        made.append(Stack(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for s in made:
        s.close()
