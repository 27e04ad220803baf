"""What every shard format provides: a writer with a fixed lifecycle, a reader, a verifier."""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from shards.io import checksum
from shards.io.fileio import FileDigest
from shards.layout.targets import Targets
from shards.options import PreprocessOptions

#: Shard names as the plan makes them (`shard-00042`).
SHARD_NAME = re.compile(r"shard-\d+")


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """A written shard: its sample count and the digest of each of its files.

    The shard's own `checksum` digests its files' checksums in name order, so one value in the
    manifest covers every byte of the shard. Manifests before version 2 wrote bare sha256 hex
    under `sha256`; they are read as `sha256:<hex>` checksums.
    """

    name: str
    count: int
    files: dict[str, FileDigest]

    @property
    def bytes(self) -> int:
        return sum(digest.bytes for digest in self.files.values())

    @property
    def checksum(self) -> str:
        parts = sorted((name, digest.checksum) for name, digest in self.files.items())
        algorithm = self.files[parts[0][0]].algorithm if parts else checksum.DEFAULT
        return checksum.combine(algorithm, parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "checksum": self.checksum,
            "bytes": self.bytes,
            "files": {name: dataclasses.asdict(d) for name, d in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ShardInfo:
        """Parse a manifest or receipt entry; ValueError names a checksum of unknown algorithm."""
        files = {name: _file_digest(d) for name, d in record["files"].items()}
        return cls(str(record["name"]), int(record["count"]), files)


def _file_digest(record: dict[str, Any]) -> FileDigest:
    value = str(record["checksum"]) if "checksum" in record else f"sha256:{record['sha256']}"
    checksum.algorithm_of(value)
    return FileDigest(int(record["bytes"]), value)


class ShardWriter(abc.ABC):
    """Open -> `next_row()`/`write()` per sample -> `close()` -> ShardInfo; `abort()` on failure."""

    @abc.abstractmethod
    def write(self, image: np.ndarray, targets: np.ndarray) -> None:
        """Append one sample: its image, already in the storage dtype, and its stored targets
        (one row of `Targets.empty`)."""

    @abc.abstractmethod
    def close(self) -> ShardInfo:
        """Write the shard's files atomically and describe them."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop everything written so far; no file is left under a final name."""

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


class ShardReader(abc.ABC):
    """Random access to one shard's samples."""

    count: int

    @abc.abstractmethod
    def read(self, rows: np.ndarray, images: np.ndarray, targets: np.ndarray) -> None:
        """Copy the samples at sorted `rows` into `images` and `targets` (preallocated; targets
        in their stored form, `Targets.empty`)."""


class ShardFormat(abc.ABC):
    """A shard format: its file names, writer, reader and verifier."""

    name: str
    #: What follows a shard's name in the names of its files (`.images.npy`, `.tfrecord.gz`).
    suffixes: tuple[str, ...]

    def owns(self, file_name: str) -> bool:
        """Whether `file_name` is the name of one of this format's shard files."""
        return any(
            file_name.endswith(suffix) and SHARD_NAME.fullmatch(file_name[: -len(suffix)]) for suffix in self.suffixes
        )

    def check_available(self) -> None:
        """Refuse, before any work, a format whose framework this install lacks.

        Raises:
            MissingExtraError: one line naming the extra that brings it.
        """
        return None  # the NumPy formats need nothing beyond the base install

    @abc.abstractmethod
    def open_writer(
        self,
        dest: str,
        shard: str,
        capacity: int,
        options: PreprocessOptions,
        targets: Targets,
        *,
        durable: bool = True,
    ) -> ShardWriter:
        """A writer for at most `capacity` samples of `options.shape` and `options.dtype`, with
        `targets`; without `durable`, files are not flushed to disk (they are staged for an upload)."""

    @abc.abstractmethod
    def open_reader(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> ShardReader:
        """A reader over `files` (each of `info.files`, opened and checked by `shard_files`; the
        caller closes them once this returns); raises ManifestError when they do not match."""
