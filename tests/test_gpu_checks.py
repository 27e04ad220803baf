"""GPU nodes: a trainer that Ray gives a GPU which TensorFlow cannot see fails in one line
instead of training on the CPU, and `--gpus-per-worker 0` trains on the CPU on purpose.

This machine has no GPU: a head started with `ray start --head --num-gpus 2` hands out GPUs that
the CPU build of TensorFlow cannot see, which is exactly a GPU node with the wrong install.
"""

import os
import re
import subprocess
import sys

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder
from tests.test_cluster import ROOT, start_head, stop_processes_under

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes


@pytest.fixture(scope="module")
def gpu_head(tmp_path_factory):
    """A head with 2 GPUs TensorFlow cannot see, and a small labelled DEST."""
    root = tmp_path_factory.mktemp("gpu")
    make_image_folder(str(root / "photos"), 24, classes=2, sizes=(20, 40), seed=4)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=16))
    head, temp = start_head("--num-gpus=2")
    yield head, dest
    stop_processes_under(temp)


def _train(head: dict, dest: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in head["env"].items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "jobs/train.py", dest, "--address", head["gcs"], "--epochs", "1", "--batch-size", "8"]
    command += ["--output", str(tmp_path / "m.keras"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_gpu_tensorflow_cannot_see_fails_in_one_line_naming_the_fix(gpu_head, tmp_path, workers):
    head, dest = gpu_head
    result = _train(head, dest, tmp_path, "--workers", workers)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "TensorFlow sees no GPU: this TensorFlow is built without CUDA" in lines[0]
    assert "--gpus-per-worker 0" in lines[0] and "GPU nodes" in lines[0]
    assert not os.path.exists(tmp_path / "m.keras")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_gpus_per_worker_0_trains_on_the_cpu_on_purpose(gpu_head, tmp_path, workers):
    head, dest = gpu_head
    result = _train(head, dest, tmp_path, "--workers", workers, "--gpus-per-worker", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"epoch 1: .*loss [0-9.]+", result.stdout) and os.path.exists(tmp_path / "m.keras")


def test_the_gpu_node_type_installs_the_cuda_extra_in_one_step_over_a_base_without_tensorflow():
    with open(os.path.join(ROOT, "cluster.yaml")) as handle:
        config = yaml.safe_load(handle)
    gpu = config["available_node_types"]["gpu_train"]
    commands = " && ".join(gpu["worker_setup_commands"])
    # The base install (every node's setup_commands) holds no TensorFlow, so the extra is one step.
    assert 'shards[gpu]"' in commands and "uninstall" not in commands and "--force-reinstall" not in commands
    assert not any("[" in command for command in config["setup_commands"]), config["setup_commands"]
    for node_type in ("head", "cpu_preprocess"):
        assert "worker_setup_commands" not in config["available_node_types"][node_type]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    extras = project["optional-dependencies"]
    assert any(requirement.startswith("tensorflow[and-cuda]") for requirement in extras["gpu"])
    assert not any(r.split(";")[0].startswith(("tensorflow", "keras", "torch", "jax")) for r in project["dependencies"])
