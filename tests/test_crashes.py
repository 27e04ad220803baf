"""Crashes lose nothing: a killed worker is retried, a killed driver is resumed, byte for byte."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder
from tests.conftest import wait_for_finished_shards

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes

OPTIONS = PreprocessOptions(size=160, shard_size=160 * 160 * 3 * 12)  # 12 samples a shard
TASK_TITLE = "ray::write_shard_on_node"


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory):
    """Big enough JPEGs that a shard takes a noticeable fraction of a second to write."""
    root = str(tmp_path_factory.mktemp("large"))
    make_image_folder(root, 144, classes=3, sizes=(900, 1400), seed=3)
    return root


@pytest.fixture(scope="module")
def clean_run(ray_cluster, large_photos, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("clean") / "out")
    shards.preprocess(large_photos, dest, OPTIONS)
    return dest


def shard_files(dest):
    return {
        n: open(os.path.join(dest, n), "rb").read()
        for n in sorted(os.listdir(dest))
        if n.startswith("shard-") or n in ("index.parquet", "rejects.jsonl")
    }


def deterministic_manifest(dest):
    record = json.load(open(os.path.join(dest, "manifest.json")))
    record.pop("run")
    return record


def test_a_worker_killed_mid_shard_is_retried_and_the_output_equals_a_clean_run(clean_run, large_photos, tmp_path):
    dest = str(tmp_path / "out")
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault("summary", shards.preprocess(large_photos, dest, OPTIONS))
    )
    runner.start()
    killed = []
    deadline = time.monotonic() + 60
    while not killed and runner.is_alive() and time.monotonic() < deadline:
        for process in psutil.process_iter(["pid", "name"]):
            if process.info["name"] == TASK_TITLE:
                os.kill(process.info["pid"], signal.SIGKILL)
                killed.append(process.info["pid"])
                break
        time.sleep(0.005)
    runner.join(timeout=300)
    assert killed, "no shard task was caught running"
    assert outcome["summary"].written == 144
    assert shard_files(dest) == shard_files(clean_run)
    assert deterministic_manifest(dest) == deterministic_manifest(clean_run)
    assert not [n for n in os.listdir(dest) if n.startswith(".tmp-")]


def test_a_killed_driver_resumes_without_redoing_finished_shards(ray_cluster, clean_run, large_photos, tmp_path):
    dest = str(tmp_path / "out")
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shards.cli",
            "preprocess",
            large_photos,
            dest,
            "--size",
            "160",
            "--shard-size",
            str(OPTIONS.shard_size),
            "--address",
            address,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_finished_shards(dest, 3, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert not os.path.exists(os.path.join(dest, "manifest.json")), "the run finished before it was killed"
    finished = sorted(n[: -len(".json")] for n in os.listdir(os.path.join(dest, ".parts")) if n.startswith("shard-"))
    assert 3 <= len(finished) < 12
    mtimes = {n: os.stat(os.path.join(dest, f"{n}.images.npy")).st_mtime_ns for n in finished}

    time.sleep(0.05)  # a shard rewritten now would get a later mtime
    summary = shards.preprocess(large_photos, dest, OPTIONS, mode="resume")
    assert summary.resumed_shards >= len(finished) and summary.written == 144
    assert {n: os.stat(os.path.join(dest, f"{n}.images.npy")).st_mtime_ns for n in finished} == mtimes
    assert shard_files(dest) == shard_files(clean_run)
    assert deterministic_manifest(dest) == deterministic_manifest(clean_run)
