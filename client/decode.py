"""Response body -> verified payloads: frames, checksums and identity (pure, no I/O).

The step between the bytes a transport received and the :class:`~batchstash.client.batch.Batch`
a client builds: the checksums are verified (or taken as verified from the
:class:`~batchstash.client.framecheck.FrameChecker` that watched the bytes land), and each
payload must be the batch that was asked for, with the attributes asked for, from the store the
epoch was planned on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import wire
from .errors import PayloadError, PlanError
from .framecheck import FrameChecker

__all__ = ["check_payload", "decode_body", "decode_frames"]


def check_payload(
    payload: wire.Payload,
    path: str,
    split: str,
    batch_id: int,
    wanted: Sequence[str] | None,
    fingerprint: str | None,
) -> wire.Payload:
    """``payload``, once it is shown to be the batch ``path`` asked for.

    Args:
        payload: a decoded payload.
        path: the request path (for the messages).
        split: the split asked for.
        batch_id: the batch asked for.
        wanted: the attributes asked for, sorted (``None``: any).
        fingerprint: the store the batch must come from (``None``: any).

    Raises:
        PayloadError: another batch, or other attributes.
        PlanError: another store.
    """
    if payload.split != split or payload.batch_id != batch_id:
        raise PayloadError(
            f"GET {path}: the payload is batch {payload.split}/{payload.batch_id}, "
            f"not {split}/{batch_id}"
        )
    if wanted is not None and sorted(payload.tensors) != list(wanted):
        raise PayloadError(f"GET {path}: the payload holds {sorted(payload.tensors)}")
    if fingerprint is not None and payload.fingerprint != fingerprint:
        raise PlanError(
            f"GET {path}: the batch comes from store {payload.fingerprint}, not "
            f"{fingerprint}; the store changed since the epoch was planned"
        )
    return payload


def decode_body(
    body: Any,
    path: str,
    split: str,
    batch_id: int,
    wanted: Sequence[str] | None,
    fingerprint: str | None,
) -> wire.Payload:
    """The verified payload of a one-batch body (see :func:`check_payload` for the checks)."""
    return check_payload(wire.decode(body), path, split, batch_id, wanted, fingerprint)


def decode_frames(
    body: Any,
    checker: FrameChecker,
    path: str,
    split: str,
    ids: Sequence[int],
    wanted: Sequence[str] | None,
    fingerprint: str | None,
) -> list[wire.Payload]:
    """The verified payloads of a frames body, one per id, in order.

    The frames ``checker`` saw land are taken as verified; the rest are verified here.

    Raises:
        PayloadError: another number of frames than ids, a malformed frame, or the errors of
            :func:`check_payload`.
        ChecksumError: a tensor's bytes are corrupt.
    """
    frames = wire.split_frames(body)
    if len(frames) != len(ids):
        raise PayloadError(f"GET {path}: {len(frames)} payloads for {len(ids)} ids")
    verified = checker.covers(body)
    headers = checker.headers
    return [
        check_payload(
            wire.decode(frame, verify=False, header=headers[i])
            if i < verified
            else wire.decode(frame),
            path,
            split,
            batch_id,
            wanted,
            fingerprint,
        )
        for i, (frame, batch_id) in enumerate(zip(frames, ids, strict=True))
    ]
