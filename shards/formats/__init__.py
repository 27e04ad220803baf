"""Shard formats, one module each with its writer and reader side by side.

A format is looked up by the name the manifest records, so adding one touches one module and
this registry.
"""

from __future__ import annotations

from shards.formats.base import ShardFormat, ShardInfo, ShardWriter
from shards.formats.npy import NpyFormat
from shards.formats.tfrecord import TfRecordFormat

FORMATS: dict[str, ShardFormat] = {"npy": NpyFormat(), "tfrecord": TfRecordFormat()}


def is_shard_file(file_name: str) -> bool:
    """Whether `file_name` is a shard file of any format (what a run may own in DEST)."""
    return any(shard_format.owns(file_name) for shard_format in FORMATS.values())


def get_format(name: str) -> ShardFormat:
    """The format registered under `name`."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown shard format {name!r}; known: {', '.join(FORMATS)}") from None


__all__ = ["FORMATS", "ShardFormat", "ShardInfo", "ShardWriter", "get_format", "is_shard_file"]
