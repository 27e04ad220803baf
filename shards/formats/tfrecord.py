"""The TFRecord format: one `<name>.tfrecord` (or `.tfrecord.gz`) per shard of `tf.train.Example`s.

Each record has these features, readable by plain tf.data with no shards code:

    image: bytes   the raw [H, W, C] array in the manifest's dtype, little-endian, C order
                   (bfloat16: its uint16 bits; decode with tf.io.decode_raw(..., tf.bfloat16))
    shape: int64[3]  [H, W, C]
    label: by the target's kind (the manifest's `targets`):
        class        int64     an index into the target's classes, -1 where unlabeled
        multilabel   int64[]   the indices of the classes present (any number, maybe none)
        regression   float[K]  K values (one for a scalar target)

With several targets, each is its own feature `label/<name>`. `feature_spec(targets)` gives
the parsing spec for a run's targets.

Records are streamed to disk as they are made (a TFRecord writer holds no shard in memory).
TensorFlow is imported only when this format is used.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

from shards.errors import ManifestError
from shards.formats.base import SampleLayout, ShardFormat, ShardInfo, ShardReader, ShardWriter
from shards.frameworks import check_installed, import_tensorflow
from shards.io.fileio import commit_temporary, digest_file, discard_temporary, temporary_name
from shards.options import numpy_dtype, numpy_storage_dtype
from shards.targets import Targets

SUFFIX = ".tfrecord"
GZIP_SUFFIX = ".tfrecord.gz"
_LENGTH = struct.Struct("<Q")
_FRAME = 8 + 4 + 4  # length, its crc, the data's crc
# gzip (deflate) turns at most 1032 bytes into one: the most samples a byte of file can hold.
DEFLATE_MAX_RATIO = 1032
# An Example's bytes beyond the image and label values: feature names, tags and lengths (~50
# for one class target); a generous bound, as `shards plan` counts it.
_EXAMPLE_OVERHEAD = 128


def feature_spec(targets: Targets | None = None) -> dict:
    """The parsing spec of a shards Example, for `tf.io.parse_single_example`/`parse_example`;
    `targets` is the run's (`shards.open(DEST).targets`); default: one class target."""
    tf = import_tensorflow(quiet=True, needed_for="the tfrecord format")

    targets = targets or Targets.single_class([])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "shape": tf.io.FixedLenFeature([3], tf.int64)}
    for target in targets.items:
        if target.kind == "class":
            spec[targets.feature(target)] = tf.io.FixedLenFeature([], tf.int64)
        elif target.kind == "multilabel":
            spec[targets.feature(target)] = tf.io.VarLenFeature(tf.int64)
        else:
            spec[targets.feature(target)] = tf.io.FixedLenFeature(list(target.sample_shape), tf.float32)
    return spec


class TfRecordShardWriter(ShardWriter):
    """Streams Examples into a temporary file; close() checksums it and renames it into place."""

    def __init__(self, dest: str, shard: str, layout: SampleLayout, targets: Targets, *, durable: bool = True) -> None:
        tf = import_tensorflow(quiet=True, needed_for="the tfrecord format")

        self.layout = layout
        self._targets = targets
        self._durable = durable
        self._tf = tf
        self._name = shard + (GZIP_SUFFIX if layout.compression == "gzip" else SUFFIX)
        self._shape = list(layout.shape)
        self._path = os.path.join(dest, self._name)
        self._temp = temporary_name(self._path)
        compression = "GZIP" if layout.compression == "gzip" else ""
        self._writer = tf.io.TFRecordWriter(self._temp, options=tf.io.TFRecordOptions(compression_type=compression))
        self._shard = shard
        self.count = 0

    def _append(self, image: np.ndarray, targets: np.ndarray) -> None:
        train = self._tf.train
        feature = {
            "image": train.Feature(bytes_list=train.BytesList(value=[image.tobytes()])),
            "shape": train.Feature(int64_list=train.Int64List(value=self._shape)),
        }
        for target in self._targets.items:
            value = targets[target.name] if self._targets.multi else targets
            if target.kind == "class":
                feature[self._targets.feature(target)] = train.Feature(int64_list=train.Int64List(value=[int(value)]))
            elif target.kind == "multilabel":
                present = np.flatnonzero(value).tolist()
                feature[self._targets.feature(target)] = train.Feature(int64_list=train.Int64List(value=present))
            else:
                values = np.atleast_1d(value).tolist()
                feature[self._targets.feature(target)] = train.Feature(float_list=train.FloatList(value=values))
        example = train.Example(features=train.Features(feature=feature))
        self._writer.write(example.SerializeToString())
        self.count += 1

    def close(self) -> ShardInfo:
        self._writer.close()
        digest = digest_file(self._temp)
        commit_temporary(self._temp, self._path, durable=self._durable)
        return ShardInfo(self._shard, self.count, {self._name: digest})

    def abort(self) -> None:
        self._writer.close()
        discard_temporary(self._temp)


