"""The npy shard writer on its own (no Ray): what it leaves on disk and in the page cache."""

import errno
import os
import subprocess

import numpy as np
import pytest

from shards.formats import get_format
from shards.layout.targets import Targets
from shards.options import PreprocessOptions

CLASSES = Targets.single_class([str(i) for i in range(7)])


def resident_bytes(path: str) -> int:
    """How many of the file's bytes are in the page cache, as util-linux's fincore reports."""
    result = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[0])


def test_written_rows_leave_the_page_cache_once_they_are_on_disk(tmp_path):
    """A long run must not fill the page cache with shards it never reads back (reclaiming it
    cost ~18% of throughput on the bench machine): rows already flushed are dropped from it."""
    options = PreprocessOptions(size=224)
    rows = 300
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (rows, 224, 224, 3), np.uint8)
    with get_format("npy").open_writer(str(tmp_path), "shard-00000", rows, options, CLASSES) as writer:
        for row in range(rows):
            writer.write(images[row], np.int32(row % 7))
        info = writer.close()
    path = os.path.join(tmp_path, "shard-00000.images.npy")
    size = os.path.getsize(path)
    row_bytes = 224 * 224 * 3
    # The first background flush covers at least 64 rows; only later rows may still be cached.
    assert resident_bytes(path) <= size - 64 * row_bytes + 4096
    assert info.count == rows
    assert np.array_equal(np.load(path, mmap_mode="r"), images)  # read back from disk, intact


def test_a_failed_background_flush_fails_the_shard_instead_of_committing_it(tmp_path, monkeypatch):
    """Linux reports a writeback error once per open file description: the final fsync, on a new
    descriptor, may never see it, so an error of the background fdatasync must not be dropped."""

    def failing_fdatasync(descriptor):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    options = PreprocessOptions(size=32)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(OSError, match="Input/output error"):
        with get_format("npy").open_writer(str(tmp_path), "shard-00000", 200, options, CLASSES) as writer:
            for _ in range(200):
                writer.write(image, np.int32(0))
            writer.close()
    assert os.listdir(tmp_path) == []  # neither a committed shard nor a temporary file
