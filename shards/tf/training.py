"""Training a Keras model on a shards dataset: one process, or one rank of a multi-worker run.

The pieces an ImageDataGenerator user expects, done on the device: scaling to [0, 1] and
augmentation are Keras layers inside the model, so the host only moves stored bytes. Reader
state (epoch, position, seed) is checkpointed with the weights, so a restarted run continues the
interrupted epoch without repeating or skipping a sample, also with another number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np

from shards.errors import ConfigError
from shards.io import storage
from shards.io.fileio import temporary_path, write_bytes_atomically
from shards.layout.targets import Target, Targets
from shards.read.dataset import open_shards
from shards.read.sampling import position_after
from shards.read.spec import ReadSpec, ReadState
from shards.tf.adapters import spec_to_tf
from shards.tf.devices import check_devices, feeding_scope
from shards.tf.options import TrainOptions
from shards.tf.support import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402 - after TensorFlow is imported quietly
from keras import layers  # noqa: E402

logger = logging.getLogger(__name__)

CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_STATE = "state.json"


def build_model(shape: tuple[int, int, int], targets: Targets, dtype: str, augment: tuple[str, ...] = ()) -> Any:
    """A small CNN whose first layers scale (uint8 -> [0, 1]) and augment on the device, with
    one head per target: logits over the classes (class, multi-label) or linear values
    (regression). Several targets give a dict of outputs named as the targets, as Keras'
    multi-output models take them."""
    inputs = keras.Input(shape=shape, dtype=dtype, name="images")
    x = layers.Rescaling(1 / 255.0)(inputs) if dtype == "uint8" else layers.Identity()(inputs)
    x = augmentation(augment)(x) if augment else x
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        # GroupNormalization keeps no running statistics, so the model predicts as it trained.
        # With BatchNormalization, 3 demo epochs left the statistics unsettled: validation
        # accuracy 0.55-0.78 against 0.85-0.86 in training (3 seeds), predict 0.66-0.81 on the
        # training data itself; with GroupNormalization 0.81-0.88 against 0.85-0.88, predict 0.88.
        x = layers.GroupNormalization(groups=8)(x)
    x = layers.GlobalAveragePooling2D()(x)
    if not targets.multi:
        (target,) = targets.items
        return keras.Model(
            inputs, _head(target, "logits" if target.kind != "regression" else "values")(x), name="shards_cnn"
        )
    return keras.Model(inputs, {t.name: _head(t, t.name)(x) for t in targets.items}, name="shards_cnn")


def _head(target: Target, name: str) -> Any:
    """Logits for class and multi-label targets, values for regression (float32 under mixed
    precision, so the loss is computed at full precision)."""
    units = len(target.classes) if target.kind != "regression" else max(target.width, 1)
    if target.kind == "regression" and not target.width:  # [B] values: a scalar per sample
        dense = layers.Dense(1, dtype="float32", name=f"{name}_dense")
        return lambda x: layers.Reshape((), name=name, dtype="float32")(dense(x))
    return layers.Dense(units, dtype="float32", name=name)


def loss_and_metrics(target: Target) -> tuple[Any, list[Any]]:
    """The loss and metrics of a target's kind: sparse categorical cross-entropy (softmax) and
    accuracy; binary cross-entropy (sigmoid) and binary accuracy; mean squared error and mean
    absolute error. Class and multi-label heads give logits."""
    if target.kind == "class":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    if target.kind == "multilabel":
        return keras.losses.BinaryCrossentropy(from_logits=True), [keras.metrics.BinaryAccuracy(threshold=0.0)]
    return keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError()]


def augmentation(names: tuple[str, ...]) -> Any:
    """ImageDataGenerator's usual transforms as Keras preprocessing layers (active in training only)."""
    chosen = {
        "flip": lambda: layers.RandomFlip("horizontal"),
        "rotation": lambda: layers.RandomRotation(0.1),
        "shift": lambda: layers.RandomTranslation(0.1, 0.1),
        "zoom": lambda: layers.RandomZoom(0.1),
        "brightness": lambda: layers.RandomBrightness(0.2, value_range=(0.0, 1.0)),
    }
    return keras.Sequential([chosen[name]() for name in names], name="augmentation")


