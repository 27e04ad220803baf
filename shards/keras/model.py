"""The default model and its compilation, in Keras 3 alone: the same on every backend.

The pieces an ImageDataGenerator user expects, done on the device: scaling to [0, 1] and
augmentation are Keras layers inside the model, so the host only moves stored bytes.
"""

from __future__ import annotations

from typing import Any

from shards.frameworks import import_keras, keras_backend
from shards.keras.options import TrainOptions
from shards.targets import Target, Targets

keras = import_keras("training")
layers = keras.layers


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
    # TensorFlow compiles with XLA only when asked; JAX always traces the step ("auto"), and
    # PyTorch's torch.compile is what `jit` asks for there.
    jit_compile: Any = jit if jit or keras_backend() != "jax" else "auto"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics, jit_compile=jit_compile)
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
