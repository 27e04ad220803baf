"""Shard formats, one module each with its writer and reader side by side.

A format is looked up by the name the manifest records, so adding one touches one module and
this registry.
"""

from __future__ import annotations

from shards.formats.base import ShardFormat, ShardInfo, ShardWriter
from shards.formats.npy import NpyFormat
from shards.formats.tfrecord import TfRecordFormat

FORMATS: dict[str, ShardFormat] = {"npy": NpyFormat(), "tfrecord": TfRecordFormat()}


def get_format(name: str) -> ShardFormat:
    """The format registered under `name`."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown shard format {name!r}; known: {', '.join(FORMATS)}") from None


__all__ = ["FORMATS", "ShardFormat", "ShardInfo", "ShardWriter", "get_format"]
