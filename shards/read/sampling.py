"""Which samples each rank reads, batch by batch: pure functions of (n, seed, epoch, ranks).

All ranks cut one global order into global batches of `batch_size * world_size` and rank r takes
the r-th slice of each. So for any world size every sample is seen once per epoch, every rank
gets the same number of batches, and a position in the global order (`start`) means the same
thing whatever the world size: resuming with another number of workers neither repeats nor
skips a sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shards.errors import ConfigError
from shards.read.spec import ReadSpec


def epoch_order(count: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The global order of an epoch: a permutation from (seed, epoch), or storage order."""
    if not shuffle:
        return np.arange(count, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(count)


def window_order(shard_of: np.ndarray, *, seed: int, epoch: int, window: int) -> np.ndarray:
    """A shuffled epoch order that reads `window` shards at a time: a permutation from
    (seed, epoch) of the shards, cut into windows, each window's samples permuted together.

    `shard_of[i]` is the shard holding position i (non-decreasing). This is the order a reader
    with a cache of a few shards can serve: each shard is fetched once per epoch.
    """
    if window < 1:
        raise ConfigError(f"shuffle window must be at least 1 shard, got {window}")
    if not len(shard_of):
        return np.empty(0, np.int64)
    rng = np.random.default_rng([seed, epoch, 0x3A7D])
    shards = np.unique(shard_of)
    slot = np.empty(int(shards[-1]) + 1, np.int64)
    slot[rng.permutation(shards)] = np.arange(len(shards))
    keys = rng.random(len(shard_of))
    return np.lexsort((keys, slot[shard_of] // window)).astype(np.int64)


def check_start(count: int, start: int) -> None:
    """Refuse a resume position outside the epoch."""
    if not 0 <= start <= count:
        raise ConfigError(f"start must be in [0, {count}], got {start}")


def rank_batches(order: np.ndarray, spec: ReadSpec, *, start: int = 0) -> Iterator[np.ndarray]:
    """Yield rank `spec.rank`'s batches of global sample indices from `order[start:]`.

    With `drop_last`, the last incomplete global batch is dropped, so no sample repeats. Without
    it, the remainder is padded to a multiple of `world_size` with the first samples of the order
    (as torch's DistributedSampler pads), so every rank's last batch has the same size.
    """
    check_start(len(order), start)
    remaining = order[start:]
    global_batch, world_size = spec.global_batch, spec.world_size
    if spec.drop_last:
        remaining = remaining[: len(remaining) // global_batch * global_batch]
    else:
        pad = -len(remaining) % world_size
        if pad:
            remaining = np.concatenate([remaining, np.resize(order, pad)])
    for begin in range(0, len(remaining), global_batch):
        chunk = remaining[begin : begin + global_batch]
        share = len(chunk) // world_size
        yield chunk[spec.rank * share : (spec.rank + 1) * share]


def batch_count(count: int, spec: ReadSpec, *, start: int = 0) -> int:
    """How many batches each rank gets from `rank_batches` with the same arguments."""
    remaining = count - start
    if spec.drop_last:
        return remaining // spec.global_batch
    padded = remaining + (-remaining % spec.world_size)
    return (padded + spec.global_batch - 1) // spec.global_batch


def position_after(count: int, spec: ReadSpec, batches: int, *, start: int = 0) -> int:
    """The global position reached once every rank has consumed `batches` batches from `start`."""
    return min(count, start + batches * spec.global_batch)
