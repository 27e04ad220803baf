"""What the user sees: the contact sheet, the plan, the progress lines."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import shards
from shards import cli
from shards.options import PreprocessOptions
from shards.read.preview import GAP, choose_samples, render_contact_sheet, to_display
from shards.write.sizing import estimate_run


@pytest.fixture(scope="module")
def small_run(ray_cluster, photos, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("preview") / "out")
    shards.preprocess(photos, dest, PreprocessOptions(size=(40, 48), dtype="float16", shard_size="60KiB"))
    return dest


def test_preview_png_is_a_grid_whose_tiles_are_the_shard_samples(small_run, tmp_path, capsys):
    out = str(tmp_path / "sheet.png")
    assert cli.main(["preview", small_run, "-o", out, "--n", "9", "--seed", "4"]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    cell_w, cell_h = 48 + GAP, 40 + 14 + GAP
    assert image.shape == (3 * cell_h + GAP, 3 * cell_w + GAP, 3)  # a 3x3 grid
    dataset = shards.open(small_run)
    indices = choose_samples(dataset, 9, seed=4)
    for k in (0, 4, 8):
        expected, _ = dataset.read(np.array([indices[k]]))
        x, y = GAP + (k % 3) * cell_w, GAP + (k // 3) * cell_h
        np.testing.assert_array_equal(image[y : y + 40, x : x + 48], to_display(expected)[0])


def test_preview_per_class_puts_one_class_per_row(small_run):
    dataset = shards.open(small_run)
    indices = choose_samples(dataset, 4, per_class=True, seed=1)
    _, labels = dataset.read(np.array(sorted(indices)))
    by_position = dict(zip(sorted(indices), labels.tolist()))
    assert [by_position[i] for i in indices] == [0] * 4 + [1] * 4 + [2] * 4
    sheet = render_contact_sheet(dataset, indices, columns=4)
    assert sheet.image.size == (4 * (48 + GAP) + GAP, 3 * (40 + 14 + GAP) + GAP)


def test_plan_figures_equal_what_a_run_writes(ray_cluster, photos, tmp_path, capsys):
    options = PreprocessOptions(size=(30, 20), dtype="bfloat16", shard_size="40KiB")
    estimate = estimate_run(photos, options, batch_size=32, memory=2**30)
    summary = shards.preprocess(photos, str(tmp_path / "out"), options)
    assert (estimate.samples, estimate.shards) == (summary.written, summary.shards)
    on_disk = sum(os.path.getsize(tmp_path / "out" / n) for n in os.listdir(tmp_path / "out") if n.startswith("shard-"))
    assert estimate.bytes_on_disk == on_disk == summary.bytes
    assert estimate.host_batch_bytes == 32 * (30 * 20 * 3 * 2 + 4)
    assert estimate.largest_batch_host == 2**30 // (4 * (30 * 20 * 3 * 2 + 4))
    from shards.read.in_memory import bytes_needed

    held = bytes_needed(shards.open(str(tmp_path / "out")))
    assert estimate.bytes_in_memory == held == summary.written * (30 * 20 * 3 * 2 + 4)
    assert (
        cli.main(
            [
                "plan",
                photos,
                "--size",
                "30x20",
                "--dtype",
                "bfloat16",
                "--shard-size",
                "40KiB",
                "--memory",
                "1GiB",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["bytes_on_disk"] == on_disk


def test_plan_refuses_bad_arguments_in_one_line(photos, capsys):
    assert cli.main(["plan", photos, "--dtype", "int9"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_reports_rejects_by_reason(ray_cluster, tmp_path, capsys):
    from tests.conftest import add_bad_files

    expected = add_bad_files(str(tmp_path / "src"))
    Image.new("RGB", (20, 20)).save(tmp_path / "src" / "good.png")
    shards.preprocess(str(tmp_path / "src"), str(tmp_path / "out"), PreprocessOptions(size=8))
    assert cli.main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["rejects_by_reason"].values()) == len(expected) == report["rejected"]
    assert "decompression bomb" in report["rejects_by_reason"]
