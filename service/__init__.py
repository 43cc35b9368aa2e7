"""batchstash service: the batch stash engine (priming, storage) and, with the extra, the server."""

# Exports resolve on first use (PEP 562): importing the package, or its errors, costs no
# torch import (the CLI and spawned priming workers start fast); type checkers see them all.

from __future__ import annotations

from typing import TYPE_CHECKING

from batchstash.client.lazy import lazy_exports

if TYPE_CHECKING:
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
    from .dataset.datapoint import DataPoint, RowDataPoint
    from .dataset.frames import ArraySplitStashContainer, DataFrameSplitStashContainer
    from .dataset.hf import HuggingFaceSplitStashContainer
    from .dataset.idset import DataPointIDSet
    from .dataset.managers import FeatureVectorizerManager, FeatureVectorizerManagerSet
    from .dataset.parquet import ParquetSplitStashContainer
    from .dataset.split import (
        CsvSplitStashContainer,
        MemorySplitStashContainer,
        SplitStashContainer,
    )
    from .dataset.tables import TableSplitStashContainer
    from .dataset.tensors import MultiLabelFeatureVectorizer, TensorFeatureVectorizer
    from .dataset.vectorize import (
        CategoryEncodableFeatureVectorizer,
        FeatureVectorizer,
        OneHotEncodedFeatureVectorizer,
        SeriesFeatureVectorizer,
        TokenIdFeatureVectorizer,
        TokenLengthFeatureVectorizer,
    )
    from .factory import load_factory
    from .prime.run import ProgressCallback
    from .stash import BatchStash

_LAZY = {
    "ArraySplitStashContainer": ".dataset.frames",
    "Batch": "batchstash.client",
    "BatchError": "batchstash.client",
    "BatchFeatureMapping": "batchstash.client",
    "BatchFieldMetadata": "batchstash.client",
    "BatchMetadata": "batchstash.client",
    "BatchStash": ".stash",
    "CategoryEncodableFeatureVectorizer": ".dataset.vectorize",
    "ConfigBatchFeatureMapping": "batchstash.client",
    "CsvSplitStashContainer": ".dataset.split",
    "DataFrameSplitStashContainer": ".dataset.frames",
    "DataPoint": ".dataset.datapoint",
    "DataPointIDSet": ".dataset.idset",
    "DefaultBatch": ".dataset.batch",
    "FeatureVectorizer": ".dataset.vectorize",
    "FeatureVectorizerManager": ".dataset.managers",
    "FeatureVectorizerManagerSet": ".dataset.managers",
    "FieldFeatureMapping": "batchstash.client",
    "HuggingFaceSplitStashContainer": ".dataset.hf",
    "ManagerFeatureMapping": "batchstash.client",
    "MemorySplitStashContainer": ".dataset.split",
    "MetadataNetworkSettings": "batchstash.client",
    "MultiLabelFeatureVectorizer": ".dataset.tensors",
    "OneHotEncodedFeatureVectorizer": ".dataset.vectorize",
    "ParquetSplitStashContainer": ".dataset.parquet",
    "ProgressCallback": ".prime.run",
    "RowDataPoint": ".dataset.datapoint",
    "SeriesFeatureVectorizer": ".dataset.vectorize",
    "SplitStashContainer": ".dataset.split",
    "TableSplitStashContainer": ".dataset.tables",
    "TensorFeatureVectorizer": ".dataset.tensors",
    "TokenIdFeatureVectorizer": ".dataset.vectorize",
    "TokenLengthFeatureVectorizer": ".dataset.vectorize",
    "TorchConfig": "batchstash.client",
    "load_factory": ".factory",
}


__all__ = [
    "ArraySplitStashContainer",
    "Batch",
    "BatchError",
    "BatchFeatureMapping",
    "BatchFieldMetadata",
    "BatchMetadata",
    "BatchStash",
    "CategoryEncodableFeatureVectorizer",
    "ConfigBatchFeatureMapping",
    "CsvSplitStashContainer",
    "DataFrameSplitStashContainer",
    "DataPoint",
    "DataPointIDSet",
    "DefaultBatch",
    "FeatureVectorizer",
    "FeatureVectorizerManager",
    "FeatureVectorizerManagerSet",
    "FieldFeatureMapping",
    "HuggingFaceSplitStashContainer",
    "ManagerFeatureMapping",
    "MemorySplitStashContainer",
    "MetadataNetworkSettings",
    "MultiLabelFeatureVectorizer",
    "OneHotEncodedFeatureVectorizer",
    "ParquetSplitStashContainer",
    "ProgressCallback",
    "RowDataPoint",
    "SeriesFeatureVectorizer",
    "SplitStashContainer",
    "TableSplitStashContainer",
    "TensorFeatureVectorizer",
    "TokenIdFeatureVectorizer",
    "TokenLengthFeatureVectorizer",
    "TorchConfig",
    "load_factory",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