def compile_model(model: Any, learning_rate: float, targets: Targets | None = None, *, jit: bool = False) -> Any:
    """Adam, with each target's loss and metrics (default: one class target); `jit` compiles
    the training step with XLA."""
    targets = targets or Targets.single_class(["0"])
    chosen = {t.name: loss_and_metrics(t) for t in targets.items}
    if targets.multi:
        loss: Any = {name: pair[0] for name, pair in chosen.items()}
        metrics: Any = {name: pair[1] for name, pair in chosen.items()}
    else:
        loss, metrics = next(iter(chosen.values()))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics, jit_compile=jit)
    return model


def load_or_build(dataset: Any, options: TrainOptions, checkpoint: str | None) -> Any:
    """The model to train: a checkpoint's, the user's saved model, or the default CNN."""
    path = checkpoint or options.model_path
    if path:
        model = keras.models.load_model(path)
        # A compiled model keeps its own loss and optimizer (it may end in softmax, not logits).
        if model.optimizer is not None:
            return model
        return compile_model(model, options.learning_rate, dataset.targets, jit=options.jit)
    model = build_model(dataset.shape, dataset.targets, dataset.dtype.name, options.augment)
    return compile_model(model, options.learning_rate, dataset.targets, jit=options.jit)


def read_checkpoint_state(checkpoint_dir: str | None) -> ReadState | None:
    """The reader state saved with the last checkpoint, or None when there is none.

    Raises:
        ConfigError: the file is not a reader state this version can resume safely.
    """
    if not checkpoint_dir:
        return None
    path = os.path.join(checkpoint_dir, CHECKPOINT_STATE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return ReadState.from_json(json.load(handle))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise ConfigError(f"{path}: {exc}") from None


class ProgressCheckpoint(keras.callbacks.Callback):
    """Counts trained batches; saves weights + reader state every N batches and at epoch ends.

    The position is measured in the epoch's global order (samples consumed by all ranks), which
    is what makes a resume valid for any world size. Only the chief (rank 0) writes.
    """

    def __init__(
        self,
        *,
        dataset_size: int,
        spec: ReadSpec,
        first_epoch: int,
        first_start: int,
        checkpoint_dir: str | None,
        every: int,
        is_chief: bool,
        stop_after_batches: int | None,
    ) -> None:
        super().__init__()
        self.dataset_size, self.spec = dataset_size, spec
        self.first_epoch, self.first_start = first_epoch, first_start
        self.checkpoint_dir, self.every, self.is_chief = checkpoint_dir, every, is_chief
        self.stop_after_batches = stop_after_batches
        self.epoch = first_epoch
        self.batches_in_epoch = 0
        self.total_batches = 0
        self.epoch_log: list[dict[str, Any]] = []
        self._epoch_started = 0.0

    def position(self) -> int:
        start = self.first_start if self.epoch == self.first_epoch else 0
        return position_after(self.dataset_size, self.spec, self.batches_in_epoch, start=start)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.batches_in_epoch = epoch, 0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches_in_epoch += 1
        self.total_batches += 1
        if self.total_batches % self.every == 0:
            self.save(self.epoch, self.position())
        if self.stop_after_batches is not None and self.total_batches >= self.stop_after_batches:
            self.model.stop_training = True
            self.save(self.epoch, self.position())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.model.stop_training and self.position() < self.dataset_size:
            return  # interrupted mid-epoch: the state saved at the stop stands
        seconds = time.perf_counter() - self._epoch_started
        samples = self.batches_in_epoch * self.spec.batch_size
        record = {
            "epoch": epoch,
            "batches": self.batches_in_epoch,
            "seconds": round(seconds, 3),
            "images_per_second": round(samples / seconds, 1) if seconds else None,
        }
        record.update({k: float(v) for k, v in (logs or {}).items()})
        self.epoch_log.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)  # numbered from 1, as the driver prints them
        self.save(epoch + 1, 0)

    def save(self, epoch: int, position: int) -> None:
        if not (self.is_chief and self.checkpoint_dir):
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        with temporary_path(os.path.join(self.checkpoint_dir, CHECKPOINT_MODEL)) as temp:
            self.model.save(temp + ".keras")
            os.replace(temp + ".keras", temp)
        # The whole spec is saved, so a resume can check that it continues the same order.
        state = ReadState(self.spec, epoch, position, self.batches_in_epoch).to_json()
        write_bytes_atomically(os.path.join(self.checkpoint_dir, CHECKPOINT_STATE), json.dumps(state).encode())


