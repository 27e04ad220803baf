"""The npy format: `<name>.images.npy` [N, H, W, 3] and `<name>.labels.npy` per shard.

The labels file holds the run's targets as `shards.targets` stores them: int32 [N] for a
class target, uint8 multi-hot [N, classes] for a multi-label one, float32 [N] or [N, K] for
regression, and, with several targets, one structured array [N] with a field per target
(`np.load(...)["age"]`).

Plain .npy files (version 1.0 headers, no pickled objects), so `np.load(path, mmap_mode="r",
allow_pickle=False)` reads them with no shards code. bfloat16 images are stored as their uint16
bit pattern; the manifest's dtype says how to view them.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

from shards.errors import ManifestError
from shards.formats.base import SampleLayout, ShardFormat, ShardInfo, ShardReader, ShardWriter
from shards.io import checksum
from shards.io.fileio import FileDigest, atomic_write, commit_temporary, digest_file, discard_temporary, temporary_name
from shards.io.streamed_file import open_stream
from shards.options import numpy_dtype, numpy_storage_dtype
from shards.targets import Targets

IMAGES_SUFFIX = ".images.npy"
LABELS_SUFFIX = ".labels.npy"


class NpyShardWriter(ShardWriter):
    """Streams rows into a temporary .npy as they are decoded, then commits it atomically.

    The header is written for the shard's capacity first; rows follow, hashed as they are
    written, and go to disk on a helper thread as they come (`shards.io.streamed_file`: directly,
    past the page cache, where the file system allows), so the final fsync finds little left to
    do. A worker therefore holds a few rows, not a shard. If inputs were rejected, close()
    rewrites the header for the real count (padded to the same length, so the data does not
    move), truncates the unused tail and hashes the file once more.
    """

    def __init__(
        self,
        dest: str,
        shard: str,
        capacity: int,
        layout: SampleLayout,
        targets: Targets,
        *,
        durable: bool = True,
    ) -> None:
        self._dest, self._shard, self._durable = dest, shard, durable
        self.layout = layout
        shape = layout.shape
        self._shape, self._storage = shape, layout.storage
        self._capacity = capacity
        self._labels = targets.empty(capacity)
        self._path = os.path.join(dest, shard + IMAGES_SUFFIX)
        self._temp = temporary_name(self._path)
        self._file = open_stream(self._temp, durable=durable)
        self._hash = checksum.new_hasher()
        self._header_length = self._emit(_header((capacity, *shape), self._storage))
        self.count = 0

    def _emit(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        return self._file.write(data)

    def _append(self, image: np.ndarray, targets: np.ndarray) -> None:
        self._emit(image.data.cast("B"))
        self._labels[self.count] = targets
        self.count += 1

    def close(self) -> ShardInfo:
        self._file.close()
        if self.count < self._capacity:
            with open(self._temp, "r+b") as rewritten:
                rewritten.write(_header((self.count, *self._shape), self._storage, length=self._header_length))
                rewritten.truncate(
                    self._header_length + self.count * int(np.prod(self._shape)) * self._storage.itemsize
                )
        digest = (
            FileDigest(os.path.getsize(self._temp), checksum.label(checksum.DEFAULT, self._hash))
            if self.count == self._capacity
            else digest_file(self._temp)
        )
        commit_temporary(self._temp, self._path, durable=self._durable)
        files = {self._shard + IMAGES_SUFFIX: digest}
        labels_name = self._shard + LABELS_SUFFIX
        labels = self._labels[: self.count]
        with atomic_write(os.path.join(self._dest, labels_name), durable=self._durable) as handle:
            handle.write(_header(labels.shape, labels.dtype))
            handle.write(labels.tobytes())
        files[labels_name] = handle.digest()
        return ShardInfo(self._shard, self.count, files)

    def abort(self) -> None:
        self._file.abort()
        discard_temporary(self._temp)


def _header(shape: tuple[int, ...], dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 .npy header, as NumPy writes it; padded with spaces to `length` if given."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    header = buffer.getvalue()
    if length is None or len(header) == length:
        return header
    text = header[10:-1] + b" " * (length - len(header)) + b"\n"
    return header[:8] + struct.pack("<H", len(text)) + text


class NpyShardReader(ShardReader):
    """Memory-maps a shard's two files; pages come from the OS cache, not the process heap."""

    def __init__(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> None:
        self.count = info.count
        images = _map(files[info.name + IMAGES_SUFFIX])
        labels = _map(files[info.name + LABELS_SUFFIX])
        expected_images = ((info.count, *shape), numpy_storage_dtype(dtype))
        if (images.shape, images.dtype) != expected_images:
            raise ManifestError(
                f"{info.name}{IMAGES_SUFFIX}: holds {images.dtype}{list(images.shape)}, the manifest "
                f"says {expected_images[1]}{list(expected_images[0])}"
            )
        expected_labels = targets.empty(0)
        if (labels.shape, labels.dtype) != ((info.count, *expected_labels.shape[1:]), expected_labels.dtype):
            raise ManifestError(
                f"{info.name}{LABELS_SUFFIX}: holds {labels.dtype}{list(labels.shape)}, the manifest says "
                f"{expected_labels.dtype}{[info.count, *expected_labels.shape[1:]]}"
            )
        self.images = images.view(numpy_dtype(dtype))
        self.labels = labels

    def read(self, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        """See `ShardReader.read`."""
        # Copy each run of consecutive rows as one slice: on a memmap this is about three times
        # faster than np.take, which gathers item by item (see bench/: shuffled batches()).
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for begin, end in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist()):
            first = int(rows[begin])
            images[begin:end] = self.images[first : first + end - begin]
        np.take(self.labels, rows, axis=0, out=labels)


def _map(handle: BinaryIO) -> np.ndarray:
    """Memory-map the array of an opened .npy file, as `np.load(mmap_mode="r")` would, from the
    handle the caller checked (np.load itself maps only by path). Object dtypes, which only
    unpickling could read, and arrays longer than the file are refused."""
    path = getattr(handle, "name", "shard")
    try:
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ManifestError(f"{path}: not a readable .npy shard ({exc})") from None
    if fortran_order or dtype.hasobject:
        raise ManifestError(f"{path}: not a plain C-order .npy array of numbers")
    offset = handle.tell()
    size = os.fstat(handle.fileno()).st_size
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + needed > size:
        raise ManifestError(f"{path}: truncated ({size:,} bytes, the header needs {offset + needed:,})")
    if needed == 0:
        return np.empty(shape, dtype)
    return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)


def npy_bytes(count: int, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The exact size of a .npy file NumPy writes for an array of this shape and dtype."""
    return len(_header((count, *shape), dtype)) + count * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class NpyFormat(ShardFormat):
    name = "npy"
    suffixes = (IMAGES_SUFFIX, LABELS_SUFFIX)
    why_uncompressed = "npy shards are memory-mapped"

    def shard_bytes(self, count: int, layout: SampleLayout, targets: np.dtype) -> int:
        """See `ShardFormat.shard_bytes`: exact (the headers are built as NumPy writes them)."""
        return npy_bytes(count, layout.shape, layout.storage) + npy_bytes(count, (), targets)

    def open_writer(
        self,
        dest: str,
        shard: str,
        capacity: int,
        layout: SampleLayout,
        targets: Targets,
        *,
        durable: bool = True,
    ) -> NpyShardWriter:
        return NpyShardWriter(dest, shard, capacity, layout, targets, durable=durable)

    def open_reader(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> NpyShardReader:
        return NpyShardReader(files, info, shape, dtype, targets)
