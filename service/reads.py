"""The read path of ``BatchStash``: stored batches as payloads or as decoded batches.

Payloads serve the HTTP API without decoding; :class:`Batch` objects are for use in process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from batchstash.client import (
    Batch,
    BatchMetadata,
    CorruptStoreError,
    NotFoundError,
    NotPrimedError,
    PayloadError,
    TorchConfig,
    wire,
)

from .stash.idset import DataPointIDSet
from .store.composite import CompositeBatchStore

__all__ = ["StashReads"]


class StashReads:
    """Reading stored batches, mixed into ``BatchStash`` (which provides what is declared here)."""

    store: CompositeBatchStore
    decoded_attributes: set[str] | None
    model_torch_config: TorchConfig
    check_fresh: Callable[[], None]
    _check_attributes: Callable[[Iterable[str] | None], None]
    _id_set: Callable[[str, int], DataPointIDSet]
    _expect: Callable[[DataPointIDSet], dict[str, str]]

    if TYPE_CHECKING:  # cached properties of BatchStash

        @property
        def batch_metadata(self) -> BatchMetadata:
            """Fields, vectorizers, shapes, dtypes and label classes of the batches."""

        @property
        def config_hash(self) -> str:
            """Hash of everything that determines the stored bytes."""

    def _resolve_attributes(self, attributes: Iterable[str] | None) -> set[str] | None:
        if attributes is None:
            return None if self.decoded_attributes is None else set(self.decoded_attributes)
        wanted = set(attributes)
        self._check_attributes(wanted)
        return wanted

    def read_sources(
        self,
        split: str,
        batch_id: int,
        attributes: Iterable[str] | None = None,
        mapped: bool = False,
        fresh: bool = False,
    ) -> tuple[DataPointIDSet, set[str] | None, list[tuple[Any, wire.Header]]]:
        """Read and verify the stored group files holding ``attributes`` of one batch.

        Each file's checksums are verified and its split, batch id and store fingerprint checked
        (the fingerprint fixes the data point ids; ``prime`` checks those too).

        Args:
            split: the split name.
            batch_id: the batch id.
            attributes: the attributes wanted (default :attr:`decoded_attributes`, or all).
            mapped: map the files read-only (serving) instead of reading writable buffers.
            fresh: the caller has just called :meth:`check_fresh` (skip it).

        Returns:
            The batch's id set, the resolved attribute names (``None``: all) and the verified
            ``(buffer, header)`` of each needed group file.

        Raises:
            NotFoundError: unknown split or batch id.
            NotPrimedError: the batch is planned but not stored yet.
            StaleStoreError: the store holds another configuration's batches.
            CorruptStoreError: a stored file fails verification.
        """
        id_set = self._id_set(split, batch_id)
        wanted = self._resolve_attributes(attributes)
        if not fresh:
            self.check_fresh()
        identity = {
            wire.KEY_SPLIT: split,
            wire.KEY_BATCH_ID: str(batch_id),
            wire.KEY_FINGERPRINT: self.config_hash,
        }
        try:
            # serving (mapped) skips the checksums of files verified since they last changed:
            # the checksums travel with the payload and every client verifies them
            sources = self.store.read_verified(
                split, batch_id, wanted, identity, mapped, trust_verified=mapped
            )
        except FileNotFoundError:
            raise NotPrimedError(f"batch {split}/{batch_id} is not encoded yet") from None
        return id_set, wanted, sources

    def payload(
        self, split: str, batch_id: int, attributes: Iterable[str] | None = None
    ) -> list[bytes | memoryview]:
        """One batch as wire payload chunks, from stored bytes without decoding them.

        When the wanted attributes are exactly one stored group file, that file is the payload,
        byte for byte (mapped, never copied); otherwise the tensors of the needed files are
        joined with :func:`wire.compose` (their checksums travel along, no re-hashing).
        """
        return self.payloads(split, [batch_id], attributes)[0]

    def payloads(
        self, split: str, batch_ids: Sequence[int], attributes: Iterable[str] | None = None
    ) -> list[list[bytes | memoryview]]:
        """Several batches' payload chunks (see :meth:`payload`), freshness checked once."""
        self.check_fresh()
        wanted_attributes = None if attributes is None else list(attributes)
        out = []
        for batch_id in batch_ids:
            id_set, wanted, sources = self.read_sources(
                split, batch_id, wanted_attributes, mapped=True, fresh=True
            )
            present = {n for _, h in sources for n in h.entries}
            names = present if wanted is None else wanted & present
            if len(sources) == 1 and names == set(sources[0][1].entries):
                out.append([sources[0][0]])
            else:
                out.append(wire.compose(sources, names, self._expect(id_set)))
        return out

    def load(self, split: str, batch_id: int, attributes: Iterable[str] | None = None) -> Batch:
        """Load one decoded batch; only the groups holding the wanted attributes are read.

        Args:
            split: the split name.
            batch_id: the batch id.
            attributes: the attributes to decode (default :attr:`decoded_attributes`, or all).
        """
        id_set, wanted, sources = self.read_sources(split, batch_id, attributes)
        tensors: dict[str, torch.Tensor] = {}
        for buf, header in sources:
            names = [n for n in header.entries if wanted is None or n in wanted]
            try:
                tensors.update(wire.decode(buf, names, verify=False).tensors)
            except PayloadError as exc:  # verified by read_sources; defensive only
                raise CorruptStoreError(exc.message) from None
        payload = wire.Payload(tensors, self._expect(id_set))
        return Batch.from_payload(payload, self.batch_metadata, self.model_torch_config)

    def get(self, split: str, batch_id: int, default: Any = None) -> Batch | Any:
        """Like :meth:`load`, but ``default`` when the batch is unknown or not stored yet."""
        try:
            return self.load(split, batch_id)
        except (NotFoundError, NotPrimedError):
            return default
