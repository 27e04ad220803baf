"""Training a Keras model on a shards dataset, in steps every backend shares.

A run is: choose the devices and precision, open DEST where it can be read, split it, find
where a checkpoint left off (`prepare`); build or load the model; fit the interrupted epoch's
rest, then whole epochs (`fit_epochs`); save the model and the audit, and report (`finish`).
`train_worker` feeds `fit` from `ShardsPyDataset`, which Keras takes on JAX, PyTorch and
TensorFlow alike; `shards.tf.training` runs the same steps with tf.data feeding and
MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from shards.errors import ConfigError
from shards.frameworks import import_keras, import_torch, keras_backend, require
from shards.io.fileio import temporary_path, write_bytes_atomically
from shards.io.location import location
from shards.keras.checkpoint import CHECKPOINT_MODEL, ProgressCheckpoint, read_checkpoint_state
from shards.keras.dataset import ShardsPyDataset
from shards.keras.model import load_or_build
from shards.keras.options import TrainOptions
from shards.layout.manifest import MANIFEST
from shards.read.dataset import RunReader
from shards.read.protocol import BatchSource, RandomAccessSource
from shards.read.spec import ReadSpec, ReadState

keras = import_keras("training")
logger = logging.getLogger(__name__)

#: audit[epoch] = the positions of each batch read, in the order read.
Audit = dict[int, list[np.ndarray]]


@dataclasses.dataclass
class TrainingRun:
    """What the steps of one rank's run share."""

    dest: str
    options: TrainOptions
    rank: int
    world_size: int
    dataset: BatchSource
    train_set: BatchSource
    validation_set: BatchSource | None
    spec: ReadSpec
    state: ReadState | None
    callback: ProgressCheckpoint
    audit: Audit = dataclasses.field(default_factory=dict)

    @property
    def first_epoch(self) -> int:
        return self.state.epoch if self.state else 0

    @property
    def start(self) -> int:
        """Where the first epoch begins: the checkpointed position, or 0."""
        return self.state.position_for(self.spec) if self.state else 0

    @property
    def checkpoint_model(self) -> str | None:
        """The checkpoint's model, when resuming from one."""
        if self.state and self.options.checkpoint_dir:
            return os.path.join(self.options.checkpoint_dir, CHECKPOINT_MODEL)
        return None

    def record(self, epoch: int, positions: np.ndarray) -> None:
        """`on_batch` of the feeds: note a batch read."""
        self.audit.setdefault(epoch, []).append(positions)


def open_for_training(dest: str, data_node: str | None, cache_limit: str | None = None) -> BatchSource:
    """DEST itself when this process can read it (object storage through a bounded local cache);
    otherwise a stream from the node that can."""
    place = location(dest)
    if place.local_root is None:  # object storage
        return RunReader(dest, cache_limit=cache_limit)
    if data_node is None or place.size(MANIFEST) is not None:
        return RunReader(dest)
    from shards.read.remote import RemoteRunReader

    logger.info("%s is not readable here: streaming it from node %s", dest, data_node)
    return RemoteRunReader(dest, data_node)


def set_precision(options: TrainOptions, gpus: list[str]) -> None:
    """The seed, and mixed precision when asked: float16 where Tensor Cores run it; bfloat16 on
    CPUs, whose float16 math is emulated."""
    if options.mixed_precision:
        policy = "mixed_float16" if gpus else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        logger.info("mixed precision: %s", policy)
    keras.utils.set_random_seed(options.seed)


def prepare(
    dest: str, options: TrainOptions, *, rank: int = 0, world_size: int = 1, data_node: str | None = None
) -> TrainingRun:
    """Open and split DEST for this rank, and find where its checkpoint left off.

    Raises:
        ConfigError: unlabelled data, `--in-memory` without local shards, or a checkpoint taken
            in another order.
    """
    dataset = open_for_training(dest, data_node, options.cache_limit)
    if not dataset.targets.labelled:
        raise ConfigError(f"{dest}: the dataset has no labels (no classes); nothing to train on")
    if options.in_memory and not isinstance(dataset, RandomAccessSource):
        raise ConfigError(f"{dest}: --in-memory needs DEST readable where the trainer runs (a shared path or s3://)")
    if options.in_memory == "host" and isinstance(dataset, RandomAccessSource):
        dataset = dataset.in_memory(options.memory_budget)  # loaded once; both parts share it
    train_set, validation_set = (
        dataset.split(options.validation_split, options.seed) if options.validation_split else (dataset, None)
    )
    spec = train_set.read_spec(options.batch_size, shuffle=True, seed=options.seed, rank=rank, world_size=world_size)
    state = read_checkpoint_state(options.checkpoint_dir) if options.resume else None
    start = state.position_for(spec) if state else 0  # refuses another order before any work
    callback = ProgressCheckpoint(
        dataset_size=len(train_set),
        spec=spec,
        first_epoch=state.epoch if state else 0,
        first_start=start,
        checkpoint_dir=options.checkpoint_dir,
        every=options.checkpoint_every,
        is_chief=rank == 0,
        stop_after_batches=options.stop_after_batches,
    )
    return TrainingRun(dest, options, rank, world_size, dataset, train_set, validation_set, spec, state, callback)


def already_done(run: TrainingRun) -> dict[str, Any] | None:
    """The report of a run whose checkpoint is already past the last epoch, else None."""
    if run.first_epoch >= run.options.epochs:
        return {"rank": run.rank, "epochs": [], "note": "checkpoint already at the last epoch"}
    return None


