"""The error hierarchy: codes, HTTP statuses, parents and code -> class mapping."""

from __future__ import annotations

import pickle

import pytest

import batchstash.client as bc
from batchstash.client import errors

# (class, code, status, parent): the table of the errors module docstring
TABLE = [
    (bc.BatchstashError, "internal_error", 500, Exception),
    (bc.BatchError, "batch_error", 500, bc.BatchstashError),
    (bc.VectorizerError, "vectorizer_error", 500, bc.BatchError),
    (bc.PrimeCancelledError, "prime_cancelled", 409, bc.BatchError),
    (bc.PayloadError, "payload_error", 502, bc.BatchstashError),
    (bc.ChecksumError, "checksum_mismatch", 502, bc.PayloadError),
    (bc.StoreError, "store_error", 500, bc.BatchstashError),
    (bc.StaleStoreError, "store_stale", 409, bc.StoreError),
    (bc.NotPrimedError, "not_primed", 503, bc.StoreError),
    (bc.StoreBusyError, "store_busy", 503, bc.StoreError),
    (bc.CorruptStoreError, "store_corrupt", 500, bc.StoreError),
    (bc.ConflictError, "conflict", 409, bc.BatchstashError),
    (bc.NotFoundError, "not_found", 404, bc.BatchstashError),
    (bc.InvalidRequestError, "invalid_request", 400, bc.BatchstashError),
    (bc.AuthError, "unauthorized", 401, bc.BatchstashError),
    (bc.PlanError, "plan_mismatch", 409, bc.BatchstashError),
    (bc.TransportError, "transport_error", 503, bc.BatchstashError),
]


@pytest.mark.parametrize(("cls", "code", "status", "parent"), TABLE, ids=lambda v: str(v))
def test_code_status_parent(cls, code, status, parent):
    assert cls.code == code
    assert cls.status == status
    assert cls.__bases__ == (parent,)
    assert errors.error_for_code(code) is cls


def test_table_covers_every_error_class():
    exported = {getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)}
    assert exported == {row[0] for row in TABLE}
    codes = [row[1] for row in TABLE]
    assert len(codes) == len(set(codes))


def test_unknown_code_maps_to_base():
    assert errors.error_for_code("no_such_code") is bc.BatchstashError


def test_message_and_pickling():
    err = bc.VectorizerError("split 'train', batch 3: boom")
    assert err.message == "split 'train', batch 3: boom"
    assert bc.NotFoundError().message == "not_found"
    # errors cross the process boundary from priming workers
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is bc.VectorizerError and again.message == err.message


def test_docstring_tree_lists_every_code():
    for _, code, status, _ in TABLE[1:]:
        assert f"{code} / {status}" in errors.__doc__
