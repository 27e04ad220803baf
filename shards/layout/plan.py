"""The shard plan: which inputs go into which shard, decided before any work starts.

The plan is a pure function of the number of inputs, the samples per shard and the seed, so the
same input and options give the same shards whatever the number of workers, and `--resume` can
recompute it and trust every shard that still verifies. Its order is a computed permutation, not
an array: planning a billion inputs costs the driver nothing a sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from shards.permutation import Permutation

SHARD_NAME_FORMAT = "shard-{:05d}"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One shard to write: its name and the listing positions it holds, in order."""

    index: int
    name: str
    positions: np.ndarray


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """The permuted listing cut into shards of `samples_per_shard` (the last may be shorter),
    named from shard `first` on (an append continues a run's numbering)."""

    order: Permutation
    samples_per_shard: int
    first: int = 0

    def __len__(self) -> int:
        return (len(self.order) + self.samples_per_shard - 1) // self.samples_per_shard

    def __iter__(self) -> Iterator[ShardSpec]:
        return (self[i] for i in range(len(self)))

    def named(self, name: str) -> ShardSpec:
        """The spec of the shard called `name`."""
        return self[int(name.removeprefix(SHARD_NAME_FORMAT.split("{")[0])) - self.first]

    def counts(self) -> list[int]:
        """Each shard's sample count, in plan order."""
        full, last = divmod(len(self.order), self.samples_per_shard)
        return [self.samples_per_shard] * full + ([last] if last else [])

    def names(self) -> list[str]:
        """The shards' names, in plan order (without computing their positions)."""
        return [shard_name(self.first + i) for i in range(len(self))]

    def __getitem__(self, index: int) -> ShardSpec:
        if not 0 <= index < len(self):
            raise IndexError(index)
        begin = index * self.samples_per_shard
        return ShardSpec(index, shard_name(self.first + index), self.order[begin : begin + self.samples_per_shard])


def shard_name(index: int) -> str:
    """The name of shard `index`: zero-padded so names sort in plan order."""
    return SHARD_NAME_FORMAT.format(index)


def plan_shards(count: int, samples_per_shard: int, seed: int, *, shuffle: bool = True, first: int = 0) -> ShardPlan:
    """Permute `count` listing positions with `seed` and cut them into shards.

    The permutation mixes classes across shards (a folder listing is sorted by class), so any
    contiguous run of shards is a fair sample of the whole set. `shuffle=False` keeps the
    listing's order: for containers (tar archives, Parquet files, arrays), where a shard of
    consecutive inputs reads a few contiguous byte ranges instead of a little of every container.
    `first` is the number of the first shard (the shards a run already has, for an append).
    """
    if count < 0 or samples_per_shard < 1:
        raise ValueError(f"count must be >= 0 and samples_per_shard >= 1, got {count}, {samples_per_shard}")
    return ShardPlan(Permutation(count, [seed], shuffle=shuffle), samples_per_shard, first)
