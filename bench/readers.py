"""Reader throughput and memory, run as `python -m bench.readers NAME DEST ...` in its own process.

Each reader streams the whole dataset once to warm the page cache, then is timed over full
passes (the best of `repeats`), so the figures compare pipelines, not the disk.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np

from bench.procmem import PeakSampler

BATCH = 256


def _timed(passes: int, run) -> tuple[float, int]:
    run()  # warm the page cache and any lazy set-up
    best, images = float("inf"), 0
    for _ in range(passes):
        begin = time.perf_counter()
        images = run()
        best = min(best, time.perf_counter() - begin)
    return best, images


def plain_copy(dest: str) -> int:
    """The memory-bandwidth bound: copy every memmapped shard into batch buffers, in order."""
    buffer = None
    count = 0
    for path in sorted(glob.glob(os.path.join(dest, "shard-*.images.npy"))):
        images = np.load(path, mmap_mode="r")
        if buffer is None:
            buffer = np.empty((BATCH, *images.shape[1:]), images.dtype)
        for begin in range(0, len(images), BATCH):
            chunk = images[begin : begin + BATCH]
            np.copyto(buffer[: len(chunk)], chunk)
            count += len(chunk)
    return count


def shards_batches(dest: str, shuffle: bool) -> int:
    import shards

    return sum(len(images) for images, _ in shards.open(dest).batches(BATCH, shuffle=shuffle, seed=1))


def shards_to_tf(dest: str) -> int:
    import shards

    return sum(int(images.shape[0]) for images, _ in shards.open(dest).to_tf(BATCH, shuffle=True))


def tf_data_tfrecords(dest: str) -> int:
    from shards.frameworks import import_tensorflow

    tf = import_tensorflow()
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
    }

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(record, spec)
        return tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), example["shape"]), example["label"]

    files = sorted(glob.glob(os.path.join(dest, "shard-*.tfrecord")))
    dataset = (
        tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )
    return sum(int(images.shape[0]) for images, _ in dataset)


def ray_data_numpy(dest: str) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    dataset = ray.data.read_numpy(sorted(glob.glob(os.path.join(dest, "shard-*.images.npy"))))
    return sum(len(batch["data"]) for batch in dataset.iter_batches(batch_size=BATCH, batch_format="numpy"))


def streamed(dest: str) -> int:
    """Through a Ray streaming generator (the path for trainers that cannot read DEST)."""
    import ray

    from shards.dataset import RemoteShardDataset

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    remote = RemoteShardDataset(dest, ray.get_runtime_context().get_node_id())
    return sum(len(images) for images, _ in remote.batches(BATCH, shuffle=True, seed=1))


READERS = {
    "copy": plain_copy,
    "batches": lambda dest: shards_batches(dest, False),
    "batches_shuffled": lambda dest: shards_batches(dest, True),
    "to_tf": shards_to_tf,
    "tfdata_tfrecord": tf_data_tfrecords,
    "raydata_numpy": ray_data_numpy,
    "streamed": streamed,
}


def memory(dest: str) -> dict:
    """Peak RssAnon while streaming one shuffled epoch with the default prefetch."""
    with PeakSampler({"reader": lambda: ["self"]}, interval=0.02) as peaks:
        images = shards_batches(dest, True)
    return {"images": images, "reader_peak_rss_anon": peaks.peaks["reader"]}


if __name__ == "__main__":
    name, dest = sys.argv[1], sys.argv[2]
    if name == "memory":
        result = memory(dest)
    else:
        seconds, images = _timed(int(sys.argv[3]) if len(sys.argv) > 3 else 2, lambda: READERS[name](dest))
        result = {"seconds": seconds, "images": images}
    print("RESULT " + json.dumps(result), flush=True)
