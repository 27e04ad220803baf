"""What `shards.open(DEST)` hands out: a run's reader with the framework feeds on it.

The reader (`shards.read`) sits below the frameworks, and the feeds (`shards.tf`,
`shards.keras`, `shards.torch`) read through its Protocol; this module, on the floor above
both, puts them together as the documented object: `ds.batches()`, `ds[i]`, `ds.split()` and
`ds.to_tf()`, `ds.to_keras()`, `ds.to_torch()`. Each feed imports its framework only when
called, so opening a dataset needs none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from shards.errors import ConfigError
from shards.frameworks import import_keras, import_tensorflow, import_torch
from shards.read.dataset import RunReader
from shards.read.protocol import BatchSource, RandomAccessSource
from shards.read.remote import RemoteRunReader


class FrameworkFeeds:
    """`to_tf`, `to_keras` and `to_torch` on any reader of the read Protocol (the class it is
    mixed into is one: hence the casts)."""

    # The feeds' keywords are written out, not passed as **kwargs, so help() and editors show
    # them; tests/test_feed_signatures.py holds them to the reading vocabulary of `batches()`.

    def to_tf(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start: int = 0,
        prefetch: int = 2,
        on_batch: Callable[[int, np.ndarray], None] | None = None,
        cache: str | None = None,
        memory_budget: int | str | None = None,
    ) -> Any:
        """A `tf.data.Dataset` of (images, labels) batches; see `shards.tf.adapters.to_tf`.

        Raises:
            MissingExtraError: TensorFlow is not installed.
        """
        import_tensorflow(quiet=True, needed_for="to_tf()")
        from shards.tf.adapters import to_tf

        return to_tf(
            cast(BatchSource, self),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start=start,
            prefetch=prefetch,
            on_batch=on_batch,
            cache=cache,
            memory_budget=memory_budget,
        )

    def to_keras(
        self,
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
    ) -> Any:
        """A `keras.utils.PyDataset` of (images, labels) batches, on any Keras 3 backend; see
        `shards.keras.dataset.ShardsPyDataset` (`pydataset_kwargs`: PyDataset's `workers`,
        `use_multiprocessing`, `max_queue_size`).

        Raises:
            MissingExtraError: Keras (or its backend's framework) is not installed.
            ConfigError: a dataset streamed from another node (a PyDataset indexes its batches).
        """
        if not isinstance(self, RandomAccessSource):
            raise ConfigError(
                "to_keras() indexes batches, which a dataset streamed from another node cannot: "
                "feed it with to_tf() or to_torch()"
            )
        import_keras("to_keras()")
        from shards.keras.dataset import ShardsPyDataset

        return ShardsPyDataset(
            cast(RandomAccessSource, self),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start=start,
            on_batch=on_batch,
            **pydataset_kwargs,
        )

    def to_torch(
        self,
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
    ) -> Any:
        """A `torch.utils.data.IterableDataset` of this rank's batches as tensors; see
        `shards.torch.dataset.to_torch` (`rank`/`world_size` default to torch.distributed's).

        Raises:
            MissingExtraError: PyTorch is not installed.
        """
        import_torch("to_torch()")
        from shards.torch.dataset import to_torch

        return to_torch(
            cast(BatchSource, self),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start=start,
            prefetch=prefetch,
            columns=columns,
            channels_first=channels_first,
            drop_remainder=drop_remainder,
        )


class ShardDataset(FrameworkFeeds, RunReader):
    """A finished shards run, read-only (see `shards.read.dataset.RunReader`), with the framework
    feeds. Its `split()` parts, `in_memory()` views and pickled copies are ShardDatasets too."""


class RemoteShardDataset(FrameworkFeeds, RemoteRunReader):
    """A run on another node's disk, streamed here through Ray (see
    `shards.read.remote.RemoteRunReader`), with the framework feeds."""


def open_shards(
    dest: str,
    *,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    shuffle_window: int | None = None,
    verify: bool = False,
) -> ShardDataset:
    """Open a finished shards run in DEST (a folder, or an s3:// / gs:// prefix) for reading.

    Args:
        dest: where the run was written.
        cache_dir: for object storage, the node's cache folder, shared by every process that
            reads the run on this machine and kept between runs; default: $SHARDS_CACHE_DIR,
            else `shards-cache-<uid>` in the system's temp folder.
        cache_limit: for object storage, the most bytes of shards the node's cache keeps (bytes
            or text such as "2GiB"); default 8 GiB. Must hold at least two shards.
        shuffle_window: shuffle within windows of this many shards (the same on every rank).
            Default: the whole dataset for a folder; what fits in the cache for object storage.
        verify: hash each shard file when it is first opened and refuse one whose sha256
            differs from the manifest (object-storage shards are always hashed on download).

    The dataset is bound to the run it opened: a shard file replaced since (another run wrote
    DEST with `--overwrite`) is refused with a ManifestError rather than read, so batches never
    mix two runs. Shards already memory-mapped stay readable. Memory maps have one limit no
    reader can check: a shard truncated in place while mapped makes the OS kill the process
    with SIGBUS on the next read of the lost pages (`shards verify` reports such a shard).

    Raises:
        ManifestError: DEST holds no complete run, or one this version cannot read; later, on
            reading, a shard that is missing, replaced, damaged or not a regular file.
        ConfigError: the cache cannot hold two shards, or cache settings for a local DEST.
    """
    return ShardDataset(
        dest, cache_dir=cache_dir, cache_limit=cache_limit, shuffle_window=shuffle_window, verify=verify
    )
