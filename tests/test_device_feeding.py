"""Feeding the device: mixed precision and XLA must train on this GPU-less machine as they would
on a GPU, and every trainer says which devices it has."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    make_image_folder(str(root / "photos"), 96, classes=3, sizes=(30, 60), seed=5)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=16, shard_size="8KiB"), workers=0)
    return dest


@pytest.mark.slow  # trains in a process of its own
def test_mixed_precision_and_jit_train_on_the_cpu(colours, tmp_path):
    """The policy is process-wide, so the run is its own process: `shards train` as users run it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "shards.cli", "train", colours, "--epochs", "3", "--batch-size", "8"]
    command += ["--learning-rate", "3e-3", "--mixed-precision", "--jit", "--output", str(tmp_path / "m.keras"), "-v"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"epoch \d+: .*loss ([0-9.]+)", result.stdout)]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], result.stdout
    assert "mixed precision: mixed_bfloat16" in result.stderr
    assert re.search(r"Ray assigned GPU\(s\) \[\]; TensorFlow [0-9.]+ sees \[.*CPU:0", result.stderr)

    import keras

    model = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert model.get_layer("logits").dtype_policy.name == "float32"  # the head stays float32


def _batches(dataset, **spec):
    return [(images.copy(), labels.copy()) for images, labels in dataset.batches(8, shuffle=True, seed=4, **spec)]


def test_in_memory_gives_the_same_batches_in_the_same_order_for_every_rank_and_resume(colours):
    dataset = shards.open(colours)
    train, _ = dataset.split(0.25, seed=1)
    resident = train.in_memory()
    for spec in ({"epoch": 2, "rank": 1, "world_size": 2}, {"epoch": 0, "start": 24}, {"epoch": 1}):
        streamed, held = _batches(train, **spec), _batches(resident, **spec)
        assert len(streamed) == len(held) > 0
        for (a, b), (c, d) in zip(streamed, held):
            assert np.array_equal(a, c) and np.array_equal(b, d)
    for cache in ("host", "device"):
        streamed = train.to_tf(8, shuffle=True, seed=4, epoch=3, rank=0, world_size=2)
        cached = train.to_tf(8, shuffle=True, seed=4, epoch=3, rank=0, world_size=2, cache=cache)
        assert int(cached.cardinality()) == int(streamed.cardinality())
        for (a, b), (c, d) in zip(streamed, cached):
            assert np.array_equal(a.numpy(), c.numpy()) and np.array_equal(b.numpy(), d.numpy())


@pytest.mark.parametrize("cache", ["host", "device"])
def test_the_parts_of_a_split_share_one_load_of_the_run(colours, cache, monkeypatch):
    """Training and validation (and a resumed epoch) read one in-memory copy of the run: only the
    first view checks a budget and loads; the others gather from what it loaded."""
    from shards.read import in_memory

    loads = []
    monkeypatch.setattr(in_memory, "check_budget", lambda *args, **kwargs: loads.append(args[0]) or 0)
    train, validation = shards.open(colours).split(0.25, seed=1)
    train.to_tf(8, shuffle=True, cache=cache)
    train.to_tf(8, shuffle=True, epoch=1, cache=cache)
    checked = validation.to_tf(8, cache=cache)
    assert len(loads) == 1
    streamed = validation.to_tf(8)
    for (a, b), (c, d) in zip(streamed, checked):
        assert np.array_equal(a.numpy(), c.numpy()) and np.array_equal(b.numpy(), d.numpy())


def test_a_budget_too_small_is_refused_before_anything_is_loaded(colours):
    from shards.errors import ConfigError

    dataset = shards.open(colours)
    needed = len(dataset) * (16 * 16 * 3 + 4)
    with pytest.raises(ConfigError) as caught:
        dataset.in_memory(needed - 1)
    message = str(caught.value)
    assert f"needs {needed:,} bytes" in message and f"budget of {needed - 1:,} bytes" in message
    assert "\n" not in message and not dataset._readers  # no shard was opened
    with pytest.raises(ConfigError, match="device memory needs"):
        dataset.to_tf(8, cache="device", memory_budget="1KiB")
    assert len(dataset.in_memory(needed)) == len(dataset)


