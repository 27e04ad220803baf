"""`--append`: MORE's samples join a finished run as new shards with the run's own options; the
run's shards stay byte for byte, the commit is atomic, a cut append finishes with --resume, and
what cannot join is refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import shards
from shards import cli
from shards.errors import ConfigError, DestinationError, ManifestError, RejectLimitError
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
    assert cli.main(["preprocess", more, dest, "--append", "--size", "224"]) == 2  # said, though the default
    assert "--size (224, 224) differs from the run's (24, 24)" in capsys.readouterr().err
    assert cli.main(["preprocess", more, dest, "--append"]) == 0
    assert "written   25 samples" in capsys.readouterr().out
    assert len(shards.open(dest)) == 65
    assert cli.main(["inspect", dest]) == 0
    assert f"appended  25 samples in 3 shard(s) from {more}" in capsys.readouterr().out


def run_files(folder: str) -> dict[str, bytes]:
    """Every file under DEST (its .parts included) and its bytes."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def test_an_append_cut_in_its_commit_then_resumed_commits_what_an_uncut_one_would(run_and_more, tmp_path):
    """The driver is killed between rejects.jsonl and the manifest (the commit's last step): the
    files then hold the union's rows beside the run's manifest. `--resume` takes the run's own
    rows only, so the union verifies and names every sample's source rightly."""
    _, more, dest = run_and_more
    add_bad_files_light(os.path.join(more, "class_0"))
    cut = (
        "import os, signal, sys; import shards.write.sink as sink; "
        "sink.write_manifest = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "from shards import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    command = ["-q", "preprocess", more, dest, "--append", "--address", shards_cluster_address()]
    killed = subprocess.run([sys.executable, "-c", cut, *command], stdout=subprocess.DEVNULL, timeout=300)
    assert killed.returncode == -9
    base = shards.open(dest)
    assert len(base) == 40 and len(base.labels()) == 40  # the base run, read as before
    summary = shards.preprocess(more, dest, mode="resume")
    assert summary.resumed_shards >= 1
    assert cli.main(["verify", dest]) == 0
    record = json.load(open(os.path.join(dest, "manifest.json")))
    assert record["count"] == 65 and record["rejected"] == 2
    assert len(open(os.path.join(dest, "rejects.jsonl")).read().splitlines()) == 2
    union = shards.open(dest)
    sources = union.columns(["source"])["source"].tolist()
    assert len(sources) == 65 and sum(s.startswith(more) for s in sources) == 25
    for source, label in zip(sources, union.labels().tolist()):
        assert union.classes[label] == os.path.basename(os.path.dirname(source)), (source, label)
    later = tmp_path / "later"
    make_image_folder(str(later), 5, classes=1, sizes=(32, 40), seed=7)
    shards.preprocess(str(later), dest, mode="append")
    assert cli.main(["verify", dest]) == 0
    assert sum(s.startswith(str(later)) for s in shards.open(dest).columns(["source"])["source"].tolist()) == 5


def add_bad_files_light(folder: str) -> None:
    """Two inputs that are rejected at once: an empty file and text named as an image."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    with open(os.path.join(folder, "notes.png"), "wb") as handle:
        handle.write(b"this is a text file with an image extension\n" * 20)


def test_an_append_whose_inputs_are_all_rejected_leaves_dest_as_it_was(run_and_more, tmp_path, caplog):
    _, more, dest = run_and_more
    allbad = str(tmp_path / "allbad")
    add_bad_files_light(os.path.join(allbad, "class_0"))
    before = run_files(dest)
    with (
        caplog.at_level(logging.INFO, logger="shards.write.run"),
        pytest.raises(
            RejectLimitError,
            match=r"all 2 inputs were rejected \(1 empty file, 1 not an image Pillow can read\); nothing was",
        ),
    ):
        shards.preprocess(allbad, dest, mode="append")
    assert f"rejected {os.path.join(allbad, 'class_0', 'empty.jpg')}: empty file" in caplog.text  # -v shows it
    after = run_files(dest)
    assert after.keys() == before.keys() and after == before  # no claim, shard or receipt left
    with pytest.raises(RejectLimitError, match="all 2 inputs were rejected"):
        shards.preprocess(allbad, dest, mode="append", max_rejects="100%")
    assert run_files(dest) == before
    with pytest.raises(RejectLimitError, match="over the --max-rejects limit of 0; nothing was appended and"):
        shards.preprocess(allbad, dest, mode="append", max_rejects=0)
    assert run_files(dest) == before
    shards.preprocess(more, dest, mode="append")  # DEST takes the next append
    assert len(shards.open(dest)) == 65 and cli.main(["verify", dest]) == 0


def test_a_reader_keeps_to_its_run_after_an_append_and_refuses_after_an_overwrite(run_and_more, tmp_path):
    _, more, dest = run_and_more
    opened = shards.open(dest)
    labels, sources = opened.labels().tolist(), opened.columns(["source"])["source"].tolist()
    shards.preprocess(more, dest, mode="append")
    fresh = shards.open(dest)  # a new reader of the same run: its columns are not yet read
    assert len(fresh) == 65
    assert opened.labels().tolist() == labels  # the run it opened: 40, not the union's 65
    reopened_before = copy_of_reader_without_cached_columns(opened)
    assert reopened_before.columns(["source"])["source"].tolist() == sources
    other = tmp_path / "other"
    make_image_folder(str(other), 30, classes=2, sizes=(32, 40), seed=8)
    shards.preprocess(str(other), dest, mode="overwrite", size=SIZE, resize="stretch")
    with pytest.raises(ManifestError, match="index.parquet belongs to another run than the one opened"):
        opened.labels()
    with pytest.raises(ManifestError, match="index.parquet belongs to another run than the one opened"):
        copy_of_reader_without_cached_columns(fresh).columns(["source"])


def copy_of_reader_without_cached_columns(reader):
    """The reader as it was opened, before it read any column (columns are read once, then kept)."""
    import copy

    view = copy.copy(reader)
    view._columns = {}
    return view


def test_an_append_onto_a_run_whose_index_disagrees_with_its_manifest_is_refused(run_and_more):
    import pyarrow.parquet as pq

    _, more, dest = run_and_more
    index = pq.read_table(os.path.join(dest, "index.parquet"))
    pq.write_table(index.slice(0, 39).replace_schema_metadata(None), os.path.join(dest, "index.parquet"))
    before = run_files(dest)
    with pytest.raises(ManifestError, match="index.parquet holds 39 rows and manifest.json counts 40; they disagree"):
        shards.preprocess(more, dest, mode="append")
    assert run_files(dest) == before


def test_inputs_appended_before_are_refused_unless_duplicates_are_allowed(run_and_more):
    first, more, dest = run_and_more
    with pytest.raises(DestinationError, match="the run was made from these inputs already"):
        shards.preprocess(first, dest, mode="append")
    shards.preprocess(more, dest, mode="append")
    with pytest.raises(DestinationError, match=f"{more!r} was appended with these inputs already"):
        shards.preprocess(more, dest, mode="append")
    with pytest.raises(DestinationError, match="the run was made from these inputs already"):
        shards.preprocess(first, dest, mode="append")  # the origin is remembered past appends
    assert len(shards.open(dest)) == 65
    shards.preprocess(more, dest, mode="append", allow_duplicates=True)
    assert len(shards.open(dest)) == 90 and cli.main(["verify", dest]) == 0
