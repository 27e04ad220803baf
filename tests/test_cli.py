"""The `shards` command as users run it: real processes, exit codes, one-line errors."""

import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import shards
from shards import cli
from shards.options import PreprocessOptions

SHARDS = [sys.executable, "-m", "shards.cli"]


def run(*args, env=None, timeout=180):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([*SHARDS, *args], capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture()
def held_run(ray_cluster, photos, tmp_path):
    dest = str(tmp_path / "held")
    shards.preprocess(photos, dest, PreprocessOptions(size=20, shard_size=20 * 20 * 3 * 30))
    return dest


@pytest.mark.parametrize(
    "args, words",
    [
        (["preprocess", "/no/such/folder", "OUT"], "no such file or folder"),
        (["preprocess", "PHOTOS", "OUT", "--dtype", "int3"], "--dtype must be one of"),
        (["preprocess", "PHOTOS", "OUT", "--size", "0"], "--size must be"),
        (["preprocess", "PHOTOS", "OUT", "--shard-size", "lots"], "--shard-size"),
        (["preprocess", "PHOTOS", "OUT", "--workers", "-1"], "--workers must be at least 0"),
        (["preprocess", "PHOTOS", "OUT", "--workers", "0", "--address", "auto"], "--workers 0 writes the shards"),
        (["preprocess", "PHOTOS", "HELD", "--size", "64", "--resume"], "holds a different dataset"),
        (["preprocess", "PHOTOS", "HELD", "--size", "20", "--shard-size", "36000"], "already holds this run"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line_before_any_ray_work(photos, held_run, tmp_path, args, words):
    args = [{"PHOTOS": photos, "OUT": str(tmp_path / "out"), "HELD": held_run}.get(a, a) for a in args]
    # RAY_ADDRESS points where nothing listens: any attempt at Ray work would fail differently.
    result = run(*args, env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shards: error:") and words in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


@pytest.mark.oldest
@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_preprocess_command_end_to_end_on_an_embedded_ray(photos, tmp_path):
    dest = str(tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [*SHARDS, "preprocess", photos, dest, "--size", "32x40", "--resize", "pad", "--shard-size", "64KiB"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "written   90 samples" in result.stdout
    assert "progress: 90/90 images" in result.stderr  # plain log lines when not on a terminal
    ds = shards.open(dest)
    assert len(ds) == 90 and ds.shape == (32, 40, 3)


@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_a_run_from_tar_archives_reports_rays_start_up_apart(photos, tmp_path):
    """Tar archives are indexed by Ray tasks, so Ray starts before the listing; the summary
    still gives Ray's share of the start-up (it read 0.0 s)."""
    archive = tmp_path / "data-000000.tar"
    with tarfile.open(archive, "w") as tar:
        for number, path in enumerate(sorted(glob.glob(os.path.join(photos, "*", "*.jpg")))[:12]):
            tar.add(path, f"{number:04d}.jpg")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [*SHARDS, "preprocess", str(archive), str(tmp_path / "out"), "--size", "16"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "written   12 samples" in result.stdout, result.stdout
    timing = re.search(r"start-up ([\d.]+) s, of which Ray ([\d.]+) s", result.stdout)
    assert timing, result.stdout
    startup, ray = map(float, timing.groups())
    assert 0.5 <= ray <= startup, result.stdout


def test_inspect_json_reports_the_run(held_run, capsys):
    assert cli.main(["inspect", held_run, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 90 and report["shape"] == [20, 20, 3] and report["shards"] == 3
    assert report["classes"] == {"class_0": 30, "class_1": 30, "class_2": 30}


def _flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "damage, words",
    [
        (
            lambda d: _flip_byte(f"{d}/shard-00001.images.npy", 4000),
            "shard-00001: shard-00001.images.npy checksum mismatch",
        ),
        (
            lambda d: os.truncate(f"{d}/shard-00002.images.npy", 1000),
            "shard-00002: shard-00002.images.npy is 1000 bytes",
        ),
        (lambda d: os.remove(f"{d}/shard-00000.labels.npy"), "shard-00000: shard-00000.labels.npy is missing"),
    ],
)
def test_verify_names_each_damaged_shard(held_run, capsys, damage, words):
    assert cli.main(["verify", held_run]) == 0
    damage(held_run)
    assert cli.main(["verify", held_run]) == 1
    captured = capsys.readouterr()
    assert words in captured.out and "1 problem(s) found" in captured.err


def test_verify_finds_an_edited_manifest(held_run, capsys):
    path = f"{held_run}/manifest.json"
    record = json.loads(open(path).read())
    record["shards"][1]["count"] += 1
    record["count"] += 1
    open(path, "w").write(json.dumps(record))
    assert cli.main(["verify", held_run]) == 1
    captured = capsys.readouterr()  # a count its files cannot hold is refused with the manifest
    assert "shard-00001" in captured.out + captured.err


def test_verify_catches_a_header_that_disagrees_with_the_manifest(held_run, capsys):
    # Rewrite a shard as a valid .npy of another dtype and record its new checksum: only the header check sees it.
    path = f"{held_run}/shard-00000.images.npy"
    np.save(path, np.load(path).astype(np.int16), allow_pickle=False)
    from shards.io.fileio import digest_file

    record = json.loads(open(f"{held_run}/manifest.json").read())
    digest = digest_file(path)
    record["shards"][0]["files"]["shard-00000.images.npy"] = {"bytes": digest.bytes, "checksum": digest.checksum}
    open(f"{held_run}/manifest.json", "w").write(json.dumps(record))
    assert cli.main(["verify", held_run]) == 1
    assert "holds int16" in capsys.readouterr().out


def _as_version_1(dest):
    """Rewrite a run's manifest the way shards 0.2.0 wrote it: bare sha256 hex under `sha256`,
    no `targets`."""
    path = f"{dest}/manifest.json"
    record = json.loads(open(path).read())
    record["version"] = 1
    del record["targets"]
    for shard in record["shards"]:
        combined = hashlib.sha256()
        for name in sorted(shard["files"]):
            hexdigest = hashlib.sha256(open(f"{dest}/{name}", "rb").read()).hexdigest()
            shard["files"][name] = {"bytes": shard["files"][name]["bytes"], "sha256": hexdigest}
            combined.update(f"{name}:{hexdigest}\n".encode())
        del shard["checksum"]
        shard["sha256"] = combined.hexdigest()
    open(path, "w").write(json.dumps(record))


def test_new_runs_name_their_checksum_algorithm_and_sha256_runs_still_open_and_verify(held_run, capsys):
    record = json.loads(open(f"{held_run}/manifest.json").read())
    assert record["version"] == 3
    entry = record["shards"][0]
    assert entry["checksum"].startswith("xxh3_128:") and "sha256" not in entry
    assert all(f["checksum"].startswith("xxh3_128:") for f in entry["files"].values())
    before = [labels for _, labels in shards.open(held_run).batches(32, shuffle=False)]

    _as_version_1(held_run)
    assert cli.main(["verify", held_run]) == 0
    reopened = shards.open(held_run, verify=True)
    assert [(t.name, t.kind) for t in reopened.targets.items] == [("label", "class")]
    after = [labels for _, labels in reopened.batches(32, shuffle=False)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)) and len(before) == len(after)
    _flip_byte(f"{held_run}/shard-00001.images.npy", 4000)
    assert cli.main(["verify", held_run]) == 1
    assert "shard-00001.images.npy checksum mismatch (sha256 differs)" in capsys.readouterr().out


def test_a_checksum_of_an_unknown_algorithm_is_one_manifest_error(held_run, capsys):
    path = f"{held_run}/manifest.json"
    record = json.loads(open(path).read())
    record["shards"][0]["files"]["shard-00000.images.npy"]["checksum"] = "md4:00ff"
    open(path, "w").write(json.dumps(record))
    with pytest.raises(shards.ManifestError, match="does not name a known algorithm"):
        shards.open(held_run)
    assert cli.main(["verify", held_run]) != 0
    assert "does not name a known algorithm" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [[*SHARDS, "train"], [sys.executable, "jobs/train.py"]])
def test_train_command_and_job_share_parsing_and_exit_codes(held_run, tmp_path, entry):
    """`shards train` and `jobs/train.py` are one command: a bad argument exits 2, a DEST with
    no run exits 1, each with one `shards: error:` line, before any Ray work."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:9")
    made = tmp_path / "good.keras"
    made.write_bytes(b"a model someone trained for days")
    for args, code, words in [
        ([held_run, "--epochs", "0"], 2, "--epochs and --batch-size must be at least 1"),
        ([held_run, "--augment", "sepia"], 2, "unknown: sepia"),
        ([held_run, "--workers", "0"], 2, "--workers must be at least 1"),
        ([str(tmp_path / "nothing")], 1, "nothing: no such folder"),
        ([held_run, "--output", str(made)], 2, f"--output {made} already exists; pass --overwrite to replace it"),
    ]:
        result = subprocess.run([*entry, *args], capture_output=True, text=True, timeout=120, env=env, cwd=root)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code, result.stderr
        assert len(lines) == 1 and lines[0].startswith("shards: error:") and words in lines[0], result.stderr


def test_predictions_and_previews_are_never_written_over_without_overwrite(held_run, tmp_path):
    out, sheet = tmp_path / "p.parquet", tmp_path / "sheet.png"
    out.write_bytes(b"yesterday's predictions")
    sheet.write_bytes(b"a preview")
    result = run("predict", held_run, "--model", "m.keras", "--out", str(out))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"shards: error: --out {out} already exists; pass --overwrite to replace it"
    )
    result = run("preview", held_run, "-o", str(sheet))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"shards: error: -o {sheet} already exists; pass --overwrite to replace it"
    )
    assert out.read_bytes() == b"yesterday's predictions" and sheet.read_bytes() == b"a preview"
    assert run("preview", held_run, "-o", str(sheet), "--overwrite").returncode == 0
    assert sheet.read_bytes().startswith(b"\x89PNG")
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


def test_predict_command_refuses_a_bad_batch_size_in_one_line(held_run, tmp_path):
    result = run("predict", held_run, "--model", "m.keras", "--out", str(tmp_path / "p.parquet"), "--batch-size", "x")
    assert result.returncode == 2 and result.stderr.strip() == (
        "shards: error: --batch-size must be a positive integer or 'auto', got 'x'"
    )


def test_every_command_has_an_example_and_every_option_says_what_it_does():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(cli.EXAMPLES)
    for name, command in commands.choices.items():
        assert f"shards {name} " in command.format_help().split("examples:")[1], name
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_verbosity_flags_work_before_or_after_the_command_and_quiet_silences_progress(photos, tmp_path):
    for flags in (["-q", "preprocess"], ["preprocess", "--quiet"]):
        dest = str(tmp_path / "-".join(flags))
        result = run(*flags, photos, dest, "--size", "16", env={"RAY_ADDRESS": ""})
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""  # errors only: no progress, no summary
        assert os.path.exists(os.path.join(dest, "manifest.json"))
    both = run("-v", "inspect", str(tmp_path), "-q")
    assert both.returncode == 2 and "exclude each other" in both.stderr


@pytest.mark.parametrize(
    "make_src, words",
    [
        (lambda tmp: str(tmp / "missing"), "no such file or folder"),
        (lambda tmp: (tmp / "list.csv").write_text("file,label\na.jpg,cat\n") and str(tmp / "list.csv"), "'path'"),
    ],
)
def test_a_bad_input_path_exits_2_before_any_ray_work(tmp_path, make_src, words):
    result = run("preprocess", make_src(tmp_path), str(tmp_path / "out"), env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_inspect_shows_the_settings_and_how_to_resume_a_run_cut_short(photos, tmp_path):
    dest = str(tmp_path / "out")
    assert (
        run(
            "preprocess",
            photos,
            dest,
            "--size",
            "20x16",
            "--resize",
            "pad",
            "--shard-size",
            "9KiB",
            env={"RAY_ADDRESS": ""},
        ).returncode
        == 0
    )
    shown = run("inspect", dest)
    for line in (f"source    {photos}", "size      20x16", "resize    pad", "format    npy", "dtype     uint8"):
        assert line in shown.stdout, shown.stdout
    os.remove(os.path.join(dest, "manifest.json"))  # as a run killed before its commit leaves it
    cut = run("inspect", dest)
    assert cut.returncode == 0 and "cut short" in cut.stdout
    command = cut.stdout.split("resume with: ")[1].strip()
    assert command == f"shards preprocess {photos} {dest} --size 20x16 --resize pad --shard-size 9216 --resume"
    resumed = run(*command.split()[1:], env={"RAY_ADDRESS": ""})
    assert resumed.returncode == 0 and "kept from before" in resumed.stdout, resumed.stderr


@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_training_refuses_unlabelled_samples_before_tensorflow_with_their_count(photos, tmp_path):
    paths = sorted(os.path.join(photos, "class_0", n) for n in os.listdir(os.path.join(photos, "class_0")))[:4]
    (tmp_path / "list.csv").write_text(
        "path,label\n" + "".join(f"{p},{'cat' if i else ''}\n" for i, p in enumerate(paths))
    )
    dest = str(tmp_path / "out")
    assert run("preprocess", str(tmp_path / "list.csv"), dest, "--size", "16", env={"RAY_ADDRESS": ""}).returncode == 0
    result = run("train", dest, env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert result.returncode == 2 and result.stderr.strip() == (
        f"shards: error: {dest}: 1 of 4 samples have no label (-1); training needs every sample labelled: give them "
        "labels in SRC and preprocess again (index.parquet lists them)"
    )
    verbose = run("train", dest, "-v", env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert "Traceback (most recent call last)" in verbose.stderr and verbose.stderr.strip().endswith(
        "index.parquet lists them)"
    )


@pytest.mark.slow  # starts an embedded Ray or a process of its own
def test_a_tensorflow_graph_error_reads_as_its_cause():
    import keras

    from shards.cluster import one_line

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), optimizer="sgd")
    with pytest.raises(Exception) as caught:
        model.fit(np.zeros((8, 4), np.float32), np.array([0, 1, 2, -1, 0, 1, 2, 0]), verbose=0, batch_size=8)
    assert str(caught.value).startswith("Graph execution error:")  # what users saw, and nothing more
    assert one_line(caught.value).startswith("InvalidArgumentError: Received a label value of -1 which is outside")


@pytest.mark.slow
def test_the_printed_resume_command_finishes_a_cut_run_with_every_option_changed(photos, tmp_path):
    """Every option at a non-default value: the command `shards inspect` prints for a cut run
    carries them all (it once dropped the column options and the input limit, and failed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(photos, "*", "*.*")))[:12]
    table = pa.table(
        {
            "picture": pa.array([open(f, "rb").read() for f in files], pa.binary()),
            "kind": [os.path.basename(os.path.dirname(f)) for f in files],
            "uid": [f"id-{i}" for i in range(len(files))],
        }
    )
    pq.write_table(table, tmp_path / "list.parquet")
    dest = str(tmp_path / "out")
    options = ["--size", "20x16", "--resize", "pad", "--dtype", "float16", "--format", "tfrecord"]
    options += ["--compression", "gzip", "--shard-size", "9KiB", "--seed", "3", "--max-rejects", "5"]
    options += ["--max-input-bytes", "1MiB", "--image-column", "picture", "--label-column", "kind", "--columns", "uid"]
    options += ["--fetch-timeout", "7.5", "--ignore-robots-headers", "--allow-private-urls"]
    source = str(tmp_path / "list.parquet")
    first = run("preprocess", source, dest, *options, env={"RAY_ADDRESS": ""})
    assert first.returncode == 0, first.stderr
    recorded = PreprocessOptions.from_json(json.load(open(os.path.join(dest, "manifest.json")))["config"])
    changed = [
        f for f in PreprocessOptions.__dataclass_fields__ if getattr(recorded, f) != getattr(PreprocessOptions(), f)
    ]
    # all but max_reject_fraction and url_column (which names what --image-column names here)
    assert len(changed) == len(PreprocessOptions.__dataclass_fields__) - 2
    os.remove(os.path.join(dest, "manifest.json"))  # as a run killed before its commit leaves it
    command = run("inspect", dest).stdout.split("resume with: ")[1].strip()
    for flag in (
        "--image-column picture",
        "--label-column kind",
        "--columns uid",
        "--max-input-bytes 1048576",
        "--fetch-timeout 7.5",
        "--ignore-robots-headers",
        "--allow-private-urls",
    ):
        assert flag in command, command
    resumed = run(*command.split()[1:], env={"RAY_ADDRESS": ""})
    assert resumed.returncode == 0 and "kept from before" in resumed.stdout, resumed.stderr
    assert run("verify", dest).returncode == 0
    assert len(shards.open(dest)) == 12 and shards.open(dest).columns(["uid"])["uid"].tolist()[0].startswith("id-")
    assert PreprocessOptions(max_reject_fraction=0.025).command_flags() == ["--max-rejects", "2.5%"]
    assert PreprocessOptions(url_column="link").command_flags() == ["--url-column", "link"]


def test_endpoint_url_applies_to_its_command_and_leaves_the_environment_as_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    missing = str(tmp_path / "missing")
    assert cli.main(["preprocess", missing, str(tmp_path / "out"), "--endpoint-url", "http://127.0.0.1:9"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert "AWS_ENDPOINT_URL" not in os.environ
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")
    assert cli.main(["preprocess", missing, str(tmp_path / "out"), "--endpoint-url", "http://127.0.0.1:9"]) == 2
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8"