@pytest.mark.slow  # trains in a process of its own
def test_train_in_memory_trains_and_a_small_budget_fails_in_one_line(colours, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "jobs/train.py", colours, "--epochs", "2", "--batch-size", "8", "--in-memory"]
    command += ["host", "--validation-split", "0.25", "--output", str(tmp_path / "m.keras")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"epoch \d+: .*?loss ([0-9.]+)", result.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0], result.stdout
    refused = subprocess.run(
        [*command[:-1], str(tmp_path / "n.keras"), "--memory-budget", "1KiB"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-3000:]
    assert "over the budget of 1,024 bytes" in refused.stderr
    plan = subprocess.run(
        [sys.executable, "-m", "shards.cli", "plan", os.path.join(os.path.dirname(colours), "photos"), "--size", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    in_memory = re.search(r"in memory +[0-9.,]+ MB \(([0-9,]+ bytes)\)", plan.stdout)
    assert in_memory and f"needs {in_memory.group(1)} " in refused.stderr, (plan.stdout, refused.stderr)


def test_a_model_built_in_the_feeding_scope_gets_its_batches_on_the_device_and_trains(colours):
    """What a single trainer does on a GPU node, run here with the CPU as the device."""
    import warnings

    import keras
    import tensorflow as tf

    from shards.tf.devices import feeding_scope
    from shards.tf.training import build_model, compile_model

    keras.utils.set_random_seed(0)
    dataset = shards.open(colours)
    with feeding_scope(tf, "/CPU:0"):
        model = compile_model(build_model(dataset.shape, dataset.targets, "uint8"), 3e-3, dataset.targets)
    assert isinstance(model.distribute_strategy, tf.distribute.OneDeviceStrategy)
    fed = model.distribute_strategy.experimental_distribute_dataset(dataset.to_tf(8))
    images, _ = next(iter(fed))
    assert images.device.endswith("CPU:0") and images.dtype == tf.uint8  # cast and scaled by the model
    untrained = model.evaluate(dataset.to_tf(32), verbose=0)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Your input ran out of data"
        warnings.filterwarnings("ignore", "`shuffle=True` was passed")
        model.fit(dataset.to_tf(8, shuffle=True, seed=1), epochs=3, verbose=0)
    assert model.evaluate(dataset.to_tf(32), verbose=0)[0] < 0.5 * untrained


_STRATEGY_LOOP = """
import sys, keras, tensorflow as tf
import shards
from shards.tf.distributed_fit import fit_with_strategy
from shards.tf.training import build_model, compile_model

keras.mixed_precision.set_global_policy(sys.argv[2])
keras.utils.set_random_seed(0)
dataset = shards.open(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
with strategy.scope():
    model = build_model(dataset.shape, dataset.targets, "uint8")
    if sys.argv[4] == "sgd":  # not scale-invariant as Adam is: shows a step of the wrong size
        # 0.02: at 0.05 the loss spiked in some epoch for 3 of 4 shuffle seeds
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9), loss=loss)
    else:
        model = compile_model(model, 3e-3, dataset.targets)
print("optimizer", type(model.optimizer).__name__)

class Losses(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        print("loss", logs["loss"], flush=True)

def inputs(epoch):
    return strategy.experimental_distribute_dataset(dataset.to_tf(8, shuffle=True, epoch=epoch))

fit_with_strategy(model, strategy, inputs, epochs=4, initial_epoch=0, callback=Losses(), jit=sys.argv[3] == "jit")
"""


@pytest.mark.slow  # trains in a process of its own
@pytest.mark.parametrize(
    "policy, jit, optimizer", [("mixed_float16", "eager", "sgd"), ("float32", "jit", "adam"), ("float32", "jit", "sgd")]
)
def test_the_strategy_loop_scales_the_loss_under_float16_and_compiles_with_xla(colours, policy, jit, optimizer):
    """The loop Ray Train's workers run (MultiWorkerMirroredStrategy; one CPU replica here).
    Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which unscales what it
    is given: without scaling the loss first, SGD's steps were 32,768x too small and the loss
    did not move. `--jit` compiles each replica's step with XLA."""
    result = subprocess.run(
        [sys.executable, "-c", _STRATEGY_LOOP, colours, policy, jit, optimizer],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if policy == "mixed_float16":
        assert "optimizer LossScaleOptimizer" in result.stdout
    losses = [float(v) for v in re.findall(r"^loss ([0-9.e-]+)$", result.stdout, re.MULTILINE)]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], result.stdout
