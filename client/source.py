"""What an epoch iterator needs from a client: the :class:`BatchSource` protocol."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from .batch import Batch
    from .buffers import BufferPool
    from .staging import DeviceStage
    from .waits import ReadStats

__all__ = ["BatchSource", "GroupReader"]


class GroupReader(Protocol):
    """Reads an epoch's groups of batches in order (a pipelined connection, say).

    Attributes:
        pipelined: groups read on its own connection so far.
        fallbacks: groups fetched by the request path instead.
        stats: where it adds its read timings (the iterator sets it; ``None``: nowhere).
    """

    pipelined: int
    fallbacks: int
    stats: ReadStats | None

    def groups(self, groups: Sequence[list[int]]) -> Generator[list[Batch], None, None]:
        """Yield the batches of each group, in order (an error where its group is)."""
        ...


class BatchSource(Protocol):
    """Where a :class:`~batchstash.client.iterate.BatchIterator` gets its batches.

    :class:`~batchstash.client.http.BatchClient` is one; a test or another transport may be
    another. Only these methods are used: never a client's private state.
    """

    @property
    def buffers(self) -> BufferPool | None:
        """The pool bodies are received into (staging reuses it), if the source has one."""
        ...

    def split_batch_ids(self, split: str) -> tuple[str, list[int]]:
        """The store fingerprint and the batch ids of ``split``."""
        ...

    def batch(
        self,
        split: str,
        batch_id: int,
        attributes: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
    ) -> Batch:
        """One batch, verified to come from store ``fingerprint``."""
        ...

    def batches(
        self,
        split: str,
        batch_ids: Sequence[int],
        attributes: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        *,
        fingerprint: str | None = None,
    ) -> list[Batch]:
        """Several batches in one request, verified to come from store ``fingerprint``."""
        ...

    def can_pipeline(self) -> bool:
        """Whether :meth:`pipelined_reader` gives a reader now."""
        ...

    def pipelined_reader(
        self,
        split: str,
        wanted: list[str] | None,
        stage: DeviceStage | None,
        fingerprint: str,
        window: int,
    ) -> GroupReader | None:
        """A reader of an epoch's groups with ``window`` groups in flight (``None``: none)."""
        ...
