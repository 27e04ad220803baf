"""shards: image datasets preprocessed on Ray into memory-mapped shards, streamed to training.

Importing shards does not start Ray; `preprocess` does (or joins the cluster it is given).

The public names are loaded on first use (PEP 562): every Ray worker imports this package on
its way to `shards.write.task`, and loading the reader and the driver's run there too cost each
worker ~15 ms more before its first shard, on the run's start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shards.errors import (
    ConfigError,
    DecodeError,
    DestinationError,
    ManifestError,
    RejectLimitError,
    ShardsError,
    SourceError,
)
from shards.lazy import lazy_names

if TYPE_CHECKING:
    from shards.dataset import ShardDataset
    from shards.dataset import open_shards as open
    from shards.options import PreprocessOptions
    from shards.read.stream import BatchStream
    from shards.write.run import RunSummary, preprocess

# name -> (module, attribute)
_LAZY = {
    "__version__": ("shards.version", "__version__"),
    "BatchStream": ("shards.read.stream", "BatchStream"),
    "PreprocessOptions": ("shards.options", "PreprocessOptions"),
    "RunSummary": ("shards.write.run", "RunSummary"),
    "ShardDataset": ("shards.dataset", "ShardDataset"),
    "open": ("shards.dataset", "open_shards"),
    "preprocess": ("shards.write.run", "preprocess"),
}

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


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
