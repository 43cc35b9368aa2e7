"""batchstash service: the batch stash engine (priming, storage) and, with the extra, the server."""

from batchstash.client import (
    Batch,
    BatchError,
    BatchFeatureMapping,
    BatchFieldMetadata,
    BatchMetadata,
    ConfigBatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
    MetadataNetworkSettings,
    TorchConfig,
)

from .engine import BatchStash
from .factory import load_factory
from .prime.run import ProgressCallback
from .stash.batch import DefaultBatch
from .stash.datapoint import DataPoint
from .stash.idset import DataPointIDSet
from .stash.split import CsvSplitStashContainer, MemorySplitStashContainer, SplitStashContainer
from .stash.vectorize import (
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizer,
    FeatureVectorizerManager,
    FeatureVectorizerManagerSet,
    OneHotEncodedFeatureVectorizer,
    SeriesFeatureVectorizer,
    TokenIdFeatureVectorizer,
    TokenLengthFeatureVectorizer,
)

__all__ = [
    "Batch",
    "BatchError",
    "BatchFeatureMapping",
    "BatchFieldMetadata",
    "BatchMetadata",
    "BatchStash",
    "CategoryEncodableFeatureVectorizer",
    "ConfigBatchFeatureMapping",
    "CsvSplitStashContainer",
    "DataPoint",
    "DataPointIDSet",
    "DefaultBatch",
    "FeatureVectorizer",
    "FeatureVectorizerManager",
    "FeatureVectorizerManagerSet",
    "FieldFeatureMapping",
    "ManagerFeatureMapping",
    "MemorySplitStashContainer",
    "MetadataNetworkSettings",
    "OneHotEncodedFeatureVectorizer",
    "ProgressCallback",
    "SeriesFeatureVectorizer",
    "SplitStashContainer",
    "TokenIdFeatureVectorizer",
    "TokenLengthFeatureVectorizer",
    "TorchConfig",
    "load_factory",
]
