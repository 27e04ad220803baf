"""Listing SRC into (name, target) rows, one module per kind of SRC.

- `folder`: class folders or a flat folder of images, local or under an s3:// / gs:// prefix;
- `manifest`: a CSV/Parquet list of paths with an optional label column;
- `urls`: a CSV/Parquet list of http(s) URLs, fetched by the shard tasks;
- `tar`: tar archives in the WebDataset convention (one, a folder or prefix of them, or a brace
  pattern such as `data-{000000..000099}.tar`);
- `parquet`: Parquet files whose image column holds encoded bytes (Hugging Face layout);
- `arrays`: NumPy arrays in memory (the Python API only).

Listings are compact (Arrow arrays, paged for object storage), so ten million inputs cost their
bytes and not ten million Python objects; how each input is read is the listing's `kind`. Folders,
path and URL lists, tar archives and Parquet files list in parts spilled to local disk
(`parts.PartedListing`): the driver keeps a few numbers a part, nothing a sample.

The names below load on first use (PEP 562): a shard task imports this package on its way to
its inputs' module (`shards.sources.files` for files), and the listing side (pyarrow, every
kind's listing code) cost each Ray worker ~75 ms before its first shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shards.lazy import lazy_names

if TYPE_CHECKING:
    from shards.sources.folder import IMAGE_EXTENSIONS, is_image_name
    from shards.sources.inputs import Input, ShardInputs
    from shards.sources.kinds import check_source, describe_source, indexes_on_cluster, list_sources
    from shards.sources.listing import Listing
    from shards.sources.targets import UNLABELED

# name -> (module, attribute)
_LAZY = {
    "IMAGE_EXTENSIONS": ("shards.sources.folder", "IMAGE_EXTENSIONS"),
    "UNLABELED": ("shards.sources.targets", "UNLABELED"),
    "Input": ("shards.sources.inputs", "Input"),
    "Listing": ("shards.sources.listing", "Listing"),
    "ShardInputs": ("shards.sources.inputs", "ShardInputs"),
    "check_source": ("shards.sources.kinds", "check_source"),
    "describe_source": ("shards.sources.kinds", "describe_source"),
    "indexes_on_cluster": ("shards.sources.kinds", "indexes_on_cluster"),
    "is_image_name": ("shards.sources.folder", "is_image_name"),
    "list_sources": ("shards.sources.kinds", "list_sources"),
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNLABELED",
    "Input",
    "Listing",
    "ShardInputs",
    "check_source",
    "describe_source",
    "indexes_on_cluster",
    "is_image_name",
    "list_sources",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
