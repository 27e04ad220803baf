"""Feeding the device: mixed precision and XLA must train on this GPU-less machine as they would
on a GPU, and every trainer says which devices it has."""

import os
import re
import subprocess
import sys

import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def colours(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    make_image_folder(str(root / "photos"), 96, classes=3, sizes=(30, 60), seed=5)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=16, shard_size="8KiB"))
    return dest


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
