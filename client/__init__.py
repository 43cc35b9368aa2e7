"""batchstash client: decoded batches, metadata, the wire codec and the HTTP client for trainers."""

# Exports resolve on first use (PEP 562): importing the package, or its errors, costs no
# torch import (the CLI and spawned priming workers start fast); type checkers see them all.

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    AuthError,
    BatchError,
    BatchstashError,
    ChecksumError,
    ConflictError,
    CorruptStoreError,
    InvalidRequestError,
    NotFoundError,
    NotPrimedError,
    PayloadError,
    PlanError,
    PrimeCancelledError,
    StaleStoreError,
    StoreBusyError,
    StoreError,
    TransportError,
    VectorizerError,
    error_for_code,
)
from .lazy import lazy_exports

if TYPE_CHECKING:
    from . import wire
    from .admin import AdminCalls
    from .batch import Batch
    from .buffers import BufferPool
    from .dataset import BatchDataset
    from .device import TorchConfig, copy_to_device
    from .endpoints import Endpoint, Endpoints
    from .framecheck import FrameChecker
    from .http import BatchClient, EndpointState
    from .iterate import BatchIterator
    from .lowwater import LowWater
    from .mapping import (
        BatchFeatureMapping,
        ConfigBatchFeatureMapping,
        FieldFeatureMapping,
        ManagerFeatureMapping,
    )
    from .metadata import (
        BatchFieldMetadata,
        BatchMetadata,
        MetadataNetworkSettings,
        VectorizerMetadata,
    )
    from .pipeline import PipelinedReader
    from .plan import EpochPlan
    from .policy import RetryPolicy
    from .ranks import resolve_rank
    from .rebatch import RebatchPlan
    from .redeal import RedealtBatchId
    from .source import BatchSource
    from .staging import DeviceStage
    from .transport import BufferStream, BufferTransport, body_buffer
    from .waits import ReadStats, export_prometheus

_LAZY = {
    "BatchSource": ".source",
    "RetryPolicy": ".policy",
    "AdminCalls": ".admin",
    "Batch": ".batch",
    "BatchClient": ".http",
    "BatchDataset": ".dataset",
    "BatchFeatureMapping": ".mapping",
    "BatchFieldMetadata": ".metadata",
    "BatchIterator": ".iterate",
    "BatchMetadata": ".metadata",
    "BufferStream": ".transport",
    "BufferPool": ".buffers",
    "DeviceStage": ".staging",
    "FrameChecker": ".framecheck",
    "LowWater": ".lowwater",
    "BufferTransport": ".transport",
    "ConfigBatchFeatureMapping": ".mapping",
    "Endpoint": ".endpoints",
    "EndpointState": ".http",
    "Endpoints": ".endpoints",
    "EpochPlan": ".plan",
    "RebatchPlan": ".rebatch",
    "RedealtBatchId": ".redeal",
    "PipelinedReader": ".pipeline",
    "ReadStats": ".waits",
    "FieldFeatureMapping": ".mapping",
    "ManagerFeatureMapping": ".mapping",
    "MetadataNetworkSettings": ".metadata",
    "TorchConfig": ".device",
    "VectorizerMetadata": ".metadata",
    "body_buffer": ".transport",
    "copy_to_device": ".device",
    "export_prometheus": ".waits",
    "resolve_rank": ".ranks",
    "wire": ".wire",
}


__all__ = [
    "AdminCalls",
    "AuthError",
    "Batch",
    "BatchClient",
    "BatchDataset",
    "BatchError",
    "BatchFeatureMapping",
    "BatchFieldMetadata",
    "BatchIterator",
    "BatchMetadata",
    "BatchSource",
    "BatchstashError",
    "BufferPool",
    "BufferStream",
    "BufferTransport",
    "ChecksumError",
    "ConfigBatchFeatureMapping",
    "ConflictError",
    "CorruptStoreError",
    "DeviceStage",
    "Endpoint",
    "EndpointState",
    "Endpoints",
    "EpochPlan",
    "FieldFeatureMapping",
    "FrameChecker",
    "InvalidRequestError",
    "LowWater",
    "ManagerFeatureMapping",
    "MetadataNetworkSettings",
    "NotFoundError",
    "NotPrimedError",
    "PayloadError",
    "PipelinedReader",
    "PlanError",
    "PrimeCancelledError",
    "ReadStats",
    "RebatchPlan",
    "RedealtBatchId",
    "RetryPolicy",
    "StaleStoreError",
    "StoreBusyError",
    "StoreError",
    "TorchConfig",
    "TransportError",
    "VectorizerError",
    "VectorizerMetadata",
    "body_buffer",
    "copy_to_device",
    "error_for_code",
    "export_prometheus",
    "resolve_rank",
    "wire",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
