"""Several Ray nodes on this machine: training across them, each worker on its own slice."""

import json
import os
import re
import subprocess
import sys

import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_nodes():
    """A 2-node cluster (1 CPU each) in a helper process, shut down by closing its stdin."""
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_host", "2"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    info = json.loads(host.stdout.readline())
    yield host, info
    host.stdin.close()
    host.wait(timeout=120)


def test_train_job_with_two_workers_on_two_nodes_covers_the_set_once_per_epoch(ray_cluster, two_nodes, tmp_path):
    _, info = two_nodes
    make_image_folder(str(tmp_path / "photos"), 60, classes=3, sizes=(40, 80), seed=4)
    dest = str(tmp_path / "out")
    shards.preprocess(str(tmp_path / "photos"), dest, PreprocessOptions(size=16, shard_size="8KiB"))
    audit, report = tmp_path / "audit", tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "jobs/train.py",
            dest,
            "--workers",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--address",
            info["address"],
            "--audit-dir",
            str(audit),
            "--output",
            str(tmp_path / "model.keras"),
            "--storage-path",
            str(tmp_path / "ray_results"),
            "--report",
            str(report),
            "-v",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 2:" in result.stdout and os.path.exists(tmp_path / "model.keras")
    # -v shows the workers' own lines, their epochs numbered from 1 as the driver's
    worker_epochs = {int(n) for n in re.findall(r"RayTrainWorker.*epoch (\d+): ", result.stderr)}
    assert worker_epochs == {1, 2}, result.stderr[-3000:]
    records = [json.load(open(audit / name)) for name in sorted(os.listdir(audit))]
    assert len(records) == 2  # both workers trained and recorded their slices
    assert {r["node"] for r in records} == set(info["nodes"])  # one worker on each node
    for epoch in ("0", "1"):
        slices = [set(r["epochs"][epoch]) for r in records]
        assert not slices[0] & slices[1]
        assert slices[0] | slices[1] == set(range(60))
        assert all(len(r["epochs"][epoch]) == 30 for r in records)
    assert json.load(open(report))["world_size"] == 2
