"""`shards plan`: what a run will produce, computed from the listing alone, before any decoding.

Sample count and shard count are exact when no input is rejected, and so are the bytes on disk
where the format can say them (npy: its headers are built the way NumPy writes them; TFRecord
gives an upper bound); batch memory follows from the sample size, and the largest batch that
fits a memory budget from the reader's bound of prefetch + 2 batches held at once.
"""

from __future__ import annotations

import dataclasses

from shards.formats import SampleLayout, check_format
from shards.layout.plan import plan_shards
from shards.options import DTYPE_BYTES, PreprocessOptions
from shards.sources import list_sources

DEVICE_DTYPE_BYTES = 4  # the model sees float32 after scaling (2 with mixed precision)


@dataclasses.dataclass(frozen=True)
class RunEstimate:
    """The figures `shards plan` prints."""

    samples: int
    classes: int
    shards: int
    samples_per_shard: int
    bytes_on_disk: int
    bytes_on_disk_by_dtype: dict[str, int]
    sample_bytes: int
    batch_size: int
    host_batch_bytes: int
    device_batch_bytes: int
    bytes_in_memory: int
    largest_batch_host: int | None
    largest_batch_device: int | None


def estimate_run(
    src: str, options: PreprocessOptions, *, batch_size: int = 256, memory: int | None = None, prefetch: int = 2
) -> RunEstimate:
    """List SRC and compute what `shards preprocess SRC ... options` would write.

    Raises:
        ConfigError: a format or compression that does not exist (before SRC is listed).
    """
    shard_format = check_format(options.format, options.compression)
    listing = list_sources(src, **options.listing_arguments())
    targets = listing.run_targets.stored_dtype
    label_bytes = targets.itemsize
    plan = plan_shards(
        len(listing), options.samples_per_shard(len(listing)), options.seed, shuffle=not listing.keeps_order
    )
    counts = plan.counts()
    by_dtype = {
        dtype: sum(
            shard_format.shard_bytes(n, SampleLayout(options.shape, dtype, options.compression), targets)
            for n in counts
        )
        for dtype in DTYPE_BYTES
    }
    height, width, channels = options.shape
    device_sample = height * width * channels * DEVICE_DTYPE_BYTES
    host_batch = batch_size * (options.sample_bytes + label_bytes)
    largest_host = largest_device = None
    if memory is not None:
        largest_host = memory // ((prefetch + 2) * (options.sample_bytes + label_bytes))
        largest_device = memory // (device_sample + label_bytes)
    return RunEstimate(
        samples=len(listing),
        classes=len(listing.run_targets.classes),
        shards=len(plan),
        samples_per_shard=plan.samples_per_shard,
        bytes_on_disk=by_dtype[options.dtype],
        bytes_on_disk_by_dtype=by_dtype,
        sample_bytes=options.sample_bytes,
        batch_size=batch_size,
        host_batch_bytes=host_batch,
        device_batch_bytes=batch_size * (device_sample + label_bytes),
        bytes_in_memory=len(listing) * (options.sample_bytes + label_bytes),
        largest_batch_host=largest_host,
        largest_batch_device=largest_device,
    )
