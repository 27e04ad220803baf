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
from shards.reader import BatchStream, ShardDataset
from shards.reader import open_shards as open
from shards.run import RunSummary, preprocess
from shards.version import installed_version

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
