"""What the framework adapters read through: two small Protocols instead of `ShardDataset`.

`to_tf`, `to_keras`, `to_torch` and training take any object with these members: a
`ShardDataset` (memory-mapped or cached shards), one of its `split()` parts or `in_memory()`
views, or a `RemoteShardDataset` (batches streamed from the node that holds the shards). The
adapters then never import the reader's classes, and a new reader needs no adapter changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shards.read.sampling import Order
from shards.read.spec import ReadSpec
from shards.targets import Targets


class Batches(Iterator[tuple[Any, ...]], Protocol):
    """A stream of batches that can be stopped early (its prefetch, or its remote task, ends)."""

    def close(self) -> None: ...


@runtime_checkable
class BatchSource(Protocol):
    """A dataset that streams one rank's batches of an epoch (all that a generator feed needs)."""

    dest: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    targets: Targets

    def __len__(self) -> int: ...

    def read_spec(self, batch_size: int, **fields: Any) -> ReadSpec:
        """A `ReadSpec` for this dataset (its shuffle window filled in)."""
        ...

    def stream(
        self,
        spec: ReadSpec,
        *,
        epoch: int = 0,
        start: int = 0,
        prefetch: int = 2,
        return_indices: bool = False,
        columns: tuple[str, ...] = (),
        part: tuple[int, int] | None = None,
    ) -> Batches:
        """(images, labels[, columns][, positions]) batches of epoch `epoch` as `spec` slices
        it, from `start`; with `part=(index, count)`, every count-th of them from index."""
        ...

    def split(self, fraction: float, seed: int = 0) -> tuple[Any, Any]:
        """(train, validation) parts of the same kind."""
        ...


@runtime_checkable
class RandomAccessSource(BatchSource, Protocol):
    """A dataset this process reads itself: any batch at any time, and the whole run in memory."""

    def epoch_order(self, spec: ReadSpec, epoch: int) -> Order:
        """The global order of epoch `epoch` over the dataset's positions."""
        ...

    def schedule(
        self, order: Order, start: int = 0, spec: ReadSpec | None = None, part: tuple[int, int] | None = None
    ) -> None:
        """Say which positions the reads of `order[start:]` use, in order (a cache fetches ahead):
        with `spec`, its rank's slice; with `part`, one share of the rank's batches."""
        ...

    def read(self, indices: np.ndarray, *, pool: Any = None) -> tuple[np.ndarray, Any]:
        """(images, labels) of the samples at `indices`, in ascending order of position (into a
        buffer of `pool`, a `shards.read.stream.BufferPool`, when given)."""
        ...

    def columns(self, names: list[str] | tuple[str, ...], positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Extra columns of the samples at `positions`; refuses a column the run did not carry."""
        ...

    def in_memory(self, budget: int | str | None = None) -> Any:
        """This dataset with its whole run loaded into host memory once."""
        ...

    def run(self) -> Any:
        """The whole run this dataset is a part of."""
        ...

    def run_positions(self) -> np.ndarray | None:
        """This part's positions in its run (None: the whole run)."""
        ...

    def held_run(self, kind: str, load: Any) -> Any:
        """The whole run as the in-memory cache `kind` holds it, loaded once for every view."""
        ...
