"""What a prime is given: the encoder, the store, the executor and how workers rebuild the dataset.

The server, the one-shot prime job and ``BatchStash.prime`` all hand a prime these directly;
none of them passes a stash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..encode import Encoder
from ..store.backend import StoreBackend
from .executors import Executor, make_executor
from .work import Dataset, Recipe

__all__ = ["PrimeInputs"]


@dataclass(frozen=True)
class PrimeInputs:
    """Everything a prime needs.

    Attributes:
        encoder: the dataset definition (encodes in this process, plans, fingerprints).
        backend: the store.
        executor: where the encoding runs.
        recipe: how workers rebuild the dataset (``None``: only the inline executor can prime).
        decoded_attributes: the attributes the store serves by default (``None``: all).
        chunk_size: id sets per task (``0``: automatic).
        compression: how batch objects are stored: ``none``, ``zstd`` or ``auto`` (see
            :mod:`~batchstash.service.store.codec`).
        compression_level: the zstd level.
        verify: read and verify every stored object at the start, instead of trusting a
            listing checked against the ledger (see :mod:`.resume`).
    """

    encoder: Encoder
    backend: StoreBackend
    executor: Executor
    recipe: Recipe | None = None
    decoded_attributes: frozenset[str] | None = None
    chunk_size: int = 0
    compression: str = "none"
    compression_level: int = 3
    verify: bool = False

    @classmethod
    def of(
        cls,
        dataset: Dataset,
        recipe: Recipe | None = None,
        *,
        executor: str = "process",
        workers: int = 0,
        chunk_size: int = 0,
        compression: str = "none",
        compression_level: int = 3,
        verify: bool = False,
        **executor_options: Any,
    ) -> PrimeInputs:
        """What priming takes from a built dataset, with the executor named.

        Args:
            dataset: what a dataset factory built (a ``BatchStash``).
            recipe: how workers rebuild it.
            executor: a key of :data:`~.executors.EXECUTORS`.
            workers: its workers (``0``: inline).
            chunk_size: id sets per task (``0``: automatic).
            compression: ``none``, ``zstd`` or ``auto``.
            compression_level: the zstd level.
            verify: read every stored object at the start (see :mod:`.resume`).
            **executor_options: the executor's own options, by name (see
                :func:`~.executors.make_executor`).
        """
        decoded = dataset.decoded_attributes
        return cls(
            dataset.encoder,
            dataset.backend,
            make_executor(executor, workers, **executor_options),
            recipe,
            None if decoded is None else frozenset(decoded),
            chunk_size,
            compression,
            compression_level,
            verify,
        )

    @classmethod
    def from_factory(cls, factory: str, kwargs: Mapping[str, Any], **options: Any) -> PrimeInputs:
        """Build the dataset with its factory; workers rebuild it the same way.

        Args:
            factory: ``package.module:function`` returning a ``BatchStash``.
            kwargs: the factory's JSON-able keyword arguments.
            **options: the executor and its options, as :meth:`of` takes them.

        Raises:
            BatchError: the factory cannot be imported, fails, or builds no ``BatchStash``;
                the executor is unknown.
        """
        recipe = Recipe(factory, dict(kwargs))
        return cls.of(recipe.build(), recipe, **options)
