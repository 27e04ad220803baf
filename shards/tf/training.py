"""Training a Keras model on TensorFlow: one process, or one rank of a multi-worker run.

The steps are `shards.keras.training`'s (prepare, fit the epochs left, finish); here the feed
is tf.data (`spec_to_tf`: batches reach the GPU ahead of the step, and `--in-memory device`
gathers them there), and several workers train under MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

from typing import Any

from shards.frameworks import import_tensorflow
from shards.keras.checkpoint import ProgressCheckpoint, read_checkpoint_state
from shards.keras.model import build_model, compile_model, load_or_build
from shards.keras.options import TrainOptions
from shards.keras.training import TrainingRun, already_done, finish, fit_epochs, prepare, set_precision
from shards.read.protocol import BatchSource
from shards.read.spec import ReadSpec
from shards.tf.adapters import spec_to_tf
from shards.tf.devices import check_devices, feeding_scope

tf = import_tensorflow(needed_for="training")

__all__ = [
    "ProgressCheckpoint",
    "TrainOptions",
    "build_model",
    "compile_model",
    "read_checkpoint_state",
    "train_worker",
]


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
    set_precision(options, gpus)
    run = prepare(dest, options, rank=rank, world_size=world_size, data_node=data_node)
    done = already_done(run)
    if done is not None:
        return done
    cache = "device" if options.in_memory == "device" else None

    def feed(part: BatchSource, part_spec: ReadSpec, **kwargs: Any) -> Any:
        kwargs.update(cache=cache, memory_budget=options.memory_budget)
        if strategy is None:
            return spec_to_tf(part, part_spec, **kwargs)
        return strategy.distribute_datasets_from_function(lambda context: spec_to_tf(part, part_spec, **kwargs))

    def train_inputs(epoch: int) -> Any:
        """Epoch `epoch` onwards; a resumed epoch starts at the checkpointed position."""
        start = run.start if epoch == run.first_epoch else 0
        return feed(run.train_set, run.spec, epoch=epoch, start=start, on_batch=run.record)

    validation_set = run.validation_set
    validation = (
        feed(validation_set, validation_set.read_spec(options.batch_size, rank=rank, world_size=world_size))
        if validation_set is not None
        else None
    )
    if strategy is None:
        with feeding_scope(tf, "/GPU:0" if gpus else None):  # batches reach the GPU ahead of the step
            model = load_or_build(run.dataset, options, run.checkpoint_model)
        fit_epochs(model, run, train_inputs, validation)
    else:
        model = _fit_distributed(run, strategy, train_inputs, validation)
    return finish(model, run)


def _fit_distributed(run: TrainingRun, strategy: Any, train_inputs: Any, validation: Any) -> Any:
    from shards.tf.distributed_fit import fit_with_strategy

    targets = run.dataset.targets
    with strategy.scope():
        model = load_or_build(run.dataset, run.options, run.checkpoint_model)
    fit_with_strategy(
        model,
        strategy,
        train_inputs,
        epochs=run.options.epochs,
        initial_epoch=run.first_epoch,
        callback=run.callback,
        validation=validation,
        single_class=not targets.multi and targets.items[0].kind == "class",
        jit=run.options.jit,
    )
    return model