def open_for_training(dest: str, data_node: str | None, cache_limit: str | None = None) -> Any:
    """DEST itself when this process can read it (object storage through a bounded local cache);
    otherwise a stream from the node that can."""
    if storage.is_remote(dest):
        return open_shards(dest, cache_limit=cache_limit)
    if data_node is None or os.path.exists(os.path.join(dest, "manifest.json")):
        return open_shards(dest)
    from shards.read.remote import RemoteShardDataset

    logger.info("%s is not readable here: streaming it from node %s", dest, data_node)
    return RemoteShardDataset(dest, data_node)


def train_worker(
    dest: str,
    options: TrainOptions,
    *,
    rank: int = 0,
    world_size: int = 1,
    strategy: Any = None,
    data_node: str | None = None,
) -> dict[str, Any]:
    """Train on this rank's slice of DEST; returns a report (per-epoch loss and throughput).

    With a `strategy` (MultiWorkerMirroredStrategy under Ray Train), the model is built in its
    scope and each worker's pipeline is handed over whole, through
    `distribute_datasets_from_function`, so nothing re-shards or re-batches it.
    """
    gpus = check_devices(tf)
    if options.mixed_precision:
        # float16 where Tensor Cores run it; bfloat16 on CPUs, whose float16 math is emulated.
        policy = "mixed_float16" if gpus else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        logger.info("mixed precision: %s", policy)
    keras.utils.set_random_seed(options.seed)
    dataset = open_for_training(dest, data_node, options.cache_limit)
    if not dataset.targets.labelled:
        raise ConfigError(f"{dest}: the dataset has no labels (no classes); nothing to train on")
    if options.in_memory and not hasattr(dataset, "in_memory"):
        raise ConfigError(f"{dest}: --in-memory needs DEST readable where the trainer runs (a shared path or s3://)")
    if options.in_memory == "host":  # loaded once; the training and validation parts share it
        dataset = dataset.in_memory(options.memory_budget)
    train_set, validation_set = (
        dataset.split(options.validation_split, options.seed) if options.validation_split else (dataset, None)
    )
    spec = train_set.read_spec(options.batch_size, shuffle=True, seed=options.seed, rank=rank, world_size=world_size)
    state = read_checkpoint_state(options.checkpoint_dir) if options.resume else None
    first_epoch, start = (state.epoch, state.position_for(spec)) if state else (0, 0)
    if first_epoch >= options.epochs:
        return {"rank": rank, "epochs": [], "note": "checkpoint already at the last epoch"}

    audit: dict[int, list[np.ndarray]] = {}

    def feed(part: Any, part_spec: ReadSpec, **kwargs: Any) -> Any:
        if strategy is None:
            return spec_to_tf(part, part_spec, **kwargs)
        return strategy.distribute_datasets_from_function(lambda context: spec_to_tf(part, part_spec, **kwargs))

    def train_inputs(epoch: int) -> Any:
        """Epoch `epoch` onwards; a resumed epoch starts at the checkpointed position."""
        return feed(
            train_set,
            spec,
            cache="device" if options.in_memory == "device" else None,
            memory_budget=options.memory_budget,
            epoch=epoch,
            start=start if epoch == first_epoch else 0,
            on_batch=lambda e, positions: audit.setdefault(e, []).append(positions),
        )

    validation = (
        feed(
            validation_set,
            validation_set.read_spec(options.batch_size, rank=rank, world_size=world_size),
            cache="device" if options.in_memory == "device" else None,  # the run the training part loaded
            memory_budget=options.memory_budget,
        )
        if validation_set
        else None
    )
    callback = ProgressCheckpoint(
        dataset_size=len(train_set),
        spec=spec,
        first_epoch=first_epoch,
        first_start=start,
        checkpoint_dir=options.checkpoint_dir,
        every=options.checkpoint_every,
        is_chief=rank == 0,
        stop_after_batches=options.stop_after_batches,
    )
    checkpoint_model = (
        os.path.join(options.checkpoint_dir, CHECKPOINT_MODEL) if state and options.checkpoint_dir else None
    )
    if strategy is None:
        with feeding_scope(tf, "/GPU:0" if gpus else None):  # batches reach the GPU ahead of the step
            model = load_or_build(dataset, options, checkpoint_model)
        fit = dict(callbacks=[callback], validation_data=validation, verbose=0, shuffle=False)
        next_epoch = first_epoch
        if start:  # finish the interrupted epoch, then go on with whole epochs
            model.fit(train_inputs(first_epoch), epochs=first_epoch + 1, initial_epoch=first_epoch, **fit)
            next_epoch += 1
        if next_epoch < options.epochs and not model.stop_training:
            model.fit(train_inputs(next_epoch), epochs=options.epochs, initial_epoch=next_epoch, **fit)
    else:
        from shards.tf.distributed_fit import fit_with_strategy

        with strategy.scope():
            model = load_or_build(dataset, options, checkpoint_model)
        fit_with_strategy(
            model,
            strategy,
            train_inputs,
            epochs=options.epochs,
            initial_epoch=first_epoch,
            callback=callback,
            validation=validation,
            single_class=not dataset.targets.multi and dataset.targets.items[0].kind == "class",
            jit=options.jit,
        )
    if rank == 0 and not model.stop_training:
        os.makedirs(os.path.dirname(os.path.abspath(options.output)), exist_ok=True)
        model.save(options.output)
    if options.audit_dir:
        _write_audit(options.audit_dir, rank, audit, callback)
    return {
        "rank": rank,
        "world_size": world_size,
        "samples": len(train_set),
        "validation_samples": len(validation_set) if validation_set else 0,
        "epochs": callback.epoch_log,
        "batches": callback.total_batches,
        "stopped_early": bool(model.stop_training),
    }


def _write_audit(folder: str, rank: int, audit: dict[int, list[np.ndarray]], callback: ProgressCheckpoint) -> None:
    """Record the dataset positions this rank trained on, per epoch, and where it ran.

    Only the batches trained are kept: the pipeline reads a few ahead, and those were never used.
    """
    os.makedirs(folder, exist_ok=True)
    trained = {entry["epoch"]: entry["batches"] for entry in callback.epoch_log}
    trained.setdefault(callback.epoch, callback.batches_in_epoch)
    epochs = {
        str(epoch): np.concatenate(batches[: trained.get(epoch, len(batches))]).tolist()
        for epoch, batches in audit.items()
        if batches[: trained.get(epoch, len(batches))]
    }
    record = {"rank": rank, "node": _ray_node(), "epochs": epochs}
    name = f"rank-{rank}-{uuid.uuid4().hex[:8]}.json"  # one file per run and rank, never overwritten
    write_bytes_atomically(os.path.join(folder, name), json.dumps(record).encode())


def _ray_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
