"""The npy shard writer on its own (no Ray): what it leaves on disk and in the page cache."""

import errno
import fcntl
import os
import subprocess

import numpy as np
import pytest

from shards.formats import SampleLayout, get_format
from shards.io import streamed_file
from shards.io.fileio import digest_file
from shards.targets import Targets

CLASSES = Targets.single_class([str(i) for i in range(7)])


def resident_bytes(path: str) -> int:
    """How many of the file's bytes are in the page cache, as util-linux's fincore reports."""
    result = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[0])


def write_rows(folder, images, capacity=None, *, durable=True):
    """Write `images` as one shard of `capacity` rows (its length by default); its ShardInfo."""
    rows, height, width = images.shape[:3]
    layout = SampleLayout((height, width, 3), "uint8")
    with get_format("npy").open_writer(
        str(folder), "shard-00000", capacity or rows, layout, CLASSES, durable=durable
    ) as writer:
        for row in range(rows):
            writer.write(images[row], np.int32(row % 7))
        return writer.close()


def test_written_rows_go_to_disk_without_entering_the_page_cache(tmp_path):
    """A long run must not fill the page cache with shards it never reads back (reclaiming it
    cost ~18% of throughput on the bench machine, and copying rows through it ~50 us of CPU a
    row): rows are written with O_DIRECT."""
    rows = 300
    images = np.random.default_rng(0).integers(0, 256, (rows, 224, 224, 3), np.uint8)
    info = write_rows(tmp_path, images)
    path = os.path.join(tmp_path, "shard-00000.images.npy")
    assert resident_bytes(path) == 0
    assert info.count == rows
    assert np.array_equal(np.load(path, mmap_mode="r"), images)  # read back from disk, intact


def test_without_direct_writes_flushed_rows_leave_the_page_cache(tmp_path, monkeypatch):
    """Where the file system takes no O_DIRECT, rows go through the page cache, are flushed on a
    helper thread as they come, and the flushed ones are dropped from it."""
    monkeypatch.setattr(streamed_file, "DIRECT", False)
    rows = 300
    images = np.random.default_rng(1).integers(0, 256, (rows, 224, 224, 3), np.uint8)
    info = write_rows(tmp_path, images)
    path = os.path.join(tmp_path, "shard-00000.images.npy")
    # The first background flush covers at least FLUSH_EVERY_BYTES; only later rows may be cached.
    assert resident_bytes(path) <= os.path.getsize(path) - streamed_file.FLUSH_EVERY_BYTES + 4096
    assert info.count == rows
    assert np.array_equal(np.load(path, mmap_mode="r"), images)


@pytest.mark.parametrize(
    ("shape", "rows", "capacity"),
    [
        ((32, 32, 3), 5, 5),  # the whole shard is one partial chunk
        ((224, 224, 3), 40, 40),  # chunks, then a partial one
        ((224, 224, 3), 37, 40),  # rejected inputs: the header is rewritten, the tail cut
        ((1300, 1300, 3), 3, 4),  # rows larger than a chunk
    ],
)
def test_direct_writes_keep_every_byte_in_place(tmp_path, shape, rows, capacity):
    """The padded last chunk is cut back, a short shard's header is rewritten in place, and rows
    that straddle chunks land where NumPy expects them; the checksum covers the bytes on disk."""
    images = np.random.default_rng(rows).integers(0, 256, (rows, *shape), np.uint8)
    info = write_rows(tmp_path, images, capacity)
    path = os.path.join(tmp_path, "shard-00000.images.npy")
    assert np.array_equal(np.load(path, mmap_mode="r"), images)
    assert info.files["shard-00000.images.npy"] == digest_file(path)


def test_a_file_system_that_refuses_a_direct_write_gets_it_through_the_page_cache(tmp_path, monkeypatch):
    """Some file systems accept O_DIRECT when the file is opened and refuse the write (EINVAL):
    the writer drops O_DIRECT and writes the same bytes through the page cache."""
    real_pwrite = os.pwrite
    refused = []

    def picky_pwrite(descriptor, data, offset):
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", picky_pwrite)
    images = np.random.default_rng(2).integers(0, 256, (40, 224, 224, 3), np.uint8)
    write_rows(tmp_path, images)
    assert refused == [0]
    assert np.array_equal(np.load(os.path.join(tmp_path, "shard-00000.images.npy")), images)


def test_a_failed_direct_write_fails_the_shard_instead_of_committing_it(tmp_path, monkeypatch):
    """An error of the helper thread's write reaches the task: nothing is committed."""

    def failing_pwrite(descriptor, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    with pytest.raises(OSError, match="Input/output error"):
        write_rows(tmp_path, np.zeros((200, 96, 96, 3), np.uint8))
    assert os.listdir(tmp_path) == []  # neither a committed shard nor a temporary file


def test_a_failed_background_flush_fails_the_shard_instead_of_committing_it(tmp_path, monkeypatch):
    """Linux reports a writeback error once per open file description: the final fsync, on a new
    descriptor, may never see it, so an error of the background fdatasync must not be dropped."""

    def failing_fdatasync(descriptor):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(streamed_file, "DIRECT", False)
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError, match="Input/output error"):
        write_rows(tmp_path, np.zeros((200, 224, 224, 3), np.uint8))
    assert os.listdir(tmp_path) == []  # neither a committed shard nor a temporary file


@pytest.mark.skipif(not streamed_file.DIRECT, reason="the platform has no O_DIRECT")
def test_a_direct_file_that_gets_no_buffer_leaves_no_descriptor_open(tmp_path, monkeypatch):
    def no_memory():
        raise MemoryError

    monkeypatch.setattr(streamed_file, "_take_buffer", no_memory)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(MemoryError):
        streamed_file.open_stream(str(tmp_path / "shard.npy"))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("format_name", ["npy", "tfrecord"])
@pytest.mark.parametrize(
    "image", [np.zeros((8, 9, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], ids=["shape", "dtype"]
)
def test_every_format_refuses_a_sample_of_another_shape_or_dtype_and_leaves_no_shard(tmp_path, format_name, image):
    """The writer base checks each sample against the layout, so TFRecord shards get the check the
    npy writer always made, and no format casts a second time."""
    layout = SampleLayout((8, 8, 3), "uint8")
    with pytest.raises(ValueError, match=r"expected \(8, 8, 3\) and uint8"):
        with get_format(format_name).open_writer(str(tmp_path), "shard-00000", 2, layout, CLASSES) as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8), np.int32(0))
            writer.write(image, np.int32(1))
    assert os.listdir(tmp_path) == []
