"""Lose nothing, round 2: DEST ownership and locking, readers that never mix runs, failures that
stay failures. Every case runs the real `shards` command or a real second process."""

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shards
from shards.errors import DestinationError, ManifestError
from shards.io.dest_lock import LOCK_NAME, hold_dest
from shards.synthetic import make_image_folder
from tests.conftest import add_bad_files, wait_for_finished_shards

SHARDS = [sys.executable, "-m", "shards.cli"]
SMALL = ["--size", "16", "--shard-size", str(16 * 16 * 3 * 10)]  # 10 samples a shard


def run(*args, timeout=300, env=None):
    return subprocess.run(
        [*SHARDS, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env and {**os.environ, **env}
    )


def error_lines(result):
    """stderr without the progress lines the CLI logs when stderr is not a terminal."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("progress:")]


def one_line_error(result, *words):
    lines = error_lines(result)
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("shards: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def run_files(dest):
    """Every file of DEST but the receipts folder, with its bytes."""
    return {
        name: open(os.path.join(dest, name), "rb").read()
        for name in sorted(os.listdir(dest))
        if os.path.isfile(os.path.join(dest, name))
    }


def assert_one_whole_run(dest):
    record = json.load(open(os.path.join(dest, "manifest.json")))
    named = {file_name for shard in record["shards"] for file_name in shard["files"]}
    present = {name for name in os.listdir(dest) if name.startswith("shard-")}
    assert present == named
    result = run("verify", dest)
    assert result.returncode == 0 and result.stdout.startswith("ok:"), result.stdout + result.stderr


@pytest.fixture(scope="module")
def address(ray_cluster):
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def slow_photos(tmp_path_factory):
    """Large JPEGs, so that a run lasts long enough for a second one to meet it."""
    root = str(tmp_path_factory.mktemp("slow"))
    make_image_folder(root, 160, classes=2, sizes=(900, 1400), seed=5)
    return root


@pytest.fixture()
def flawed(tmp_path):
    """40 good images in 2 classes and 4 broken files."""
    root = str(tmp_path / "flawed")
    make_image_folder(root, 40, classes=2, sizes=(40, 80), seed=2)
    add_bad_files(os.path.join(root, "class_0"))
    return root


def test_a_run_over_its_reject_limit_stays_failed_on_resume_until_the_limit_allows_it(flawed, tmp_path, address):
    dest = tmp_path / "out"
    first = run("preprocess", flawed, dest, *SMALL, "--max-rejects", "1", "--address", address)
    one_line_error(
        first, "inputs rejected, over the --max-rejects limit of 1", "rerun with --resume and a higher --max-rejects"
    )
    again = run("preprocess", flawed, dest, *SMALL, "--max-rejects", "1", "--resume", "--address", address)
    one_line_error(again, "over the --max-rejects limit of 1")
    assert json.load(open(dest / "manifest.json"))["complete"] is False
    with pytest.raises(ManifestError, match=r"failed \(\d of 44 inputs rejected"):
        shards.open(str(dest))

    accepted = run("preprocess", flawed, dest, *SMALL, "--max-rejects", "4", "--resume", "--address", address)
    assert accepted.returncode == 0, accepted.stderr
    assert "kept from before" in accepted.stdout
    manifest = json.load(open(dest / "manifest.json"))
    assert manifest["complete"] is True and manifest["rejected"] == 4 and manifest["count"] == 40
    assert manifest["config"]["max_rejects"] == 4


def test_a_second_writer_is_refused_while_the_first_holds_dest(slow_photos, tmp_path, address):
    dest = str(tmp_path / "out")
    first = subprocess.Popen(
        [*SHARDS, "preprocess", slow_photos, dest, "--size", "64", "--shard-size", "160KiB", "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_finished_shards(dest, 1, first), "the first run finished no shard"
        # Paused mid-run, the first run certainly holds DEST (it has shards left to write).
        first.send_signal(signal.SIGSTOP)
        assert not os.path.exists(os.path.join(dest, "manifest.json"))
        second = run("preprocess", slow_photos, dest, "--size", "32", "--overwrite", "--address", address)
        first.send_signal(signal.SIGCONT)
        one_line_error(second, "DEST is in use by another shards run", f"pid {first.pid} on")
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert first.returncode == 0, err
    assert json.load(open(os.path.join(dest, "manifest.json")))["shape"] == [64, 64, 3]
    assert_one_whole_run(dest)
    assert not os.path.exists(os.path.join(dest, LOCK_NAME))


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    dest = str(tmp_path / "out")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from shards.io.dest_lock import hold_dest
        with hold_dest({dest!r}):
            print("held", flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DestinationError, match=f"in use by another shards run .pid {holder.pid} on"):
            with hold_dest(dest):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with hold_dest(dest):  # the kernel released the dead holder's lock
        assert os.path.exists(os.path.join(dest, LOCK_NAME))
    assert not os.path.exists(os.path.join(dest, LOCK_NAME))


@pytest.mark.parametrize(
    "files",
    [
        {"index.parquet": b"PAR1 the user's own table", "rejects.jsonl": b'{"mine": true}\n'},
        {"manifest.json": b'{"name": "my photo manifest", "count": 3}'},
        {"manifest.json": b"not json at all"},
        {".parts": None, "shard-00000.images.npy": b"the user's own array"},
    ],
)
@pytest.mark.parametrize("mode", [[], ["--overwrite"], ["--resume"]])
def test_files_shards_did_not_write_are_refused_and_left_as_they_are(photos, tmp_path, files, mode):
    dest = tmp_path / "mine"
    dest.mkdir()
    for name, data in files.items():
        if data is None:
            (dest / name).mkdir()
        else:
            (dest / name).write_bytes(data)
    before = run_files(dest)
    result = run("preprocess", photos, dest, *SMALL, *mode)
    one_line_error(result, str(dest))
    assert run_files(dest) == before and sorted(os.listdir(dest)) == sorted(files)


def test_overwrite_refuses_a_run_beside_the_users_files_and_keeps_both(photos, tmp_path, address):
    dest = tmp_path / "out"
    assert run("preprocess", photos, dest, *SMALL, "--address", address).returncode == 0
    (dest / "notes.txt").write_text("precious")
    before = run_files(dest)
    result = run("preprocess", photos, dest, "--size", "24", "--overwrite", "--address", address)
    one_line_error(result, "files that are not its own ('notes.txt')", "shards never deletes them")
    assert run_files(dest) == before
    os.remove(dest / "notes.txt")
    assert_one_whole_run(str(dest))


def test_a_reader_opened_before_an_overwrite_never_returns_the_new_runs_samples(photos, tmp_path, address):
    dest = str(tmp_path / "out")
    assert run("preprocess", photos, dest, *SMALL, "--address", address).returncode == 0
    old = shards.open(dest)
    counts = [info.count for info in old.manifest.shards]
    bounds = np.cumsum([0] + counts)
    expected = shards.open(dest).read(np.arange(len(old)))[0].copy()  # maps nothing of `old`
    first_shard = np.arange(bounds[0], bounds[1])
    assert np.array_equal(old.read(first_shard)[0], expected[first_shard])  # maps shard 0 now

    # The same options but another seed: every shard keeps its name and size, not its samples.
    replaced = run("preprocess", photos, dest, *SMALL, "--seed", "9", "--overwrite", "--address", address)
    assert replaced.returncode == 0, replaced.stderr
    fresh = shards.open(dest)
    assert [info.bytes for info in fresh.manifest.shards] == [info.bytes for info in old.manifest.shards]
    assert not np.array_equal(fresh.read(np.arange(len(fresh)))[0], expected)

    for _epoch in range(2):
        for shard in range(len(counts)):
            rows = np.arange(bounds[shard], bounds[shard + 1])
            if shard == 0:
                assert np.array_equal(old.read(rows)[0], expected[rows])
            else:
                with pytest.raises(ManifestError, match="replaced since .* was opened"):
                    old.read(rows)


def test_shard_files_that_are_not_regular_files_inside_dest_are_refused_not_read(photos, tmp_path, address):
    dest = tmp_path / "out"
    assert run("preprocess", photos, dest, *SMALL, "--address", address).returncode == 0
    outside = tmp_path / "elsewhere.npy"
    os.replace(dest / "shard-00001.images.npy", outside)
    os.symlink(outside, dest / "shard-00001.images.npy")
    os.remove(dest / "shard-00002.images.npy")
    os.mkfifo(dest / "shard-00002.images.npy")

    ds = shards.open(str(dest))
    bounds = np.cumsum([0] + [info.count for info in ds.manifest.shards])
    with pytest.raises(ManifestError, match="not a regular file .a symlink.; shards reads only regular files"):
        ds.read(np.arange(bounds[1], bounds[2]))
    with pytest.raises(ManifestError, match="not a regular file .a FIFO."):
        ds.read(np.arange(bounds[2], bounds[3]))

    verify = run("verify", dest, timeout=60)
    assert verify.returncode == 1
    assert "shard-00001: shard-00001.images.npy is not a regular file (a symlink)" in verify.stdout
    assert "shard-00002: shard-00002.images.npy is not a regular file (a FIFO)" in verify.stdout
    preview = run("preview", dest, "-o", tmp_path / "sheet.png", timeout=60)
    one_line_error(preview, "not a regular file")


def test_open_with_verify_refuses_a_shard_whose_bytes_changed(photos, tmp_path, address):
    dest = tmp_path / "out"
    assert run("preprocess", photos, dest, *SMALL, "--address", address).returncode == 0
    with open(dest / "shard-00003.images.npy", "r+b") as handle:
        handle.seek(500)
        value = handle.read(1)
        handle.seek(500)
        handle.write(bytes([value[0] ^ 1]))
    assert len(shards.open(str(dest)).read(np.arange(30, 40))[0]) == 10  # same size: only a hash sees it
    with pytest.raises(ManifestError, match="shard-00003.images.npy: checksum mismatch"):
        shards.open(str(dest), verify=True).read(np.arange(30, 40))


@contextlib.contextmanager
def small_file_system(path, size):
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_dest_is_one_line_that_says_so_and_the_run_resumes_once_there_is_room(photos, tmp_path, address):
    with small_file_system(str(tmp_path / "small"), "1m") as mount:
        dest = os.path.join(mount, "out")
        options = ["--size", "96", "--shard-size", "300KiB"]  # 90 x 27 KB: over 2 MB of shards
        full = run("preprocess", photos, dest, *options, "--address", address)
        line = one_line_error(full, f"no space left on the device of {dest}", "rerun with --resume")
        assert "Traceback" not in full.stderr and "Unhandled error" not in full.stderr, full.stderr
        assert "shard-" in line and not os.path.exists(os.path.join(dest, "manifest.json"))

        subprocess.run(["mount", "-o", "remount,size=16m", mount], check=True)
        resumed = run("preprocess", photos, dest, *options, "--resume", "--address", address)
        assert resumed.returncode == 0, resumed.stderr
        assert_one_whole_run(dest)
        assert len(shards.open(dest)) == 90


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_read_only_tmpdir_is_one_line_before_ray_starts_and_dest_is_left_as_it_was(photos, tmp_path):
    with small_file_system(str(tmp_path / "scratch"), "1m") as scratch:
        subprocess.run(["mount", "-o", "remount,ro", scratch], check=True)
        dest = tmp_path / "out"
        refused = run("preprocess", photos, dest, *SMALL, env={"TMPDIR": scratch}, timeout=60)
        one_line_error(refused, f"TMPDIR {scratch} cannot be written (Read-only file system)", "set TMPDIR")
        assert not dest.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_tmpdir_that_fills_during_the_listing_is_one_line_and_dest_is_left_as_it_was(
    photos, tmp_path, ray_cluster, monkeypatch
):
    """2,000 paths spill a few hundred KB while they are listed and regrouped: more than 64 KiB."""
    import tempfile

    from shards.errors import ShardsError

    image = sorted(glob.glob(os.path.join(photos, "*", "*.jpg")))[0]
    with open(tmp_path / "list.csv", "w") as listing:
        listing.write("path,label\n" + "".join(f"{image},class_{i % 7}\n" for i in range(2000)))
    dest = tmp_path / "out"
    with small_file_system(str(tmp_path / "scratch"), "64k") as scratch:
        monkeypatch.setenv("TMPDIR", scratch)
        monkeypatch.setattr(tempfile, "tempdir", scratch)
        with pytest.raises(ShardsError, match=f"^TMPDIR {scratch} is full \\(No space left on device\\)"):
            shards.preprocess(str(tmp_path / "list.csv"), str(dest), size=16)
    assert not dest.exists()


def test_a_run_whose_ray_cannot_start_leaves_dest_as_it_found_it(photos, tmp_path, address):
    dest = tmp_path / "out"
    failed = run("preprocess", photos, dest, *SMALL, "--address", "127.0.0.1:notaport", timeout=120)
    one_line_error(failed, "cannot start or reach Ray at 127.0.0.1:notaport")
    assert not dest.exists()  # made for the claim, and taken back
    os.makedirs(dest)
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # Within the minute (Ray alone retried for minutes); past it, subprocess.run fails the test.
    failed = run("preprocess", photos, dest, *SMALL, "--address", f"127.0.0.1:{port}", timeout=60)
    one_line_error(failed, f"cannot reach Ray at 127.0.0.1:{port}: Connection refused")
    assert os.listdir(dest) == []  # found empty, left empty
    filled = run("preprocess", photos, dest, *SMALL, "--address", address)  # no --resume needed
    assert filled.returncode == 0, filled.stderr
    assert_one_whole_run(dest)


def _set(field, value):
    def tamper(record):
        record[field] = value

    return tamper


def _huge_count(record):
    record["count"] = 10**15
    record["shards"][0]["count"] = 10**15 - sum(s["count"] for s in record["shards"][1:])


TAMPERS = [
    (_huge_count, "claims 999,999,999,999,9"),
    (_set("count", -5), "'count' must be a non-negative integer"),
    (_set("dtype", "object"), "unknown dtype 'object'"),
    (_set("format", "zip"), "unknown format 'zip'"),
    (_set("classes", "cat,dog"), "'classes' must be a list of names"),
    (_set("shape", [16, 16, 1e9]), "'shape' must be [height, width, 3]"),
    (_set("complete", "yes"), "'complete' must be true or false"),
    (lambda r: r["shards"][1].update(count=-3), "shard 'shard-00001': 'count' must be a non-negative"),
]


@pytest.fixture(scope="module")
def clean_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    make_image_folder(str(root / "src"), 30, classes=2, sizes=(40, 60))
    shards.preprocess(
        str(root / "src"), str(root / "out"), shards.PreprocessOptions(size=16, shard_size=16 * 16 * 3 * 10)
    )
    return root / "out"


@pytest.mark.parametrize("tamper, words", TAMPERS)
def test_a_tampered_manifest_is_one_line_everywhere_and_sizes_nothing(clean_run, tmp_path, tamper, words):
    """Every field is checked on open, inspect and verify before any number in it is trusted."""
    import shutil

    dest = tmp_path / "out"
    shutil.copytree(clean_run, dest)
    record = json.loads((dest / "manifest.json").read_text())
    tamper(record)
    (dest / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ManifestError) as caught:
        shards.open(str(dest))
    assert words in str(caught.value)
    for command in ("inspect", "verify"):
        one_line_error(run(command, dest), words)


def test_a_garbage_rejects_file_is_one_line_in_inspect(clean_run, tmp_path):
    import shutil

    dest = tmp_path / "out"
    shutil.copytree(clean_run, dest)
    (dest / "rejects.jsonl").write_bytes(b"{not json\n\x00\xff")
    one_line_error(run("inspect", dest), "rejects.jsonl: not a rejects file shards wrote")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_disk_that_fills_while_the_driver_commits_is_one_line_and_resumes(photos, tmp_path, address):
    """Every shard is kept; only the driver's index, rejects and manifest meet the full disk."""
    with small_file_system(str(tmp_path / "small"), "8m") as mount:
        dest = os.path.join(mount, "out")
        options = ["--size", "32", "--shard-size", "3KiB"]  # a sample a shard: a manifest of 90 shards
        assert run("preprocess", photos, dest, *options, "--address", address).returncode == 0
        for name in ("manifest.json", "index.parquet", "rejects.jsonl"):
            os.remove(os.path.join(dest, name))  # as if the driver died before its commit
        filler = os.path.join(mount, "filler")
        with open(filler, "wb", buffering=0) as handle:
            for block in (65536, 4096):  # fill every page of the file system ...
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * block)
        os.truncate(filler, os.path.getsize(filler) - 2 * 4096)  # ... but two: the lock and run.json
        full = run("preprocess", photos, dest, *options, "--resume", "--address", address)
        line = one_line_error(full, "cannot commit the run: no space left on the device", "rerun with --resume")
        assert "Traceback" not in full.stderr, full.stderr
        assert not os.path.exists(os.path.join(dest, "manifest.json")), line
        os.remove(os.path.join(mount, "filler"))
        resumed = run("preprocess", photos, dest, *options, "--resume", "--address", address)
        assert resumed.returncode == 0, resumed.stderr
        assert len(shards.open(dest)) == 90
