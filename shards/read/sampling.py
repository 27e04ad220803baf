"""Which samples each rank reads, batch by batch: pure functions of (n, seed, epoch, ranks).

All ranks cut one global order into global batches of `batch_size * world_size` and rank r takes
the r-th slice of each. So for any world size every sample is seen once per epoch, every rank
gets the same number of batches, and a position in the global order (`start`) means the same
thing whatever the world size: resuming with another number of workers neither repeats nor
skips a sample. The global order is computed batch by batch (`Permutation`), never held: an
epoch over a billion samples costs a reader nothing a sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shards.errors import ConfigError
from shards.permutation import Permutation
from shards.read.spec import ReadSpec

Order = np.ndarray | Permutation
"""An epoch's global order: positions by place, as an array or computed (`Permutation`)."""


def epoch_order(count: int, *, shuffle: bool, seed: int, epoch: int) -> Permutation:
    """The global order of an epoch: a permutation from (seed, epoch), or storage order."""
    return Permutation(count, [seed, epoch], shuffle=shuffle)


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


def check_epoch(epoch: int) -> None:
    """Refuse an epoch number that names no epoch (its order is keyed by it)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ConfigError(f"epoch must be a non-negative integer, got {epoch!r}")


def check_start(count: int, start: int) -> None:
    """Refuse a resume position outside the epoch."""
    if not 0 <= start <= count:
        raise ConfigError(f"start must be in [0, {count}], got {start}")


class RankBatches:
    """Rank `spec.rank`'s batches of global sample indices from `order[start:]`, computed one
    at a time: a sequence (`len`, `[i]`, iteration) that holds no array of the epoch.

    With `drop_last`, the last incomplete global batch is dropped, so no sample repeats. Without
    it, the remainder is padded to a multiple of `world_size` with the first samples of the order
    (as torch's DistributedSampler pads), so every rank's last batch has the same size.
    """

    def __init__(self, order: Order, spec: ReadSpec, *, start: int = 0) -> None:
        check_start(len(order), start)
        self.order, self.spec, self.start = order, spec, start
        remaining = len(order) - start
        if spec.drop_last:
            self._remaining = self._total = remaining // spec.global_batch * spec.global_batch
        else:
            self._remaining, self._total = remaining, remaining + (-remaining % spec.world_size)

    def __len__(self) -> int:
        return (self._total + self.spec.global_batch - 1) // self.spec.global_batch

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        begin = index * self.spec.global_batch
        share = (min(begin + self.spec.global_batch, self._total) - begin) // self.spec.world_size
        places = np.arange(begin + self.spec.rank * share, begin + (self.spec.rank + 1) * share, dtype=np.int64)
        padding = places >= self._remaining  # past the end: the first samples of the order again
        places[~padding] += self.start
        places[padding] = (places[padding] - self._remaining) % max(1, len(self.order))
        return np.asarray(self.order[places], np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def rank_batches(order: Order, spec: ReadSpec, *, start: int = 0) -> RankBatches:
    """Rank `spec.rank`'s batches of `order[start:]` (see `RankBatches`)."""
    return RankBatches(order, spec, start=start)


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
