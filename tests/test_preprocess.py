"""Preprocess runs on a real local Ray, on real files, checked against independent references."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

import shards
from bench.quality import psnr
from shards.errors import DestinationError, RejectLimitError
from shards.options import PreprocessOptions
from tests.conftest import add_bad_files

SMALL = dict(size=(48, 64), shard_size=48 * 64 * 3 * 16)  # 16 samples a shard


def read_all(dest):
    ds = shards.open(dest)
    images, labels = ds.read(np.arange(len(ds)))
    return ds, images, labels


@pytest.mark.oldest
def test_round_trip_every_input_once_with_its_label_and_pixels(ray_cluster, photos, tmp_path):
    options = PreprocessOptions(**SMALL)
    summary = shards.preprocess(photos, str(tmp_path / "out"), options)
    assert summary.inputs == summary.written == 90 and summary.rejected == 0
    ds, images, labels = read_all(str(tmp_path / "out"))
    assert ds.classes == ["class_0", "class_1", "class_2"]
    table = pq.read_table(tmp_path / "out" / "index.parquet")
    assert table.column_names == ["shard", "row", "source", "label"]
    index = table.to_pydict()
    assert sorted(index["source"]) == sorted(os.path.join(root, f) for root, _, files in os.walk(photos) for f in files)
    # Index order is dataset order: row i of the dataset came from index.source[i].
    for i in range(0, 90, 7):
        source = index["source"][i]
        assert labels[i] == index["label"][i] == ds.classes.index(os.path.basename(os.path.dirname(source)))
        reference = ImageOps.fit(Image.open(source).convert("RGB"), (64, 48), Image.Resampling.LANCZOS)
        assert psnr(images[i], np.asarray(reference)) > 28, source
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["count"] == 90 and manifest["shape"] == [48, 64, 3] and manifest["dtype"] == "uint8"
    assert sum(s["count"] for s in manifest["shards"]) == 90 and len(manifest["shards"]) == 6
    assert manifest["class_counts"] == [30, 30, 30]


def test_npy_shards_load_with_plain_numpy(ray_cluster, photos, tmp_path):
    shards.preprocess(photos, str(tmp_path / "out"), PreprocessOptions(**SMALL))
    images = np.load(tmp_path / "out" / "shard-00000.images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(tmp_path / "out" / "shard-00000.labels.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(images, np.memmap) and images.shape == (16, 48, 64, 3) and labels.shape == (16,)


def test_no_ray_one_and_two_workers_give_byte_identical_output(ray_cluster, photos, tmp_path, monkeypatch):
    """`workers=0` writes the shards in this process without Ray: the same files as a Ray run."""
    import ray

    options = PreprocessOptions(**SMALL, seed=11)
    shards.preprocess(photos, str(tmp_path / "one"), options, workers=1)
    shards.preprocess(photos, str(tmp_path / "two"), options, workers=2)
    with monkeypatch.context() as patch:  # any Ray call would fail the run
        patch.setattr(ray, "remote", None)
        patch.setattr(ray, "init", None)
        shards.preprocess(photos, str(tmp_path / "none"), options, workers=0)
    names = sorted(n for n in os.listdir(tmp_path / "one") if n.startswith("shard-") or n.endswith(".parquet"))
    for other in ("two", "none"):
        assert names and names == sorted(
            n for n in os.listdir(tmp_path / other) if n.startswith("shard-") or n.endswith(".parquet")
        )
        for name in names + ["rejects.jsonl"]:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / other / name).read_bytes(), name
    one, two, none = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two", "none"))
    assert set(none["run"]["nodes"].values()) == {""} and none["run"]["workers"] == 1
    one.pop("run"), two.pop("run"), none.pop("run")
    assert one == two == none


def test_explicit_workers_cap_the_tasks_submitted_and_the_default_queues_one_more_per_cpu(
    ray_cluster, photos, tmp_path, monkeypatch
):
    """Ray does not know about --workers, so the driver never has more tasks submitted than
    that; with the default (every CPU) one more per CPU waits in Ray's queue, for a worker to
    take the moment it is free. Either way the bytes are the same."""
    import ray

    submitted = []
    wait = ray.wait

    def counting_wait(refs, *args, **kwargs):
        submitted.append(len(refs))
        return wait(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "wait", counting_wait)
    options = PreprocessOptions(**SMALL, seed=11)
    shards.preprocess(photos, str(tmp_path / "one"), options, workers=1)
    assert max(submitted) == 1
    submitted.clear()
    summary = shards.preprocess(photos, str(tmp_path / "all"), options)
    assert summary.shards == 6 and max(submitted) == 4  # the test cluster's 2 CPUs, twice
    for name in sorted(n for n in os.listdir(tmp_path / "one") if n.startswith("shard-")):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "all" / name).read_bytes(), name


def test_default_shard_sizing_makes_several_shards_of_a_small_set_whatever_the_workers(ray_cluster, photos, tmp_path):
    """At default options 90 inputs of 224x224x3 make 4 shards of up to 27 (the 4 MiB floor), so
    both workers are busy; the cut depends on the listing alone, so the bytes do not change."""
    runs = {}
    for workers in (1, 2):
        summary = shards.preprocess(photos, str(tmp_path / f"w{workers}"), workers=workers)
        record = json.loads((tmp_path / f"w{workers}" / "manifest.json").read_text())
        record.pop("run")
        runs[workers] = record
        assert summary.shards == 4 and record["samples_per_shard"] == 27 and record["config"]["shard_size"] is None
    assert runs[1] == runs[2]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_float_dtypes_hold_the_uint8_pixels_scaled_to_unit_range(ray_cluster, photos, tmp_path, dtype):
    shards.preprocess(photos, str(tmp_path / "u8"), PreprocessOptions(**SMALL))
    shards.preprocess(
        photos, str(tmp_path / dtype), PreprocessOptions(size=SMALL["size"], dtype=dtype, shard_size="64KiB")
    )
    _, ref, ref_labels = read_all(str(tmp_path / "u8"))
    ds, images, labels = read_all(str(tmp_path / dtype))
    assert str(ds.dtype) == dtype and images.dtype == ds.dtype
    order_ref = np.lexsort((ref_labels, ref.reshape(len(ref), -1).sum(1)))
    order = np.lexsort((labels, np.rint(images.astype(np.float32) * 255).reshape(len(images), -1).sum(1)))
    assert np.allclose(images[order].astype(np.float32), ref[order_ref] / 255.0, atol=4e-3)


def test_bad_files_are_rejected_with_reasons_and_good_ones_written(ray_cluster, photos, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(photos, src)
    expected = add_bad_files(str(src / "class_1"))
    summary = shards.preprocess(str(src), str(tmp_path / "out"), PreprocessOptions(**SMALL))
    assert summary.written == 90 and summary.rejected == len(expected)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = {os.path.basename(r["source"]): r["reason"] for r in rejects}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rejected"] == len(expected)


def test_max_rejects_fails_the_run_and_marks_the_manifest_incomplete(ray_cluster, tmp_path):
    add_bad_files(str(tmp_path / "bad"))
    Image.new("RGB", (30, 30)).save(tmp_path / "bad" / "fine.png")
    options = PreprocessOptions(size=(16, 16), max_rejects=1, shard_size=16 * 16 * 3)
    with pytest.raises(RejectLimitError, match="over the --max-rejects limit of 1"):
        shards.preprocess(str(tmp_path / "bad"), str(tmp_path / "out"), options)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(shards.ManifestError, match="the run that wrote it failed .* higher --max-rejects"):
        shards.open(str(tmp_path / "out"))


def test_dest_that_holds_a_run_is_never_silently_overwritten(ray_cluster, photos, tmp_path):
    dest = str(tmp_path / "out")
    shards.preprocess(photos, dest, PreprocessOptions(**SMALL))
    with pytest.raises(DestinationError, match="already holds this run"):
        shards.preprocess(photos, dest, PreprocessOptions(**SMALL))
    with pytest.raises(
        DestinationError, match=r"different dataset \(options differ: size \[48, 64\] in DEST, \[32, 32\] asked"
    ):
        shards.preprocess(photos, dest, PreprocessOptions(size=32, shard_size=SMALL["shard_size"]), mode="resume")
    summary = shards.preprocess(photos, dest, PreprocessOptions(size=32), mode="overwrite")
    assert summary.written == 90 and shards.open(dest).shape == (32, 32, 3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("precious")
    with pytest.raises(DestinationError, match="holds no shards run"):
        shards.preprocess(photos, str(tmp_path / "other"), PreprocessOptions(**SMALL), mode="overwrite")
    assert (tmp_path / "other" / "thesis.tex").read_text() == "precious"


def test_resume_keeps_verified_shards_and_redoes_damaged_ones(ray_cluster, photos, tmp_path):
    dest = tmp_path / "out"
    options = PreprocessOptions(**SMALL)
    shards.preprocess(photos, str(dest), options)
    clean = {n: (dest / n).read_bytes() for n in os.listdir(dest) if n.startswith("shard-")}
    # Simulate a run cut short: no manifest, one shard missing, one damaged.
    os.remove(dest / "manifest.json")
    os.remove(dest / "shard-00002.images.npy")
    with open(dest / "shard-00004.images.npy", "r+b") as handle:
        handle.seek(500)
        handle.write(b"\x00\xff")
    kept_mtime = os.stat(dest / "shard-00000.images.npy").st_mtime_ns
    reports = []
    summary = shards.preprocess(photos, str(dest), options, mode="resume", on_progress=reports.append)
    assert summary.resumed_shards == 4 and summary.written == 90
    # The kept shards' inputs count as done, never as this run's speed (it read 32 of 90).
    assert reports[0].inputs_done == reports[0].inputs_kept == 58 and reports[0].images_per_second == 0
    assert reports[-1].inputs_done == 90 and reports[-1].images_per_second * reports[-1].elapsed == pytest.approx(32)
    assert os.stat(dest / "shard-00000.images.npy").st_mtime_ns == kept_mtime
    assert {n: (dest / n).read_bytes() for n in clean} == clean


def test_bad_image_manifest_rows_become_rejects(ray_cluster, photos, tmp_path):
    first = sorted(os.listdir(os.path.join(photos, "class_0")))[0]
    (tmp_path / "list.csv").write_text(
        f"path,label\n{os.path.join(photos, 'class_0', first)},cat\n{tmp_path}/missing.jpg,dog\n"
    )
    summary = shards.preprocess(
        str(tmp_path / "list.csv"), str(tmp_path / "out"), PreprocessOptions(size=(40, 30), resize="pad")
    )
    assert (summary.written, summary.rejected) == (1, 1)
    ds = shards.open(str(tmp_path / "out"))
    assert ds.classes == ["cat", "dog"] and ds.shape == (40, 30, 3)
    assert "file not found" in (tmp_path / "out" / "rejects.jsonl").read_text()
