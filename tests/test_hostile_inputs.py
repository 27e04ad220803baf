"""Inputs that hang, flood or trip a naive reader: each becomes a reject with a reason (or one
error line), and nothing hangs."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import shards
from shards.errors import DecodeError
from shards.options import PreprocessOptions
from shards.sources import list_sources
from shards.sources.files import read_file
from shards.synthetic import make_image_folder, photo_like
from tests.conftest import wait_for_finished_shards

OPTIONS = PreprocessOptions(size=16)


def _rejects(dest: str) -> dict[str, str]:
    return {
        os.path.basename(r["source"]): r["reason"]
        for r in (json.loads(line) for line in open(os.path.join(dest, "rejects.jsonl")))
    }


def _jpeg(path, seed=0, size=(40, 50)):
    Image.fromarray(photo_like(np.random.default_rng(seed), *size, (90, 120, 200))).save(path, "JPEG")


@pytest.mark.timeout(120)
def test_fifo_devices_folders_and_huge_files_are_rejected_unread(ray_cluster, tmp_path):
    root = tmp_path / "src"
    src = root / "things"  # a class folder: folder.jpg below is walked as a subfolder, not opened
    src.mkdir(parents=True)
    for i in range(3):
        _jpeg(src / f"ok{i}.jpg", i)
    os.mkfifo(src / "pipe.jpg")  # opening it for reading would block for ever
    os.symlink("/dev/zero", src / "zero.jpg")  # reading it would never end
    os.symlink("/dev/urandom", src / "random.png")
    (src / "folder.jpg").mkdir()
    (src / "folder.jpg" / "inside.txt").write_text("x")
    with open(src / "huge.jpg", "wb") as handle:  # sparse: 3 GB that cost no disk
        handle.truncate(3 * 2**30)
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(root), dest, OPTIONS)
    assert summary.written == 3 and summary.rejected == 4  # folder.jpg is a folder: walked, not read
    reasons = _rejects(dest)
    assert reasons["pipe.jpg"] == "not a regular file (a FIFO)"
    assert reasons["zero.jpg"] == "not a regular file (a character device)"
    assert reasons["random.png"] == "not a regular file (a character device)"
    assert reasons["huge.jpg"] == "3,221,225,472 bytes, over the --max-input-bytes limit of 268,435,456"


def test_max_input_bytes_is_a_reject_and_an_option(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    size = os.path.getsize(tmp_path / "a.jpg")
    assert len(read_file(str(tmp_path / "a.jpg"), size)) == size
    with pytest.raises(DecodeError, match="over the --max-input-bytes limit"):
        read_file(str(tmp_path / "a.jpg"), size - 1)
    assert PreprocessOptions(max_input_bytes="1MiB").max_input_bytes == 2**20


@pytest.mark.timeout(60)
def test_symlink_loops_end_and_dest_inside_src_is_left_out(ray_cluster, tmp_path):
    src = tmp_path / "src"
    make_image_folder(str(src), 12, classes=2, sizes=(40, 60))
    os.symlink(src, src / "class_0" / "loop")  # a folder that contains itself
    os.symlink(src / "class_1", src / "class_1" / "again")
    listing = list_sources(str(src))
    assert len(listing) == 12 and listing.classes == ["class_0", "class_1"]
    dest = str(src / "out")  # DEST inside SRC, run twice
    shards.preprocess(str(src), dest, OPTIONS)
    summary = shards.preprocess(str(src), dest, OPTIONS, mode="overwrite")
    assert summary.inputs == 12 and shards.open(dest).classes == ["class_0", "class_1"]


def test_names_that_are_not_utf8_and_over_long_names_are_rejects(ray_cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _jpeg(src / "fine.jpg")
    odd = os.path.join(os.fsencode(src), b"caf\xe9.jpg")  # Latin-1, not UTF-8
    _jpeg(odd.decode("utf-8", "surrogateescape"), 1)
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(src), dest, OPTIONS)
    assert summary.written == 1 and summary.rejected == 1
    assert _rejects(dest) == {"caf\\xe9.jpg": "file name is not valid UTF-8"}
    with pytest.raises(DecodeError, match="file name too long"):
        read_file(str(src / ("x" * 300 + ".jpg")), 100)


@pytest.mark.slow  # starts an embedded Ray or a process of its own
@pytest.mark.timeout(240)
def test_sigterm_ends_a_run_in_one_line_and_leaves_no_ray_process(photos, tmp_path):
    """The embedded cluster's processes all end with the run; `--resume` then finishes it."""
    import psutil

    dest = str(tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "shards.cli", "preprocess", photos, dest, "--size", "64", "--shard-size", "24KiB"]
    driver = subprocess.Popen([*command, "--workers", "1"], stderr=subprocess.PIPE, text=True, env=env)
    assert wait_for_finished_shards(dest, 1, driver), "no shard finished"
    children = psutil.Process(driver.pid).children(recursive=True)
    assert children, "the run started no Ray process"
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("progress:")]
    assert lines == ["shards: terminated; rerun with --resume to continue"], stderr
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.name() for p in alive]
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=180, env=env)
    assert finished.returncode == 0, finished.stderr
    assert len(shards.open(dest)) == 90
