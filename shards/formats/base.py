"""What every shard format provides: a writer with a fixed lifecycle, a reader, its file names,
the compressions it writes and the bytes its shards take.

All a format knows lives in its module: the options check its name and compression through it
(`shards.formats.check_format`), the manifest check asks it how much a byte of its files can
hold, and `shards plan` asks it the bytes of a shard.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from shards.io import checksum
from shards.io.fileio import FileDigest
from shards.options import PreprocessOptions, numpy_storage_dtype
from shards.targets import Targets

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


@dataclasses.dataclass(frozen=True)
class SampleLayout:
    """What a writer needs of a run: one sample's shape and dtype, and the compression.

    Attributes:
        shape: one sample's [H, W, C].
        dtype: the manifest's dtype name (`uint8`, `float16`, `bfloat16`, `float32`).
        compression: `none`, or one of the format's `compressions`.
    """

    shape: tuple[int, int, int]
    dtype: str
    compression: str = "none"

    @classmethod
    def of(cls, options: PreprocessOptions) -> SampleLayout:
        """The layout of a run's options."""
        return cls(options.shape, options.dtype, options.compression)

    @functools.cached_property
    def storage(self) -> np.dtype:
        """The NumPy dtype of a sample on disk (bfloat16 as its uint16 bits); kept, since every
        written sample is checked against it."""
        return numpy_storage_dtype(self.dtype)


class ShardWriter(abc.ABC):
    """Open -> `write()` per sample -> `close()` -> ShardInfo; `abort()` on failure.

    `write` checks each sample against the layout, for every format alike, and hands `_append`
    a C-contiguous array of the layout's shape and storage dtype.
    """

    layout: SampleLayout

    def write(self, image: np.ndarray, targets: np.ndarray) -> None:
        """Append one sample: its image, already in the storage dtype (`to_storage` cast it: no
        format casts again), and its stored targets (one row of `Targets.empty`).

        Raises:
            ValueError: an image of another shape or dtype than the layout's.
        """
        if image.shape != self.layout.shape or image.dtype != self.layout.storage:
            raise ValueError(
                f"a sample of shape {image.shape} and dtype {image.dtype}, expected "
                f"{self.layout.shape} and {self.layout.storage}"
            )
        self._append(np.ascontiguousarray(image), targets)

    @abc.abstractmethod
    def _append(self, image: np.ndarray, targets: np.ndarray) -> None:
        """Append one checked sample."""

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
    """A shard format: its file names, compressions, sizes, writer and reader."""

    name: str
    #: What follows a shard's name in the names of its files (`.images.npy`, `.tfrecord.gz`).
    suffixes: tuple[str, ...]
    #: The `--compression` values it writes; the first is the default.
    compressions: tuple[str, ...] = ("none",)
    #: Why it writes no other compression (the one-line refusal says it).
    why_uncompressed = ""

    def max_expansion(self, compression: str) -> int:
        """The most sample bytes one byte of its files can hold: what the manifest check uses to
        refuse a shard claiming more samples than its files have room for."""
        return 1

    @abc.abstractmethod
    def shard_bytes(self, count: int, layout: SampleLayout, targets: np.dtype) -> int:
        """The bytes on disk of a shard of `count` samples (`targets`: one sample's stored
        targets): exact where the format allows it, otherwise an upper bound."""

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
        layout: SampleLayout,
        targets: Targets,
        *,
        durable: bool = True,
    ) -> ShardWriter:
        """A writer for at most `capacity` samples of `layout`, with `targets`; without
        `durable`, files are not flushed to disk (they are staged for an upload)."""

    @abc.abstractmethod
    def open_reader(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> ShardReader:
        """A reader over `files` (each of `info.files`, opened and checked by `shard_files`; the
        caller closes them once this returns); raises ManifestError when they do not match."""