def fit_epochs(model: Any, run: TrainingRun, inputs_from: Callable[[int], Any], validation: Any) -> None:
    """`model.fit` over the epochs left: the interrupted epoch's rest first (its inputs start at
    the checkpointed position), then whole epochs from a feed that starts at 0."""
    fit = dict(callbacks=[run.callback], validation_data=validation, verbose=0, shuffle=False)
    next_epoch = run.first_epoch
    if run.start:
        model.fit(inputs_from(next_epoch), epochs=next_epoch + 1, initial_epoch=next_epoch, **fit)
        next_epoch += 1
    if next_epoch < run.options.epochs and not model.stop_training:
        model.fit(inputs_from(next_epoch), epochs=run.options.epochs, initial_epoch=next_epoch, **fit)


def finish(model: Any, run: TrainingRun) -> dict[str, Any]:
    """Save the model (rank 0, unless stopped early) and the audit; the rank's report."""
    options, callback = run.options, run.callback
    if run.rank == 0 and not model.stop_training:
        os.makedirs(os.path.dirname(os.path.abspath(options.output)), exist_ok=True)
        with temporary_path(options.output) as temp:  # a cut save leaves the old model whole
            model.save(temp + ".keras")  # Keras picks the format by the name's ending
            os.replace(temp + ".keras", temp)
    if options.audit_dir:
        _write_audit(options.audit_dir, run.rank, run.audit, callback)
    return {
        "rank": run.rank,
        "world_size": run.world_size,
        "samples": len(run.train_set),
        "validation_samples": len(run.validation_set) if run.validation_set is not None else 0,
        "epochs": callback.epoch_log,
        "batches": callback.total_batches,
        "stopped_early": bool(model.stop_training),
        "backend": keras_backend(),
    }


def train_worker(dest: str, options: TrainOptions, *, data_node: str | None = None) -> dict[str, Any]:
    """Train in this process on Keras' own backend (`KERAS_BACKEND`: jax, torch or tensorflow),
    fed by `ShardsPyDataset`; returns the report (per-epoch loss and throughput).

    Raises:
        ConfigError: as `prepare`, or a dataset this process cannot read itself, or
            `--in-memory device` (a TensorFlow feed).
    """
    if options.in_memory == "device":
        backend = keras_backend()
        raise ConfigError(f"--in-memory device gathers batches with TensorFlow; on KERAS_BACKEND {backend} use host")
    set_precision(options, check_devices())
    run = prepare(dest, options, data_node=data_node)
    done = already_done(run)
    if done is not None:
        return done
    train_set, validation_set = run.train_set, run.validation_set
    if not isinstance(train_set, RandomAccessSource):
        raise ConfigError(
            f"{dest}: KERAS_BACKEND {keras_backend()} trains on shards it reads itself: put DEST on a path "
            "the trainer's node shares, or in s3:// (streaming from another node feeds TensorFlow only)"
        )

    def inputs_from(epoch: int) -> ShardsPyDataset:
        start = run.start if epoch == run.first_epoch else 0
        return _py_dataset(train_set, run.spec, epoch=epoch, start=start, on_batch=run.record)

    validation = (
        _py_dataset(validation_set, validation_set.read_spec(options.batch_size))
        if isinstance(validation_set, RandomAccessSource)
        else None
    )
    model = load_or_build(run.dataset, options, run.checkpoint_model)
    fit_epochs(model, run, inputs_from, validation)
    return finish(model, run)


def _py_dataset(
    part: RandomAccessSource,
    spec: ReadSpec,
    *,
    epoch: int = 0,
    start: int = 0,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
) -> ShardsPyDataset:
    return ShardsPyDataset(
        part,
        spec.batch_size,
        shuffle=spec.shuffle,
        seed=spec.seed,
        rank=spec.rank,
        world_size=spec.world_size,
        drop_last=spec.drop_last,
        epoch=epoch,
        start=start,
        on_batch=on_batch,
    )


def check_devices() -> list[str]:
    """The GPUs Keras' backend sees, logged beside the ones Ray assigned.

    Raises:
        ConfigError: Ray assigned a GPU and the backend sees none (a CPU-only jaxlib or torch),
            rather than training on the CPU without a word.
    """
    import ray

    backend = keras_backend()
    assigned = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    gpus: list[str] = []
    if backend == "jax":
        jax = require("jax", "KERAS_BACKEND jax")
        gpus = [str(device) for device in jax.devices() if device.platform == "gpu"]
    elif backend == "torch":
        torch = import_torch("KERAS_BACKEND torch")
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    logger.info("Ray assigned GPU(s) [%s]; Keras on %s sees GPU(s) %s", ", ".join(assigned), backend, gpus)
    if assigned and not gpus:
        raise ConfigError(
            f"Ray gave this trainer GPU {', '.join(assigned)} but {backend} sees no GPU: install its CUDA build on "
            "GPU nodes, or train on the CPU on purpose with --gpus-per-worker 0"
        )
    return gpus


def _write_audit(folder: str, rank: int, audit: Audit, callback: ProgressCheckpoint) -> None:
    """Record the dataset positions this rank trained on, per epoch, and where it ran.

    Only the batches trained are kept: a pipeline reads a few ahead, and those were never used.
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
