"""`ds.to_torch()`: a rank's batches as a `torch.utils.data.IterableDataset`.

Under `DataLoader(feed, batch_size=None, num_workers=k)` worker w reads every k-th of the
rank's batches from w, and the DataLoader hands the workers' batches out round-robin, so the
loader yields exactly the batches `ds.batches()` gives for the same seed and epoch, in that
order, each sample once an epoch; a worker with no batch left (more workers than batches)
simply ends. Batching is the reader's, not torch's: a batch is one gather from the memory-mapped
shards, not `batch_size` single reads collated, and the rank's slice comes from one global order,
as with `batches()`, so resuming after a change of world size neither repeats nor skips a sample
(what torch's DistributedSampler cannot do).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from shards.frameworks import import_torch
from shards.read.protocol import BatchSource, RandomAccessSource
from shards.read.sampling import batch_count, check_start
from shards.read.spec import ReadSpec

torch = import_torch("to_torch()")


def to_torch(
    dataset: BatchSource,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    start: int = 0,
    prefetch: int = 2,
    columns: list[str] | tuple[str, ...] | None = None,
    channels_first: bool = False,
    drop_remainder: bool | None = None,
) -> ShardsIterableDataset:
    """An IterableDataset of (images, targets[, columns]) tensor batches of this rank's slice.

    Args:
        dataset: the opened run (`shards.open(DEST)`, a `split()` part or an `in_memory()` view).
        batch_size: samples per batch on this rank.
        shuffle, seed, epoch, start: as for `ShardDataset.batches` (`start`: a position in the
            epoch's global order to resume from; later epochs, from `set_epoch`, start at 0).
        rank, world_size: this reader's slice; default: `torch.distributed`'s rank and world
            size when it is initialised (Ray Train's TorchTrainer does), else 0 of 1.
        drop_last: drop the last incomplete global batch instead of padding it (as `batches()`).
        columns: extra columns (`--columns`, or `source`) to yield as a third item, a dict
            by name: numeric columns as tensors, others as lists.
        channels_first: images as [B, C, H, W] (a channels-last view of the same memory,
            which PyTorch's convolutions take without a copy); default [B, H, W, C].
        prefetch: batches each reader gathers ahead on a background thread.
        drop_remainder: the former name of `drop_last`; still taken in this release, with a
            DeprecationWarning.

    Returns:
        An IterableDataset whose `len()` is the rank's batch count. Images are tensors in the
        stored dtype (torch.uint8 by default, torch.bfloat16 for bfloat16 shards); targets in
        PyTorch's convention: int64 class indices (what `F.cross_entropy` takes), float32
        multi-hot or values, or a dict of these by target name (`batches()` keeps int32).

    Raises:
        ConfigError: (a ValueError) a batch size below 1, a rank outside [0, world_size), a
            `start` outside the epoch, or an unknown column.
    """
    if drop_remainder is not None:
        warnings.warn(
            "to_torch(drop_remainder=...) is now drop_last=..., as in batches(), to_tf() and to_keras(); "
            "drop_remainder goes in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        drop_last = drop_remainder
    rank, world_size = _distributed_slice(rank, world_size)
    spec = dataset.read_spec(
        batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    check_start(len(dataset), start)
    names = tuple(columns or ())
    if names and isinstance(dataset, RandomAccessSource):  # a remote stream checks them where it reads
        dataset.columns(names, np.empty(0, np.int64))  # refuses an unknown column now, not in a worker
    return ShardsIterableDataset(
        dataset, spec, epoch=epoch, start=start, columns=names, channels_first=channels_first, prefetch=prefetch
    )


def _distributed_slice(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The rank and world size given, else torch.distributed's, else 0 of 1."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    return rank, world_size


class ShardsIterableDataset(torch.utils.data.IterableDataset):  # type: ignore[name-defined]
    """One rank's batches of an epoch; made by `to_torch`. Call `set_epoch(n)` before each
    epoch after the first, as with torch's DistributedSampler, for the next epoch's order."""

    def __init__(
        self,
        dataset: BatchSource,
        spec: ReadSpec,
        *,
        epoch: int,
        start: int,
        columns: tuple[str, ...],
        channels_first: bool,
        prefetch: int,
    ) -> None:
        super().__init__()
        self.dataset, self.spec = dataset, spec
        self.epoch, self.start = epoch, start
        self.columns, self.channels_first, self.prefetch = columns, channels_first, prefetch

    def __len__(self) -> int:
        return batch_count(len(self.dataset), self.spec, start=self.start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read epoch `epoch` (its own order when shuffled) from position `start` on the next pass.

        Raises:
            ConfigError: `start` outside the epoch.
        """
        check_start(len(self.dataset), start)
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        worker = torch.utils.data.get_worker_info()
        part = (worker.id, worker.num_workers) if worker is not None and worker.num_workers > 1 else None
        stream = self.dataset.stream(
            self.spec, epoch=self.epoch, start=self.start, prefetch=self.prefetch, columns=self.columns, part=part
        )
        try:
            for batch in stream:
                yield self._tensors(batch)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _tensors(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        images = as_tensor(batch[0])
        if self.channels_first:
            images = images.permute(0, 3, 1, 2)
        labels = batch[1]
        targets = {name: _target(v) for name, v in labels.items()} if isinstance(labels, dict) else _target(labels)
        if not self.columns:
            return images, targets
        extra = {name: _column(values) for name, values in batch[2].items()}
        return images, targets, extra


def as_tensor(array: np.ndarray) -> Any:
    """A tensor over the same memory, in the same dtype (bfloat16's bits as torch.bfloat16)."""
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _target(values: np.ndarray) -> Any:
    """Targets in PyTorch's convention: class indices as int64, which `F.cross_entropy` and
    `nn.NLLLoss` require; multi-hot and regression values stay float32."""
    if values.dtype.kind in "iu":
        return torch.from_numpy(values.astype(np.int64))
    return as_tensor(values)


def _column(values: np.ndarray) -> Any:
    if values.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(values))
    return values.tolist()