class TfRecordShardReader(ShardReader):
    """Random access into one TFRecord shard through an offset table built at open.

    Uncompressed shards are memory-mapped; gzip shards are decompressed into memory on open
    (bounded by the shard size), since gzip streams cannot be seeked.
    """

    def __init__(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> None:
        (file_name,) = info.files
        self._targets = targets
        handle = files[file_name]
        path = getattr(handle, "name", file_name)
        try:
            if file_name.endswith(".gz"):
                self._buffer = np.frombuffer(gzip.decompress(handle.read()), np.uint8)
            else:
                size = os.fstat(handle.fileno()).st_size
                self._buffer = np.memmap(handle, np.uint8, mode="r") if size else np.empty(0, np.uint8)
        except (OSError, EOFError) as exc:
            raise ManifestError(f"{path}: not a readable TFRecord shard ({exc})") from exc
        self._offsets, self._lengths = _scan(self._buffer, path)
        if len(self._offsets) != info.count:
            raise ManifestError(f"{path}: holds {len(self._offsets)} records, the manifest says {info.count}")
        self.count = info.count
        self._shape = shape
        self._storage = numpy_storage_dtype(dtype)
        self._dtype = numpy_dtype(dtype)

    def records(self, rows: np.ndarray) -> list[bytes]:
        """The serialized Examples at `rows`."""
        return [self._buffer[o : o + n].tobytes() for o, n in zip(self._offsets[rows], self._lengths[rows])]

    def read(self, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        """See `ShardReader.read`."""
        tf = import_tensorflow(quiet=True, needed_for="the tfrecord format")

        parsed = tf.io.parse_example(self.records(rows), feature_spec(self._targets))
        raw = tf.io.decode_raw(parsed["image"], tf.as_dtype(self._storage)).numpy()
        images[...] = raw.reshape(len(rows), *self._shape).view(self._dtype)
        for target in self._targets.items:
            out = labels[target.name] if self._targets.multi else labels
            value = parsed[self._targets.feature(target)]
            if target.kind == "multilabel":  # a SparseTensor of class indices per row
                out[...] = 0
                out[value.indices.numpy()[:, 0], value.values.numpy()] = 1
            else:
                out[...] = value.numpy()


def _scan(buffer: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Walk the record frames: [u64 length][u32 crc][data][u32 crc]."""
    offsets, lengths = [], []
    position, size = 0, len(buffer)
    view = buffer.data if size else memoryview(b"")
    while position < size:
        if position + _FRAME > size:
            raise ManifestError(f"{path}: truncated record at byte {position}")
        (length,) = _LENGTH.unpack_from(view, position)
        if position + _FRAME + length > size:
            raise ManifestError(f"{path}: truncated record at byte {position}")
        offsets.append(position + 12)
        lengths.append(length)
        position += _FRAME + length
    return np.array(offsets, np.int64), np.array(lengths, np.int64)


class TfRecordFormat(ShardFormat):
    name = "tfrecord"
    suffixes = (SUFFIX, GZIP_SUFFIX)
    compressions = ("none", "gzip")

    def max_expansion(self, compression: str) -> int:
        """See `ShardFormat.max_expansion`: deflate's ratio for gzip shards."""
        return DEFLATE_MAX_RATIO if compression == "gzip" else 1

    def shard_bytes(self, count: int, layout: SampleLayout, targets: np.dtype) -> int:
        """See `ShardFormat.shard_bytes`: an upper bound of uncompressed records (each its frame,
        the raw image, the labels at most 10 bytes (a varint) for each byte they are stored in,
        and the Example's own tags); a gzip shard is smaller by however well its pixels compress."""
        image = int(np.prod(layout.shape)) * layout.storage.itemsize
        return count * (_FRAME + image + 10 * targets.itemsize + _EXAMPLE_OVERHEAD)

    def check_available(self) -> None:
        """See `ShardFormat.check_available`: tf.train.Example records are written by TensorFlow."""
        check_installed("tensorflow", "--format tfrecord")

    def open_writer(
        self,
        dest: str,
        shard: str,
        capacity: int,
        layout: SampleLayout,
        targets: Targets,
        *,
        durable: bool = True,
    ) -> TfRecordShardWriter:
        return TfRecordShardWriter(dest, shard, layout, targets, durable=durable)

    def open_reader(
        self, files: Mapping[str, BinaryIO], info: ShardInfo, shape: tuple[int, int, int], dtype: str, targets: Targets
    ) -> TfRecordShardReader:
        return TfRecordShardReader(files, info, shape, dtype, targets)
