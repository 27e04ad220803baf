"""A training loop for MultiWorkerMirroredStrategy, because Keras 3's `fit` does not run under it.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy with the TensorFlow backend (see
keras-team/keras#20585 and ray-project/ray#47464; the TF tutorial's own example fails). The
loop below is the one TensorFlow documents for multi-worker training: each replica computes the
model's compiled loss inside `strategy.run`, scaled by the number of replicas, and the Keras
optimizer all-reduces (sums) the gradients. It drives the same Keras callback as `fit`
(epoch/batch hooks, `stop_training`), so checkpoints and resume behave identically with one
worker or many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shards.frameworks import import_tensorflow

tf = import_tensorflow(needed_for="training")


def fit_with_strategy(
    model: Any,
    strategy: Any,
    inputs_from: Callable[[int], Any],
    *,
    epochs: int,
    initial_epoch: int,
    callback: Any,
    validation: Any = None,
    single_class: bool = True,
    jit: bool = False,
) -> None:
    """Train `model` (built in `strategy.scope()`) on a distributed dataset, epoch by epoch.

    Args:
        inputs_from: gives the DistributedDataset for epoch N onwards; each new iteration of it is
            the next epoch (as `to_tf` gives). Called again after a partial (resumed) epoch.
        callback: a Keras callback; gets set_model, epoch and train-batch hooks and the logs.
        validation: an optional DistributedDataset evaluated after each epoch.
        single_class: the labels are one class target's indices, so accuracy is reported too.
        jit: compile each replica's forward and backward pass with XLA (`--jit`), as Keras'
            `jit_compile` does for `fit`; the optimizer's all-reduce and update stay outside it.
    """
    steps = ReplicaSteps(model, strategy, jit=jit)
    callback.set_model(model)
    model.stop_training = False
    inputs = None
    for epoch in range(initial_epoch, epochs):
        if inputs is None or epoch == initial_epoch + 1:
            inputs = inputs_from(epoch)
        callback.on_epoch_begin(epoch)
        logs = run_epoch(model, inputs, steps.train, callback.on_train_batch_end, single_class)
        if validation is not None and not model.stop_training:
            scores = run_epoch(model, validation, steps.evaluate, None, single_class)
            logs.update({f"val_{name}": value for name, value in scores.items()})
        callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break


class ReplicaSteps:
    """One training step and one evaluation step across the strategy's replicas, each returning
    the batch's summed loss, correct predictions and sample count, reduced over replicas."""

    def __init__(self, model: Any, strategy: Any, *, jit: bool = False) -> None:
        self.model, self.strategy = model, strategy
        self._gradients = tf.function(self._gradients_of, jit_compile=True) if jit else self._gradients_of
        self.train = self._reduced(self._train_replica)
        self.evaluate = self._reduced(self._eval_replica)

    def _scores(self, images: Any, labels: Any, training: bool) -> tuple[Any, Any, Any]:
        predictions = self.model(images, training=training)
        # The model's own compiled loss (mean over this replica's batch, regularisers included).
        loss = self.model.compute_loss(x=images, y=labels, y_pred=predictions, training=training)
        count = tf.cast(tf.shape(images)[0], tf.float32)
        if isinstance(labels, dict) or labels.dtype != tf.int32:  # no single class target: loss only
            return loss, tf.constant(0.0), count
        hits = tf.equal(tf.argmax(predictions, axis=-1, output_type=tf.int32), labels)
        return loss, tf.reduce_sum(tf.cast(hits, tf.float32)), count

    def _gradients_of(self, images: Any, labels: Any) -> tuple[Any, Any, Any, Any]:
        with tf.GradientTape() as tape:
            loss, correct, count = self._scores(images, labels, True)
            # The optimizer sums gradients over replicas. Under mixed_float16 Keras wraps it in a
            # LossScaleOptimizer, which divides the gradients it gets by the loss scale: the loss
            # is scaled up first, as Keras' own train_step does, so that float16 gradients do not
            # underflow and the step has its size (SGD's steps were 32,768x too small without).
            scaled = self.model.optimizer.scale_loss(loss / self.strategy.num_replicas_in_sync)
        return tape.gradient(scaled, self.model.trainable_variables), loss, correct, count

    def _train_replica(self, images: Any, labels: Any) -> tuple[Any, Any, Any]:
        gradients, loss, correct, count = self._gradients(images, labels)
        self.model.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss * count, correct, count

    def _eval_replica(self, images: Any, labels: Any) -> tuple[Any, Any, Any]:
        loss, correct, count = self._scores(images, labels, False)
        return loss * count, correct, count

    def _reduced(self, replica_fn: Callable) -> Callable:
        strategy = self.strategy

        @tf.function(reduce_retracing=True)
        def step(images: Any, labels: Any) -> list[Any]:
            totals = strategy.run(replica_fn, args=(images, labels))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in totals]

        return step


def run_epoch(
    model: Any, dataset: Any, step: Callable, on_batch: Callable[[int], None] | None, single_class: bool
) -> dict[str, float]:
    """One pass over `dataset` with `step`; the mean loss (and accuracy for one class target).
    `on_batch(batch)` may set `model.stop_training`, which ends the pass."""
    loss_sum = correct_sum = count = 0.0
    for batch, (images, labels) in enumerate(dataset):
        loss, correct, size = (float(v) for v in step(images, labels))
        loss_sum, correct_sum, count = loss_sum + loss, correct_sum + correct, count + size
        if on_batch is not None:
            on_batch(batch)
            if model.stop_training:
                break
    logs = {"loss": loss_sum / max(count, 1.0)}
    if single_class:
        logs["accuracy"] = correct_sum / max(count, 1.0)
    return logs
