"""The base install: preprocess, plan, inspect, preview, verify and the NumPy reader work with
TensorFlow, Keras, torch and JAX absent; what needs a missing extra says which, in one line."""

import json
import os
import subprocess
import sys

import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def hint(extra):
    """How a missing extra's message says to install it: from PyPI, or from a clone."""
    return f"pip install 'imageshards[{extra}]' (from a clone: pip install '.[{extra}]')"


pytestmark = pytest.mark.slow  # each case runs the CLI or Python in a process of its own


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    make_image_folder(str(root / "photos"), 24, classes=2, sizes=(30, 60), seed=4)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=16, shard_size="8KiB"), workers=0)
    return dest


def shards_command(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "shards.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def python(code, env, cwd=ROOT):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_preprocess_and_read_need_no_framework(absent, tmp_path):
    env = absent(*FRAMEWORKS)
    make_image_folder(str(tmp_path / "src"), 12, classes=2, sizes=(30, 60), seed=1)
    out = str(tmp_path / "out")
    for args in (
        ["preprocess", str(tmp_path / "src"), out, "--size", "16"],
        ["inspect", out],
        ["verify", out],
        ["preview", out, "-o", str(tmp_path / "grid.png")],
        ["plan", str(tmp_path / "src"), "--size", "16"],
    ):
        result = shards_command(args, env, tmp_path)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    reader = (
        "import json, sys, numpy as np, shards\n"
        f"ds = shards.open({out!r})\n"
        "train, validation = ds.split(0.25)\n"
        "held = ds.in_memory()\n"
        "images, labels = next(iter(held.batches(5, shuffle=True)))\n"
        "sources = ds.columns(['source'])['source']\n"
        "image, label = ds[3]\n"
        f"print(json.dumps([len(ds), len(train) + len(validation), len(images), len(set(sources)), "
        f"list(image.shape), [m for m in {FRAMEWORKS!r} if sys.modules.get(m) is not None]]))"
    )
    result = python(reader, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [12, 12, 5, 12, [16, 16, 3], []]


def test_training_without_tensorflow_names_the_extra(absent, small_run, tmp_path):
    result = shards_command(["train", small_run, "--epochs", "1"], absent("tensorflow"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"shards: error: training needs TensorFlow: {hint('tf')}"


def test_each_adapter_without_its_framework_names_the_extra(absent, small_run):
    code = (
        "import shards\n"
        f"ds = shards.open({small_run!r})\n"
        "for call in (lambda: ds.to_tf(4), lambda: ds.to_keras(4), lambda: ds.to_torch(4)):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    result = python(code, absent(*FRAMEWORKS))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"MissingExtraError to_tf() needs TensorFlow: {hint('tf')}",
        f"MissingExtraError to_keras() (KERAS_BACKEND tensorflow) needs TensorFlow: {hint('tf')}",
        f"MissingExtraError to_torch() needs PyTorch: {hint('torch')}",
    ]
    on_jax = python(code.replace("(lambda: ds.to_tf(4), ", "("), absent(*FRAMEWORKS, KERAS_BACKEND="jax"))
    assert on_jax.stdout.splitlines()[0] == (
        f"MissingExtraError to_keras() (KERAS_BACKEND jax) needs JAX: {hint('jax')}"
    )


def test_an_unknown_keras_backend_is_one_line(absent, small_run, tmp_path):
    env = absent(KERAS_BACKEND="theano")
    result = shards_command(["train", small_run], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "shards: error: KERAS_BACKEND 'theano' is not a Keras backend (one of jax, numpy, openvino, tensorflow, torch)"
    )
    code = f"import shards\ntry:\n    shards.open({small_run!r}).to_keras(4)\nexcept ValueError as exc:\n    print(exc)"
    assert python(code, env).stdout.startswith("KERAS_BACKEND 'theano' is not a Keras backend")


def test_several_workers_on_another_backend_than_tensorflow_are_refused(absent, small_run, tmp_path):
    result = shards_command(["train", small_run, "--workers", "2"], absent(KERAS_BACKEND="jax"), tmp_path)
    assert result.returncode == 2
    assert "--workers 2 trains on TensorFlow" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tfrecord_without_tensorflow_is_refused_before_any_work(absent, tmp_path):
    make_image_folder(str(tmp_path / "src"), 4, classes=2, sizes=(30, 40), seed=1)
    out = tmp_path / "out"
    result = shards_command(
        ["preprocess", str(tmp_path / "src"), str(out), "--format", "tfrecord"], absent("tensorflow"), tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"shards: error: --format tfrecord needs TensorFlow: {hint('tf')}"
    assert not out.exists()
