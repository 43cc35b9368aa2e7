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

from .dataset.batch import DefaultBatch
from .dataset.datapoint import DataPoint
from .dataset.idset import DataPointIDSet
from .dataset.split import CsvSplitStashContainer, MemorySplitStashContainer, SplitStashContainer
from .dataset.vectorize import (
    CategoryEncodableFeatureVectorizer,
    FeatureVectorizer,
    FeatureVectorizerManager,
    FeatureVectorizerManagerSet,
    OneHotEncodedFeatureVectorizer,
    SeriesFeatureVectorizer,
    TokenIdFeatureVectorizer,
    TokenLengthFeatureVectorizer,
)
from .factory import load_factory
from .prime.run import ProgressCallback
from .stash import BatchStash

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
