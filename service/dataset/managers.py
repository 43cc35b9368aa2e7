"""Vectorizer managers: named groups of vectorizers, and the set of a stash's managers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchstash.client import BatchError

from .vectorize import FeatureVectorizer

__all__ = ["FeatureVectorizerManager", "FeatureVectorizerManagerSet"]


@dataclass
class FeatureVectorizerManager:
    """A named group of vectorizers, looked up by feature id.

    Attributes:
        name: the name field mappings use (``vectorizer_manager_name``).
        vectorizers: the vectorizers of the manager.
    """

    name: str
    vectorizers: Sequence[FeatureVectorizer] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.vectorizers = tuple(self.vectorizers)
        self._by_id = {v.feature_id: v for v in self.vectorizers}
        if len(self._by_id) != len(self.vectorizers):
            raise BatchError(f"manager {self.name!r} has duplicate feature ids")

    def __getitem__(self, feature_id: str) -> FeatureVectorizer:
        try:
            return self._by_id[feature_id]
        except KeyError:
            raise BatchError(f"manager {self.name!r} has no vectorizer {feature_id!r}") from None

    @property
    def feature_ids(self) -> tuple[str, ...]:
        """The feature ids of the manager's vectorizers."""
        return tuple(self._by_id)


@dataclass
class FeatureVectorizerManagerSet:
    """The vectorizer managers of a stash, by name.

    Attributes:
        managers: the managers.
    """

    managers: Sequence[FeatureVectorizerManager] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.managers = tuple(self.managers)
        self._by_name = {m.name: m for m in self.managers}

    def __getitem__(self, name: str) -> FeatureVectorizerManager:
        try:
            return self._by_name[name]
        except KeyError:
            raise BatchError(f"no vectorizer manager named {name!r}") from None

    def config(self) -> dict[str, Any]:
        """JSON-able configuration of every vectorizer, for the configuration hash."""
        return {m.name: {v.feature_id: v.config() for v in m.vectorizers} for m in self.managers}
