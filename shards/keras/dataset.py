"""`ds.to_keras()`: a Keras 3 `PyDataset`, which `model.fit` takes on every backend.

Keras 3 feeds `fit` from a `keras.utils.PyDataset` on TensorFlow, JAX and PyTorch alike, so a
JAX or PyTorch user trains from shards with no TensorFlow installed (keras-team/keras#19933,
#20603 ask for exactly that). The batches, their order, the epochs and the resume position are
the reader's own (`ReadSpec`, `rank_batches`), so they are the same as `to_tf()` hands
TensorFlow for the same arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shards.frameworks import import_keras
from shards.read.protocol import RandomAccessSource
from shards.read.sampling import RankBatches, batch_count, check_start, rank_batches

keras = import_keras("to_keras()")


class ShardsPyDataset(keras.utils.PyDataset):  # type: ignore[name-defined]
    """A Keras 3 PyDataset: random access to this rank's batches of the current epoch.

    Each epoch after the first moves to the next epoch's order (`epoch` is the one being read),
    so shuffling differs between epochs exactly as with `batches()`; Keras' own workers
    (`workers=`, `use_multiprocessing=`) can index it. With `start > 0` it is the rest of epoch
    `epoch` from that position, on every epoch (what a resumed run finishes before going on
    with a dataset for the epochs after), as `to_tf()` does.

    Args:
        dataset: the opened run (`shards.open(DEST)`, a `split()` part or an `in_memory()` view).
        batch_size: samples per batch on this rank.
        shuffle, seed, epoch, rank, world_size, drop_last, start: as for `ShardDataset.batches`.
        on_batch: called with (epoch, positions) the first time each batch of an epoch is read
            (audits, bookkeeping): Keras reads one batch ahead of the first epoch to build the
            model, and that read is not counted twice.
        **pydataset_kwargs: passed to `keras.utils.PyDataset` (`workers`, `use_multiprocessing`,
            `max_queue_size`).

    Raises:
        ConfigError: (a ValueError) bad slicing arguments (batch size, rank, world size, start).
        ManifestError: when a batch is read, a shard that is missing, damaged or replaced.
    """

    def __init__(
        self,
        dataset: RandomAccessSource,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start: int = 0,
        on_batch: Callable[[int, np.ndarray], None] | None = None,
        **pydataset_kwargs: Any,
    ) -> None:
        super().__init__(**pydataset_kwargs)
        self.dataset = dataset
        self.spec = dataset.read_spec(
            batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
        )
        check_start(len(dataset), start)
        self.epoch, self.start, self.on_batch = epoch, start, on_batch
        self._batches: RankBatches | None = None
        self._read: set[int] = set()  # the batches of `epoch` read so far
        self._begun = False

    def __len__(self) -> int:
        return batch_count(len(self.dataset), self.spec, start=self.start)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if self._batches is None:
            order = self.dataset.epoch_order(self.spec, self.epoch)
            self.dataset.schedule(order, self.start, self.spec)
            self._batches = rank_batches(order, self.spec, start=self.start)
        if not 0 <= index < len(self._batches):
            raise IndexError(index)
        positions = np.sort(self._batches[index])
        if index not in self._read:
            self._read.add(index)
            if self.on_batch is not None:
                self.on_batch(self.epoch, positions)
        return self.dataset.read(positions)

    def on_epoch_begin(self) -> None:
        # The order moves to the next epoch at a begin that follows a whole epoch read. Keras
        # also reads a batch to build the model, around a begin of its own on some backends
        # (JAX) and without one on others (TensorFlow): counting begins alone would skip an
        # epoch's order on one of them.
        if self._begun and not self.start and len(self._read) == len(self):
            self.epoch += 1
            self._batches = None
            self._read = set()
        self._begun = True
