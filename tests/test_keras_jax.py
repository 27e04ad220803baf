"""Keras 3 on JAX with TensorFlow absent: to_keras gives the batches, order, epochs and resume
positions of the TensorFlow feed, a model fits from it, and `shards train` trains, checkpoints
and resumes on KERAS_BACKEND=jax."""

import json
import os
import subprocess
import sys

import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

pytestmark = [pytest.mark.jax, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A learnable toy task: each class has its own colour cast."""
    root = tmp_path_factory.mktemp("jax-colours")
    make_image_folder(str(root / "photos"), 120, classes=3, sizes=(40, 90), seed=2)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=24, shard_size="20KiB"), workers=0)
    return dest


def on_jax(absent):
    return absent("tensorflow", KERAS_BACKEND="jax")


FEED = """
import json, sys
import numpy as np
import keras, shards
from shards.keras.model import build_model, compile_model

ds = shards.open(DEST)
out = {"backend": keras.backend.backend()}
kwargs = dict(shuffle=True, seed=3, epoch=1, rank=1, world_size=2)
feed = ds.to_keras(8, **kwargs)
want = list(ds.batches(8, **kwargs))
out["same"] = len(feed) == len(want) and all(
    np.array_equal(feed[i][0], want[i][0]) and np.array_equal(feed[i][1], want[i][1]) for i in range(len(feed))
)
rest = ds.to_keras(8, shuffle=True, seed=3, start=40)
want = list(ds.batches(8, shuffle=True, seed=3, start=40))
out["resumed"] = [len(rest), len(want), all(np.array_equal(rest[i][0], want[i][0]) for i in range(len(rest)))]
feed = ds.to_keras(8, shuffle=True, seed=3)
feed.on_epoch_begin()
feed[0]
feed.on_epoch_begin()  # a begin after a part of an epoch (Keras' build read) keeps the order
kept = np.array_equal(feed[1][0], list(ds.batches(8, shuffle=True, seed=3))[1][0])
for i in range(len(feed)):
    feed[i]
feed.on_epoch_begin()  # a begin after a whole epoch moves to the next epoch's order
out["next_epoch"] = kept and np.array_equal(
    feed[0][0], next(iter(ds.batches(8, shuffle=True, seed=3, epoch=1)))[0]
)
keras.utils.set_random_seed(0)
model = compile_model(build_model(ds.shape, ds.targets, "uint8"), 3e-3, ds.targets)
before = model.evaluate(ds.to_keras(16), verbose=0)[0]
history = model.fit(ds.to_keras(16, shuffle=True, seed=1), epochs=5, verbose=0)
out["loss"] = [before, history.history["loss"][-1]]
out["tensorflow"] = sys.modules.get("tensorflow") is not None
print(json.dumps(out))
"""


def test_to_keras_on_jax_feeds_the_same_batches_and_fits_without_tensorflow(absent, colours):
    result = subprocess.run(
        [sys.executable, "-c", FEED.replace("DEST", repr(colours))],
        capture_output=True,
        text=True,
        env=on_jax(absent),
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["backend"] == "jax" and not out["tensorflow"]
    assert out["same"] and out["next_epoch"]
    assert out["resumed"] == [10, 10, True]
    before, after = out["loss"]
    assert after < 0.6 * before, out["loss"]


def audit_positions(folder, epoch="0"):
    seen = []
    for name in sorted(os.listdir(folder)):
        seen += json.load(open(os.path.join(folder, name)))["epochs"].get(epoch, [])
    return seen


def test_shards_train_on_jax_checkpoints_resumes_and_trains_a_saved_model(absent, colours, tmp_path):
    env = on_jax(absent)
    checkpoint, audit, model = str(tmp_path / "ckpt"), str(tmp_path / "audit"), str(tmp_path / "m.keras")
    common = ["train", colours, "--epochs", "2", "--batch-size", "8", "--validation-split", "0.2"]
    common += ["--checkpoint-dir", checkpoint, "--audit-dir", audit, "--output", model, "--report"]

    def train(*extra, report="report.json"):
        command = [sys.executable, "-m", "shards.cli", *common, str(tmp_path / report), *extra]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout, json.load(open(tmp_path / report))

    stdout, report = train("--stop-after-batches", "5")
    assert "stopped after 5 batches; continue with --resume" in stdout
    assert report["backend"] == "jax" and report["batches"] == 5 and not os.path.exists(model)
    stdout, report = train("--resume", report="resumed.json")
    assert "model written to" in stdout and os.path.exists(model)
    assert [e["epoch"] for e in report["epochs"]] == [0, 1] and "val_loss" in report["epochs"][-1]
    assert sorted(audit_positions(audit, "0")) == list(range(96))  # the interrupted epoch: each sample once
    assert sorted(audit_positions(audit, "1")) == list(range(96))
    more = [sys.executable, "-m", "shards.cli", "train", colours, "--model", model, "--epochs", "1"]
    more += ["--output", str(tmp_path / "again.keras")]
    result = subprocess.run(more, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "again.keras")
