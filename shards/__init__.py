"""shards: image datasets preprocessed on Ray into memory-mapped shards, streamed to training.

Importing shards does not start Ray; `preprocess` does (or joins the cluster it is given).
"""

from __future__ import annotations

from shards.errors import (
    ConfigError,
    DecodeError,
    DestinationError,
    ManifestError,
    RejectLimitError,
    ShardsError,
    SourceError,
)
from shards.options import PreprocessOptions
from shards.read.dataset import BatchStream, ShardDataset
from shards.read.dataset import open_shards as open
from shards.version import installed_version
from shards.write.run import RunSummary, preprocess

__version__ = installed_version()

__all__ = [
    "BatchStream",
    "ConfigError",
    "DecodeError",
    "DestinationError",
    "ManifestError",
    "PreprocessOptions",
    "RejectLimitError",
    "RunSummary",
    "ShardDataset",
    "ShardsError",
    "SourceError",
    "__version__",
    "open",
    "preprocess",
]
