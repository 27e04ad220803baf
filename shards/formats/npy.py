"""The npy format: `<name>.images.npy` [N, H, W, 3] and `<name>.labels.npy` [N] int32 per shard.

Plain .npy files (version 1.0 headers, no pickled objects), so `np.load(path, mmap_mode="r",
allow_pickle=False)` reads them with no shards code. bfloat16 images are stored as their uint16
bit pattern; the manifest's dtype says how to view them.
"""

from __future__ import annotations

import os

import numpy as np

from shards.errors import ManifestError
from shards.fileio import atomic_write
from shards.formats.base import ShardFormat, ShardInfo, ShardReader, ShardWriter
from shards.options import PreprocessOptions, numpy_dtype, numpy_storage_dtype

IMAGES_SUFFIX = ".images.npy"
LABELS_SUFFIX = ".labels.npy"
LABEL_DTYPE = np.dtype("<i4")


class NpyShardWriter(ShardWriter):
    """Fills one shard in memory, then writes both files atomically with their checksums.

    A worker holds one shard's output (bounded by --shard-size); the files appear under their
    final names only once complete, so a killed worker leaves no partial shard.
    """

    def __init__(self, dest: str, shard: str, capacity: int, shape: tuple[int, int, int], dtype: str) -> None:
        self._dest = dest
        self._shard = shard
        self._images = np.empty((capacity, *shape), numpy_storage_dtype(dtype))
        self._labels = np.empty(capacity, LABEL_DTYPE)
        self.count = 0

    def write(self, image: np.ndarray, label: int) -> None:
        self._images[self.count] = image
        self._labels[self.count] = label
        self.count += 1

    def close(self) -> ShardInfo:
        files = {}
        for suffix, array in ((IMAGES_SUFFIX, self._images), (LABELS_SUFFIX, self._labels)):
            name = self._shard + suffix
            with atomic_write(os.path.join(self._dest, name)) as handle:
                np.lib.format.write_array(handle, array[: self.count], version=(1, 0), allow_pickle=False)
            files[name] = handle.digest()
        info = ShardInfo(self._shard, self.count, files)
        self.abort()
        return info

    def abort(self) -> None:
        self._images = self._labels = np.empty(0)


class NpyShardReader(ShardReader):
    """Memory-maps a shard's two files; pages come from the OS cache, not the process heap."""

    def __init__(self, dest: str, info: ShardInfo, shape: tuple[int, int, int], dtype: str) -> None:
        self.count = info.count
        images = _load(os.path.join(dest, info.name + IMAGES_SUFFIX))
        labels = _load(os.path.join(dest, info.name + LABELS_SUFFIX))
        expected_images = ((info.count, *shape), numpy_storage_dtype(dtype))
        if (images.shape, images.dtype) != expected_images:
            raise ManifestError(
                f"{info.name}{IMAGES_SUFFIX}: holds {images.dtype}{list(images.shape)}, the manifest "
                f"says {expected_images[1]}{list(expected_images[0])}"
            )
        if (labels.shape, labels.dtype) != ((info.count,), LABEL_DTYPE):
            raise ManifestError(f"{info.name}{LABELS_SUFFIX}: holds {labels.dtype}{list(labels.shape)}, "
                                f"the manifest says int32[{info.count}]")
        self.images = images.view(numpy_dtype(dtype))
        self.labels = labels

    def read(self, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            images[...] = self.images[rows[0]: rows[-1] + 1]
            labels[...] = self.labels[rows[0]: rows[-1] + 1]
        else:
            np.take(self.images, rows, axis=0, out=images)
            np.take(self.labels, rows, axis=0, out=labels)


def _load(path: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ManifestError(f"{path}: shard file is missing") from None
    except (ValueError, OSError) as exc:
        raise ManifestError(f"{path}: not a readable .npy shard ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise ManifestError(f"{path}: not a single .npy array")
    return array


class NpyFormat(ShardFormat):
    name = "npy"

    def open_writer(self, dest: str, shard: str, capacity: int, options: PreprocessOptions) -> NpyShardWriter:
        return NpyShardWriter(dest, shard, capacity, options.shape, options.dtype)

    def open_reader(self, dest: str, info: ShardInfo, shape: tuple[int, int, int], dtype: str) -> NpyShardReader:
        return NpyShardReader(dest, info, shape, dtype)
