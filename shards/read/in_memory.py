"""A whole dataset held in memory: loaded once from its shards, then read in exactly the orders
the memory-mapped reader uses.

For datasets that fit, an epoch then costs no page faults and no disk reads, as
`tf.data.Dataset.cache()` gives, without tf.data's first-epoch-only order or its unbounded
growth: the bytes needed are known from the manifest and checked against a budget before
anything is loaded. Images stay in their stored dtype (uint8: one byte a value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from shards.errors import ConfigError
from shards.formats.base import ShardReader
from shards.io.memory import default_budget
from shards.options import parse_bytes

if TYPE_CHECKING:
    from shards.read.protocol import RandomAccessSource


class MemoryShardReader(ShardReader):
    """One shard's samples, already in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels, self.count = images, labels, len(images)

    def read(self, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        """See `ShardReader.read`."""
        np.take(self.images, rows, axis=0, out=images)
        np.take(self.labels, rows, axis=0, out=labels)


def bytes_needed(dataset: RandomAccessSource) -> int:
    """Bytes that every shard of `dataset`'s run takes in memory: images and stored targets."""
    sample = int(np.prod(dataset.shape)) * dataset.dtype.itemsize + dataset.targets.stored_dtype.itemsize
    return len(dataset.run()) * sample


def check_budget(dataset: RandomAccessSource, budget: int | str | None, where: str = "memory") -> int:
    """The bytes the dataset needs, after refusing a budget too small (default: half of the
    memory available to this process).

    Raises:
        ConfigError: one line with the bytes needed and the budget.
    """
    limit = parse_bytes(budget, "memory budget") if budget is not None else default_budget()
    needed = bytes_needed(dataset)
    if needed > limit:
        raise ConfigError(
            f"{dataset.dest}: holding the dataset in {where} needs {needed:,} bytes ({needed / 1e6:,.1f} MB, "
            f"as `shards plan` counts it), over the budget of {limit:,} bytes ({limit / 1e6:,.1f} MB); "
            "stream it from the shards instead, or raise the budget"
        )
    return needed


def load_readers(
    dataset: RandomAccessSource, counts: list[int], reader: Callable[[int], ShardReader]
) -> dict[int, ShardReader]:
    """Every shard of the run (`counts`: the samples of each), read once into memory through
    `reader(shard)`, the dataset's own reader of each shard (the whole run, whatever view
    `dataset` is)."""
    readers: dict[int, ShardReader] = {}
    for index, count in enumerate(counts):
        images = np.empty((count, *dataset.shape), dataset.dtype)
        labels = dataset.targets.empty(count)
        reader(index).read(np.arange(count), images, labels)
        readers[index] = MemoryShardReader(images, labels)
    return readers
