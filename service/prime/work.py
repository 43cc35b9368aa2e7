"""The work a priming worker is given: plain data naming the dataset factory, the store and plan.

A worker rebuilds the dataset from its importable factory (:class:`Recipe`), never from pickled
closures, and writes into the store the :class:`Work` names. The process pool and Ray send the
same :class:`Work` with every chunk of id sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from batchstash.client import BatchError

from ..dataset.files import CHANGED_HINT
from ..encode import Encoder
from ..factory import call_factory
from ..store.backend import StoreBackend

__all__ = ["Dataset", "Recipe", "Work"]


class Dataset(Protocol):
    """What priming takes from the object a dataset factory builds (a ``BatchStash``)."""

    @property
    def encoder(self) -> Encoder:
        """The dataset definition: encodes an id set, fingerprint, metadata."""

    @property
    def backend(self) -> StoreBackend:
        """The store the dataset was built for."""

    @property
    def decoded_attributes(self) -> set[str] | None:
        """The attributes the store serves by default (``None``: all)."""


@dataclass(frozen=True)
class Recipe:
    """How another process rebuilds the dataset: its importable factory and the factory's options.

    Attributes:
        factory: ``package.module:function`` returning a ``BatchStash``.
        kwargs: the factory's JSON-able keyword arguments (the store's ``path`` among them).
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Dataset:
        """Call the factory.

        Raises:
            BatchError: the factory cannot be imported, fails, or builds no ``BatchStash``.
        """
        built = call_factory(self.factory, self.kwargs)
        if not isinstance(getattr(built, "encoder", None), Encoder):
            raise BatchError(
                f"dataset factory {self.factory!r} returned {type(built).__name__}, "
                "not a BatchStash"
            )
        return cast(Dataset, built)


@dataclass(frozen=True)
class Work:
    """What a worker needs, besides its id sets, to encode and store them.

    Attributes:
        recipe: how to rebuild the dataset (``None``: it exists in the priming process only,
            which then encodes inline).
        store_url: the store to write into.
        fingerprint: the plan's fingerprint (workers never recompute it).
        generation: the plan's generation.
        groups: the attribute groups, each sorted.
        data_version: the priming process's data version (``SplitStashContainer.version()``):
            a worker whose rebuilt dataset has another refuses to encode (``""``: unchecked).
        codecs: each group's codec, ``(group name, "none" or "zstd-<level>")`` pairs.
    """

    recipe: Recipe | None
    store_url: str
    fingerprint: str
    generation: str
    groups: tuple[tuple[str, ...], ...]
    data_version: str = ""
    codecs: tuple[tuple[str, str], ...] = ()

    def build(self, what: str) -> Dataset:
        """Rebuild the dataset in a worker, checking its data is the priming process's.

        Raises:
            BatchError: no recipe, the factory failed, or the data changed since the prime
                started.
        """
        dataset = self.required_recipe(what).build()
        if self.data_version:
            version = dataset.encoder.split_stash_container.version()
            if version != self.data_version:
                raise BatchError(
                    "the dataset's data changed since this prime started (a priming worker "
                    f"rebuilt it and found other data): {CHANGED_HINT}"
                )
        return dataset

    def required_recipe(self, what: str, hint: str = "") -> Recipe:
        """The recipe, which ``what`` (an executor whose workers rebuild the dataset) needs.

        Raises:
            BatchError: the dataset was not built from a factory (the message ends with
                ``hint``).
        """
        if self.recipe is None:
            raise BatchError(
                f"{what} needs a stash built with "
                f"BatchStash.from_factory('package.module:function'){hint}"
            )
        return self.recipe
