"""Ray Train's TorchTrainer on 2 CPU workers (gloo) trains a small model fed by to_torch: the
ranks come from torch.distributed, and together they train on every sample once an epoch."""

import json
import os

import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

pytestmark = [pytest.mark.torch, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torch_trainer_on_two_workers_sees_each_sample_once_an_epoch(ray_cluster, tmp_path):
    import importlib.util

    make_image_folder(str(tmp_path / "photos"), 96, classes=3, sizes=(40, 80), seed=2)
    dest = str(tmp_path / "out")
    shards.preprocess(str(tmp_path / "photos"), dest, PreprocessOptions(size=24, shard_size="20KiB"))
    spec = importlib.util.spec_from_file_location("train_torch", os.path.join(ROOT, "jobs", "train_torch.py"))
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    audit, report = tmp_path / "audit", tmp_path / "report.json"
    status = job.main(
        [dest, "--workers", "2", "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-3"]
        + ["--loader-workers", "1", "--audit-dir", str(audit), "--storage-path", str(tmp_path / "train")]
        + ["--report", str(report)]
    )
    assert status == 0
    result = json.load(open(report))
    assert result["world_size"] == 2 and [e["epoch"] for e in result["epochs"]] == [0, 1, 2]
    assert result["epochs"][-1]["loss"] < result["epochs"][0]["loss"], result["epochs"]
    assert result["epochs"][-1]["accuracy"] > 1 / 3, result["epochs"]  # 3 classes: above chance
    ranks = [json.load(open(audit / f"rank-{rank}.json")) for rank in (0, 1)]
    every = sorted(shards.open(dest).columns(["source"])["source"].tolist())
    for epoch in ("0", "1", "2"):
        first, second = (record["epochs"][epoch] for record in ranks)
        assert len(first) == len(second) == 48 and sorted(first + second) == every


def test_the_job_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_torch", os.path.join(ROOT, "jobs", "train_torch.py"))
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main([str(tmp_path / "nothing"), "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "train_torch.py: error: --epochs and --batch-size must be at least 1, got 0, 64"
    )
