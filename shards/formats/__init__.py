"""Shard formats, one module each with its writer and reader side by side.

A format is looked up by the name the manifest records (and `--format` gives), so adding one
touches one module and this registry: the options, the manifest check and `shards plan` ask the
format, never a list of their own.
"""

from __future__ import annotations

from shards.errors import ConfigError
from shards.formats.base import SampleLayout, ShardFormat, ShardInfo, ShardWriter
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


def check_format(name: str, compression: str = "none") -> ShardFormat:
    """The format `--format name` asks for, after checking that it exists, that it writes
    `compression`, and that this install has what it needs; before any work starts.

    Raises:
        ConfigError: an unknown format or a compression it does not write, in one line.
        MissingExtraError: the format's framework is not installed.
    """
    shard_format = FORMATS.get(name)
    if shard_format is None:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}")
    if compression not in shard_format.compressions:
        writers = [f.name for f in FORMATS.values() if compression in f.compressions]
        if not writers:
            known = sorted({c for f in FORMATS.values() for c in f.compressions})
            raise ConfigError(f"--compression must be one of {', '.join(known)}, got {compression!r}")
        reason = f" ({shard_format.why_uncompressed})" if shard_format.why_uncompressed else ""
        raise ConfigError(f"--compression {compression} needs --format {' or '.join(writers)}{reason}")
    shard_format.check_available()
    return shard_format


__all__ = [
    "FORMATS",
    "SampleLayout",
    "ShardFormat",
    "ShardInfo",
    "ShardWriter",
    "check_format",
    "get_format",
    "is_shard_file",
]
