"""`--append`: MORE's samples join a finished run as new shards with the run's own options; the
run's shards stay byte for byte, the commit is atomic, a cut append finishes with --resume, and
what cannot join is refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import shards
from shards import cli
from shards.errors import ConfigError, DestinationError
from shards.synthetic import make_image_folder
from tests.conftest import wait_for_finished_shards

SIZE = 24
PER_SHARD = SIZE * SIZE * 3 * 10  # 10 samples a shard


def digests(folder: str) -> dict[str, str]:
    return {
        name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(folder))
        if name.startswith("shard-")
    }


@pytest.fixture
def run_and_more(ray_cluster, tmp_path):
    """A finished run of 3 classes (40 images), and MORE: 25 images of two of its classes."""
    first, more = tmp_path / "first", tmp_path / "more"
    make_image_folder(str(first), 40, classes=3, sizes=(32, 80), seed=1)
    make_image_folder(str(more), 25, classes=2, sizes=(32, 80), seed=2)
    dest = str(tmp_path / "out")
    shards.preprocess(str(first), dest, size=SIZE, shard_size=PER_SHARD, resize="stretch")
    return str(first), str(more), dest


def test_an_append_adds_new_shards_and_leaves_the_run_byte_for_byte(run_and_more):
    first, more, dest = run_and_more
    before, manifest = digests(dest), json.load(open(os.path.join(dest, "manifest.json")))
    opened_before = shards.open(dest)
    summary = shards.preprocess(more, dest, mode="append")  # no options: the run's own
    after = digests(dest)
    assert {name: after[name] for name in before} == before
    assert len(after) > len(before)
    union = shards.open(dest)
    assert len(union) == manifest["count"] + summary.written == 65
    assert union.shape == (SIZE, SIZE, 3) and union.classes == manifest["classes"]
    assert len(opened_before) == manifest["count"]  # the reader opened before sees the old run whole
    images, _ = opened_before.read(np.arange(len(opened_before)))
    assert images.shape[0] == manifest["count"]
    record = json.load(open(os.path.join(dest, "manifest.json")))
    assert record["appended"][0]["source"] == more and record["appended"][0]["count"] == 25
    assert record["inputs"] == 65 and sum(record["class_counts"]) == 65
    assert [s["name"] for s in record["shards"][: len(manifest["shards"])]] == [s["name"] for s in manifest["shards"]]
    sources = union.columns(["source"])["source"].tolist()
    assert sum(s.startswith(more) for s in sources) == 25 and sum(s.startswith(first) for s in sources) == 40
    for source, label in zip(sources, union.labels().tolist()):  # every sample keeps its class by name
        assert union.classes[label] == os.path.basename(os.path.dirname(source)), (source, label)
    assert cli.main(["verify", dest]) == 0
    for epoch in (0, 1):  # a shuffled epoch over the union sees every sample once
        seen = np.concatenate(
            [positions for _, _, positions in union.batches(16, shuffle=True, epoch=epoch, return_indices=True)]
        )
        assert sorted(seen.tolist()) == list(range(65))


@pytest.mark.parametrize(
    "problem, words",
    [
        ({"size": 32}, "--size (32, 32) differs from the run's (24, 24)"),
        ({"dtype": "float16"}, "--dtype 'float16' differs from the run's 'uint8'"),
        ({"format": "tfrecord"}, "--format 'tfrecord' differs"),
    ],
)
def test_an_append_with_other_options_is_refused_and_writes_nothing(run_and_more, problem, words):
    _, more, dest = run_and_more
    before = sorted(os.listdir(dest)), digests(dest), open(os.path.join(dest, "manifest.json"), "rb").read()
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        shards.preprocess(more, dest, mode="append", **problem)
    assert (sorted(os.listdir(dest)), digests(dest), open(os.path.join(dest, "manifest.json"), "rb").read()) == before


def test_new_classes_that_would_renumber_the_run_are_refused_and_later_ones_are_added(run_and_more, tmp_path):
    _, _, dest = run_and_more
    early = tmp_path / "early"
    make_image_folder(str(early), 4, classes=1, sizes=(32, 40), seed=3)
    os.rename(early / "class_0", early / "aardvark")
    manifest = open(os.path.join(dest, "manifest.json"), "rb").read()
    with pytest.raises(ConfigError, match=r"new class\(es\) 'aardvark' for 'label': they would renumber"):
        shards.preprocess(str(early), dest, mode="append")
    assert open(os.path.join(dest, "manifest.json"), "rb").read() == manifest
    late = tmp_path / "late"
    make_image_folder(str(late), 4, classes=1, sizes=(32, 40), seed=4)
    os.rename(late / "class_0", late / "zebra")
    shards.preprocess(str(late), dest, mode="append")
    union = shards.open(dest)
    assert union.classes == ["class_0", "class_1", "class_2", "zebra"] and len(union) == 44
    assert union.labels().tolist().count(3) == 4  # zebra's four, numbered after the run's classes


def test_an_append_to_a_dest_without_a_finished_run_is_refused(tmp_path, run_and_more):
    _, more, _ = run_and_more
    with pytest.raises(DestinationError, match="--append adds to a finished run, and DEST holds none"):
        shards.preprocess(more, str(tmp_path / "empty"), mode="append")


def test_a_killed_append_finishes_with_resume_and_keeps_what_it_wrote(run_and_more, tmp_path):
    _, _, dest = run_and_more
    more = str(tmp_path / "large")
    make_image_folder(more, 200, classes=2, sizes=(900, 1400), seed=5)  # shards that take a while
    base = json.load(open(os.path.join(dest, "manifest.json")))
    address = shards_cluster_address()
    command = [sys.executable, "-m", "shards.cli", "-q", "preprocess", more, dest, "--append"]
    driver = subprocess.Popen([*command, "--workers", "1", "--address", address], stdout=subprocess.DEVNULL)
    try:
        finished = wait_for_finished_shards(dest, len(base["shards"]) + 1, driver)
    finally:
        driver.kill()
        driver.wait(timeout=30)
    assert len(finished) > len(base["shards"])  # a new shard's receipt, beside the run's own
    record = json.load(open(os.path.join(dest, "manifest.json")))
    assert record["count"] == base["count"], "the append finished before it was killed"
    assert len(shards.open(dest)) == base["count"]  # nothing committed: the run reads as before
    other = str(tmp_path / "other")
    make_image_folder(other, 3, classes=1, sizes=(32, 40), seed=6)
    with pytest.raises(DestinationError, match="was cut short here; finish it first"):
        shards.preprocess(other, dest, mode="append")  # another append waits for this one
    summary = shards.preprocess(more, dest, mode="resume")
    assert summary.resumed_shards >= 1 and len(shards.open(dest)) == base["count"] + 200
    assert cli.main(["verify", dest]) == 0
    assert not os.path.exists(os.path.join(dest, ".parts", "append.json"))


def shards_cluster_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_the_command_appends_and_refuses_in_one_line(run_and_more, capsys):
    _, more, dest = run_and_more
    assert cli.main(["preprocess", more, dest, "--append", "--size", "32"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--append keeps the run's options; --size (32, 32)" in error
    assert cli.main(["-q", "preprocess", more, dest, "--append"]) == 0
    assert "written   25 samples" in capsys.readouterr().out
    assert len(shards.open(dest)) == 65
    assert cli.main(["inspect", dest]) == 0
    assert f"appended  25 samples in 3 shard(s) from {more}" in capsys.readouterr().out
