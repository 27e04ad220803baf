"""Each measured pipeline, run as `python -m bench.peers NAME ...` in a process of its own.

Every run prints one JSON line: `seconds` is the whole process from the first line of this file
(imports and Ray start included), plus what else that pipeline can report.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from bench.corpus import jpeg_paths  # noqa: E402
from bench.procmem import PeakSampler, ray_worker_pids, status  # noqa: E402

SIZE = 224


def shards_preprocess(
    src: str, dest: str, workers: str, shard_size: str = "auto", fmt: str = "npy", memory: str = "off"
) -> dict:
    """shards' preprocess; with memory="on", RssAnon of the driver and the workers is sampled
    (off for throughput runs: the sampler's /proc scans cost CPU on a 2-core machine)."""
    import shards

    # The URL bench's servers are on loopback, which a URL list may not reach by default.
    options = shards.PreprocessOptions(size=SIZE, format=fmt, shard_size=shard_size, allow_private_urls=True)
    sampler = PeakSampler({"driver": lambda: ["self"], "workers": ray_worker_pids}) if memory == "on" else None
    with sampler or contextlib.nullcontext():
        summary = shards.preprocess(src, dest, options, mode="overwrite", workers=_workers(workers))
    result = {
        "images": summary.written,
        "ray_start": summary.ray_start_seconds,
        "startup": summary.startup_seconds,
        "shards": summary.shards,
        "steady_images_per_second": summary.steady_images_per_second,
        "after_ray_start_images_per_second": summary.images_per_second,
    }
    if sampler is not None:
        result.update(
            driver_peak_rss_anon=sampler.peaks["driver"],
            worker_peak_rss_anon=sampler.peaks["workers"],
            driver_peak_rss=status().get("VmHWM", 0),
        )
    return result


def shards_arrays(src: str, dest: str, workers: str, side: str = "256") -> dict:
    """shards' preprocess of in-memory arrays: the corpus decoded beforehand to side x side (as
    arrays handed to Keras' flow(x, y) are), so the run resizes and writes but decodes nothing."""
    from PIL import Image

    import shards

    files = jpeg_paths(src)
    edge = int(side)
    x = np.stack([np.asarray(Image.open(path).convert("RGB").resize((edge, edge))) for path in files])
    y = np.array([os.path.basename(os.path.dirname(path)) for path in files])
    summary = shards.preprocess(
        (x, y), dest, shards.PreprocessOptions(size=SIZE), mode="overwrite", workers=_workers(workers)
    )
    return {
        "images": summary.written,
        "shards": summary.shards,
        "steady_images_per_second": summary.steady_images_per_second,
        "array_bytes": int(x.nbytes),
    }


def _workers(workers: str) -> int | None:
    """`--workers` as given on the bench's command line: "default" leaves it to shards."""
    return None if workers == "default" else int(workers)


def _fresh(dest: str) -> str:
    """An empty output folder: a count must never include an earlier run's files."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    return dest


def ray_data(src: str, dest: str) -> dict:
    import ray

    _fresh(dest)
    begin = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR")
    ray_start = time.perf_counter() - begin
    dataset = ray.data.read_images(src, size=(SIZE, SIZE), mode="RGB")
    dataset.write_numpy(dest, column="image")
    count = sum(
        np.load(os.path.join(dest, name), mmap_mode="r").shape[0] for name in os.listdir(dest) if name.endswith(".npy")
    )
    return {"images": count, "ray_start": ray_start}


def tf_data(src: str, dest: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    def load(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = SIZE / tf.reduce_min(shape)
        image = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32), antialias=True)
        return tf.cast(tf.image.resize_with_crop_or_pad(image, SIZE, SIZE), tf.uint8)

    files = jpeg_paths(src)
    dataset = tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    _fresh(dest)
    count = 0
    with tf.io.TFRecordWriter(os.path.join(dest, "data.tfrecord")) as writer:  # tf.data's writer is serial
        for image in dataset.prefetch(tf.data.AUTOTUNE):
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.numpy().tobytes()]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            count += 1
    return {"images": count}


def decode_only(src: str, limit: str) -> dict:
    """The fastest available full JPEG decode (libjpeg-turbo, with the flags shards decodes
    with), no resize, one process."""
    import simplejpeg

    from shards.write.jpeg_turbo import DECODE_FLAGS

    datas = [open(path, "rb").read() for path in jpeg_paths(src)[: int(limit)]]
    begin = time.perf_counter()
    for data in datas:
        simplejpeg.decode_jpeg(data, colorspace="RGB", **DECODE_FLAGS)
    return {"images": len(datas), "per_core_images_per_second": len(datas) / (time.perf_counter() - begin)}


def _decode_all(paths: list[str]) -> int:
    import simplejpeg

    from shards.write.jpeg_turbo import DECODE_FLAGS

    datas = [open(path, "rb").read() for path in paths]
    for data in datas:
        simplejpeg.decode_jpeg(data, colorspace="RGB", **DECODE_FLAGS)
    return len(datas)


def decode_only_concurrent(src: str, limit: str) -> dict:
    """The same decode on every core at once: what the machine sustains when all cores are busy."""
    import multiprocessing

    paths = jpeg_paths(src)[: int(limit)]
    cores = os.cpu_count() or 1
    with multiprocessing.Pool(cores) as pool:
        pool.map(_decode_all, [paths[:cores]] * cores)  # start the workers and warm them up
        begin = time.perf_counter()
        images = sum(pool.map(_decode_all, [paths[i::cores] for i in range(cores)]))
        seconds = time.perf_counter() - begin
    return {"images": images, "images_per_second": images / seconds}


def _pool_worker(args: tuple) -> None:
    from PIL import Image, ImageOps

    path, row, out_path, _, draft = args
    out = np.load(out_path, mmap_mode="r+")
    image = Image.open(path)
    if draft:
        image.draft("RGB", (SIZE, SIZE))
    out[row] = np.asarray(ImageOps.fit(image.convert("RGB"), (SIZE, SIZE), Image.Resampling.BILINEAR))


def bare_pool(src: str, dest: str, draft: str) -> dict:
    """A bare multiprocessing.Pool loop of Pillow (draft +) bilinear resize into a .npy memmap."""
    import multiprocessing

    files = jpeg_paths(src)
    _fresh(dest)
    out_path = os.path.join(dest, "images.npy")
    np.lib.format.open_memmap(out_path, "w+", np.uint8, (len(files), SIZE, SIZE, 3)).flush()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(
            _pool_worker,
            [(path, i, out_path, len(files), draft == "draft") for i, path in enumerate(files)],
            chunksize=16,
        )
    return {"images": len(files)}


#: The pipelines that write their output to the folder given as their second argument.
WRITERS = frozenset({"shards", "shards_arrays", "raydata", "tfdata", "pool"})

PEERS = {
    "shards": shards_preprocess,
    "shards_arrays": shards_arrays,
    "raydata": ray_data,
    "tfdata": tf_data,
    "decode_only": decode_only,
    "decode_only_concurrent": decode_only_concurrent,
    "pool": bare_pool,
}

if __name__ == "__main__":
    result = PEERS[sys.argv[1]](*sys.argv[2:])
    result["seconds"] = time.perf_counter() - STARTED
    print("RESULT " + json.dumps(result), flush=True)
