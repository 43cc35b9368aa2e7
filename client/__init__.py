"""batchstash client: decoded batches, metadata, the wire codec and the HTTP client for trainers."""

from . import wire
from .admin import AdminCalls
from .batch import Batch
from .dataset import BatchDataset
from .device import TorchConfig, copy_to_device
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
    StoreError,
    TransportError,
    VectorizerError,
    error_for_code,
)
from .http import BatchClient
from .iterate import BatchIterator
from .mapping import (
    BatchFeatureMapping,
    ConfigBatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
)
from .metadata import BatchFieldMetadata, BatchMetadata, MetadataNetworkSettings, VectorizerMetadata
from .plan import EpochPlan
from .transport import BufferStream, BufferTransport, body_buffer

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
    "BatchstashError",
    "BufferStream",
    "BufferTransport",
    "ChecksumError",
    "ConfigBatchFeatureMapping",
    "ConflictError",
    "CorruptStoreError",
    "EpochPlan",
    "FieldFeatureMapping",
    "InvalidRequestError",
    "ManagerFeatureMapping",
    "MetadataNetworkSettings",
    "NotFoundError",
    "NotPrimedError",
    "PayloadError",
    "PlanError",
    "PrimeCancelledError",
    "StaleStoreError",
    "StoreError",
    "TorchConfig",
    "TransportError",
    "VectorizerError",
    "VectorizerMetadata",
    "body_buffer",
    "copy_to_device",
    "error_for_code",
    "wire",
]
