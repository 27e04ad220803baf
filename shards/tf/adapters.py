"""TensorFlow adapters over the read Protocol (`shards.read.protocol`): `to_tf` and the
device-resident cache; `ShardsPyDataset` (Keras 3 on any backend) lives in `shards.keras.dataset`
and is named here too.

Both hand the model uint8 (or the stored dtype) batches as they are on disk; scaling to [0, 1]
belongs in the model (a Rescaling layer) or the tf.data graph, on the device, not on the host.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from shards.errors import ConfigError
from shards.frameworks import import_tensorflow
from shards.keras.dataset import ShardsPyDataset
from shards.read.protocol import BatchSource, RandomAccessSource
from shards.read.sampling import batch_count, check_start, rank_batches
from shards.read.spec import ReadSpec
from shards.targets import Targets

if TYPE_CHECKING:
    import tensorflow

__all__ = ["CACHES", "ShardsPyDataset", "label_signature", "spec_to_tf", "to_tf"]

CACHES = (None, "host", "device")

tf = import_tensorflow(needed_for="to_tf()")


def to_tf(
    dataset: BatchSource,
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
) -> tensorflow.data.Dataset:
    """A `tf.data.Dataset` of (images, labels) batches for this rank, with a known length.

    With `start == 0`, each new iteration (each `model.fit` epoch) takes the next epoch's order,
    starting at `epoch`. With `start > 0`, the dataset is the rest of epoch `epoch` from that
    position (what a resumed run needs), on every iteration; build another for the epochs after.
    `on_batch(epoch, positions)` sees each batch's dataset positions as the pipeline reads it, in
    order (for audits and prediction bookkeeping).

    Args:
        dataset: the opened run (`shards.open(DEST)`, or a `split()` part of it).
        batch_size: samples per batch on this rank.
        shuffle, seed, epoch, rank, world_size, drop_last, start, prefetch: as for
            `ShardDataset.batches`.
        on_batch: called with (epoch, positions) for every batch read.
        cache: `"host"` loads the whole run into host memory once (`ShardDataset.in_memory`);
            `"device"` places it on TensorFlow's default device (the GPU where there is one)
            and gathers each batch there. Same batches, same order; None streams the shards.
        memory_budget: the most bytes the cache may take (default: half the available memory).

    Returns:
        A dataset of (uint8 or float images [B, H, W, 3], labels) whose cardinality is the
        number of batches this rank reads in one epoch. Labels follow the targets' kind: int32
        [B] class indices, float32 [B, classes] multi-hot, float32 [B] or [B, K] regression
        values, or a dict of these by target name (Keras' multi-output form).

    Raises:
        ConfigError: (a ValueError) bad slicing arguments (batch size, rank, world size, start).
        ManifestError: while iterating, a shard that is missing, damaged or replaced.
    """
    spec = dataset.read_spec(
        batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    return spec_to_tf(
        dataset,
        spec,
        epoch=epoch,
        start=start,
        prefetch=prefetch,
        on_batch=on_batch,
        cache=cache,
        memory_budget=memory_budget,
    )


def spec_to_tf(
    dataset: BatchSource,
    spec: ReadSpec,
    *,
    epoch: int = 0,
    start: int = 0,
    prefetch: int = 2,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    cache: str | None = None,
    memory_budget: int | str | None = None,
) -> tensorflow.data.Dataset:
    """`to_tf` for a reader described by a `ReadSpec` (what training and resumes hold).

    Raises:
        ConfigError: an unknown `cache`, or a dataset over `memory_budget` (before loading).
    """
    check_start(len(dataset), start)
    if cache not in CACHES:
        raise ConfigError(f"cache must be one of host, device or None, got {cache!r}")
    if cache is not None:
        if not isinstance(dataset, RandomAccessSource):
            raise ConfigError(f"{dataset.dest}: an in-memory cache needs shards this process can read")
        if cache == "device":
            return _device_resident(dataset, spec, epoch=epoch, start=start, on_batch=on_batch, budget=memory_budget)
        dataset = dataset.in_memory(memory_budget)
    epochs = itertools.count(epoch)

    def generate() -> Iterator[tuple[np.ndarray, Any]]:
        current = epoch if start else next(epochs)
        stream = dataset.stream(spec, epoch=current, start=start, prefetch=prefetch, return_indices=True)
        try:
            for images, labels, positions in stream:
                if on_batch is not None:
                    on_batch(current, positions)
                yield images, labels
        finally:
            stream.close()

    signature = (tf.TensorSpec((None, *dataset.shape), tf.as_dtype(dataset.dtype)), label_signature(dataset.targets))
    count = batch_count(len(dataset), spec, start=start)
    result = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return result.apply(tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)


def label_signature(targets: Targets) -> Any:
    """The `tf.TensorSpec` (or dict of them, several targets) of a batch's labels."""

    def spec(dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        return tf.TensorSpec((None, *shape), tf.as_dtype(dtype))

    specs = targets.output_specs()
    if isinstance(specs, dict):
        return {name: spec(*entry) for name, entry in specs.items()}
    return spec(*specs)


def _device_resident(
    dataset: RandomAccessSource,
    spec: ReadSpec,
    *,
    epoch: int,
    start: int,
    on_batch: Callable[[int, np.ndarray], None] | None,
    budget: int | str | None,
) -> tensorflow.data.Dataset:
    """The run as tensors on the default device, each batch a gather there: only the batch's
    positions (a few KB) travel from the host per step. The positions and their order are the
    streaming reader's, so the batches are the same. The run is loaded once for all the views
    of it (a train and a validation part, a resumed epoch)."""
    from shards.read.in_memory import check_budget

    def load() -> tuple[Any, Any]:
        check_budget(dataset, budget, where="device memory")
        whole = dataset.run()
        images, labels = whole.read(np.arange(len(whole)))  # one host copy, read in storage order
        return tf.constant(images), tf.nest.map_structure(tf.constant, labels)  # the host copy goes on return

    on_device_images, on_device_labels = dataset.held_run("device", load)
    subset = dataset.run_positions()
    epochs = itertools.count(epoch)

    def positions() -> Iterator[np.ndarray]:
        current = epoch if start else next(epochs)
        order = dataset.epoch_order(spec, current)
        for batch in rank_batches(order, spec, start=start):
            batch = np.sort(batch)
            if on_batch is not None:
                on_batch(current, batch)
            yield batch if subset is None else subset[batch]

    def gather(indices: Any) -> tuple[Any, Any]:
        return tf.gather(on_device_images, indices), tf.nest.map_structure(
            lambda values: tf.gather(values, indices), on_device_labels
        )

    count = batch_count(len(dataset), spec, start=start)
    indices = tf.data.Dataset.from_generator(positions, output_signature=tf.TensorSpec((None,), tf.int64))
    result = indices.map(gather).apply(tf.data.experimental.assert_cardinality(count))
    return result.prefetch(tf.data.AUTOTUNE)
