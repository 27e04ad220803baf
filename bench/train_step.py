"""Images per second into a real Keras training step, one feeder per process:
`python -m bench.train_step FEEDER DEST TFRECORD_DEST MODEL BATCH STEPS` (and `prepare SRC DEST
TFRECORD_DEST SIZE`, which writes the same images as npy and TFRecord shards).

Feeders: `limit` (the step alone on one batch made on the device: the model's own limit),
`to_tf` (shards streaming), `in_memory` (shards `to_tf(cache="device")`), `streamed` (the Ray
streaming generator), `tfdata` (tf.data on the TFRecords of the same data:
`map(parse).batch().prefetch()`), `raydata` (Ray Data `iter_tf_batches` over `read_numpy`).
Each is timed over STEPS steps after a warm-up of a few steps (model build, XLA, page cache).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

WARM_STEPS = 3


def device_name(tf: Any) -> str:
    """The device the step runs on, in words: the GPU's name, else the CPU's model."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)} (x{len(gpus)})"
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "CPU"
    )
    return f"CPU: {model} ({os.cpu_count()} cores)"


def build(tf: Any, model_name: str, shape: tuple[int, ...], classes: int) -> tuple[Any, str]:
    """ResNet-50 from keras.applications (weights=None), or the default shards CNN, taking uint8
    and scaling on the device; mixed precision on a GPU. Returns the model and its name."""
    import keras

    from shards.targets import Targets
    from shards.tf.training import build_model, compile_model

    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    if model_name == "auto":  # ResNet-50 where a GPU runs it; the small CNN on a CPU
        model_name = "resnet50" if tf.config.list_physical_devices("GPU") else "small"
    if model_name == "small":
        model = build_model(shape, Targets.single_class([str(i) for i in range(classes)]), "uint8")
    else:
        inputs = keras.Input(shape=shape, dtype="uint8")
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.applications.ResNet50(weights=None, input_shape=shape, include_top=False, pooling="avg")(x)
        outputs = keras.layers.Dense(classes, dtype="float32")(x)
        model = keras.Model(inputs, outputs)
    return compile_model(model, 1e-3), model_name


def tfrecord_pipeline(tf: Any, dest: str, batch: int) -> Any:
    from shards.formats.tfrecord import feature_spec

    spec = feature_spec()

    def parse(record: Any) -> tuple[Any, Any]:
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), example["shape"])
        return image, tf.cast(example["label"], tf.int32)

    files = sorted(glob.glob(os.path.join(dest, "shard-*.tfrecord")))
    return (
        tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def ray_data_batches(dest: str, batch: int) -> Iterator[tuple[Any, Any]]:
    """Ray Data's `iter_tf_batches` over `read_numpy` of the image shards, epoch after epoch
    (labels: zeros of the batch, as `read_numpy` reads one array per file)."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    dataset = ray.data.read_numpy(sorted(glob.glob(os.path.join(dest, "shard-*.images.npy"))))
    while True:
        for tensors in dataset.iter_tf_batches(batch_size=batch, drop_last=True):
            images = tensors["data"]
            yield images, np.zeros(int(images.shape[0]), np.int32)


def feed(tf: Any, feeder: str, dest: str, tfrecords: str, batch: int) -> Any:
    """What `model.fit` is given: an endless tf.data pipeline, or a generator for Ray Data."""
    import shards

    if feeder == "to_tf":
        return shards.open(dest).to_tf(batch, shuffle=True, drop_last=True).repeat()
    if feeder == "in_memory":
        return shards.open(dest).to_tf(batch, shuffle=True, drop_last=True, cache="device").repeat()
    if feeder == "streamed":
        import ray

        from shards.dataset import RemoteShardDataset

        if not ray.is_initialized():
            ray.init(include_dashboard=False, logging_level="ERROR")
        remote = RemoteShardDataset(dest, ray.get_runtime_context().get_node_id())
        return remote.to_tf(batch, shuffle=True, drop_last=True).repeat()
    if feeder == "tfdata":
        return tfrecord_pipeline(tf, tfrecords, batch).repeat()
    return ray_data_batches(dest, batch)


def prepare(src: str, dest: str, tfrecords: str, size: str) -> dict:
    """The same images as npy and TFRecord shards, at `size`."""
    import shards

    for where, shard_format in ((dest, "npy"), (tfrecords, "tfrecord")):
        options = shards.PreprocessOptions(size=int(size), format=shard_format)
        summary = shards.preprocess(src, where, options, mode="overwrite")
    return {"images": summary.written}


def measure(feeder: str, dest: str, tfrecords: str, model_name: str, batch: int, steps: int) -> dict:
    """Images per second through `steps` training steps, after WARM_STEPS of warm-up."""
    from shards.frameworks import import_tensorflow
    from shards.tf.devices import feeding_scope

    tf = import_tensorflow(quiet=True)
    import shards

    dataset = shards.open(dest)
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with feeding_scope(tf, device):  # as `shards train` builds it: batches reach the device ahead
        model, model_name = build(tf, model_name, dataset.shape, max(len(dataset.classes), 2))
    if feeder == "limit":  # the step alone, on a batch that lives on the device
        with tf.device(device):
            images = tf.cast(tf.random.uniform((batch, *dataset.shape), 0, 256, tf.int32), tf.uint8)
            labels = tf.zeros((batch,), tf.int32)
        for _ in range(WARM_STEPS):
            model.train_on_batch(images, labels)
        begin = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(images, labels)
        float(np.asarray(loss).ravel()[0])  # the last step has finished on the device
    else:
        source = feed(tf, feeder, dest, tfrecords, batch)
        model.fit(source, steps_per_epoch=WARM_STEPS, epochs=1, verbose=0)
        begin = time.perf_counter()
        model.fit(source, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - begin
    return {"images": steps * batch, "seconds": seconds, "device": device_name(tf), "model": model_name}


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        result = prepare(*sys.argv[2:6])
    else:
        feeder, dest, tfrecords, model_name, batch, steps = sys.argv[1:7]
        result = measure(feeder, dest, tfrecords, model_name, int(batch), int(steps))
    print("RESULT " + json.dumps(result), flush=True)
