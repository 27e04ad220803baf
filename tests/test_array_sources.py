"""NumPy arrays in memory as SRC: `shards.preprocess((x, y), DEST)`, as Keras' flow(x, y)."""

import json
import os

import numpy as np
import pytest

import shards
from shards.errors import DestinationError, SourceError
from shards.options import PreprocessOptions
from shards.sources import list_sources

OPTIONS = PreprocessOptions(size=(24, 32), shard_size="20KiB")


def _images(dest: str) -> np.ndarray:
    manifest = json.load(open(os.path.join(dest, "manifest.json")))
    return np.concatenate([np.load(os.path.join(dest, f"{s['name']}.images.npy")) for s in manifest["shards"]])


def test_arrays_at_the_output_size_keep_their_pixels_and_labels(ray_cluster, tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (100, 24, 32, 3), dtype=np.uint8)
    y = np.arange(100) % 4
    summary = shards.preprocess((x, y), str(tmp_path / "out"), OPTIONS)
    assert summary.written == 100 and summary.shards > 3
    np.testing.assert_array_equal(_images(str(tmp_path / "out")), x)  # consecutive shards, listing order
    ds = shards.open(str(tmp_path / "out"))
    images, labels = ds.read(np.arange(100))
    np.testing.assert_array_equal(images, x)
    assert labels.tolist() == y.tolist() and ds.classes == ["0", "1", "2", "3"]


def test_each_task_is_handed_only_its_own_slice(tmp_path):
    x = np.zeros((1000, 8, 8, 3), np.uint8)
    listing = list_sources((x, np.zeros(1000, int)))
    inputs = listing.kind.inputs(np.arange(200, 300))
    assert inputs.images.shape == (100, 8, 8, 3) and inputs.images.base is None  # a copy of 100, not a view of 1000


def test_float_arrays_in_0_1_and_0_255_and_class_names(ray_cluster, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 24, 32, 3)).astype(np.uint8)
    shards.preprocess(x, str(tmp_path / "u8"), OPTIONS)
    y = np.array(["cat", "dog"] * 10)
    shards.preprocess((x.astype(np.float32) / 255, y), str(tmp_path / "unit"), OPTIONS)
    shards.preprocess((x.astype(np.float64), list(y)), str(tmp_path / "bytes"), OPTIONS)
    for name in ("unit", "bytes"):
        np.testing.assert_array_equal(_images(str(tmp_path / name)), _images(str(tmp_path / "u8")))
        assert shards.open(str(tmp_path / name)).classes == ["cat", "dog"]


def test_a_list_of_varied_sizes_and_modes_is_resized_like_decoded_images(ray_cluster, tmp_path):
    rng = np.random.default_rng(2)
    x = [
        rng.integers(0, 256, (60, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, (40, 40), dtype=np.uint8),  # greyscale
        rng.integers(0, 256, (30, 50, 1), dtype=np.uint8),
        np.full((24, 32, 4), 255, np.uint8),  # opaque RGBA
        np.full((24, 32, 3), np.nan, np.float32),  # not a picture
    ]
    dest = str(tmp_path / "out")
    summary = shards.preprocess(x, dest, OPTIONS)
    assert summary.written == 4 and summary.rejected == 1
    images = _images(dest)
    assert images.shape == (4, 24, 32, 3)
    assert (images[1][..., 0] == images[1][..., 1]).all()  # grey stays grey
    assert (images[3] == 255).all()
    rejects = [json.loads(line) for line in open(os.path.join(dest, "rejects.jsonl"))]
    assert rejects == [{"source": "array[4]", "reason": "pixel values are not finite (NaN or infinity)"}]
    assert json.load(open(os.path.join(dest, "manifest.json")))["source"] == "<5 arrays>"


def test_resume_knows_the_same_arrays_and_refuses_others(ray_cluster, tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (30, 24, 32, 3), dtype=np.uint8)
    dest = str(tmp_path / "out")
    shards.preprocess(x, dest, OPTIONS)
    assert shards.preprocess(x.copy(), dest, OPTIONS, mode="resume").resumed_shards > 0
    changed = x.copy()
    changed[5, 0, 0, 0] ^= 1
    with pytest.raises(DestinationError, match="different dataset"):
        shards.preprocess(changed, dest, OPTIONS, mode="resume")


@pytest.mark.parametrize(
    "src, words",
    [
        (np.zeros((4, 8), np.uint8), "must be [N, H, W] or [N, H, W, C]"),
        (np.zeros((4, 8, 8, 2), np.uint8), "C of 1, 3 or 4"),
        (np.zeros((4, 8, 8, 3), np.int64), "uint8 or float"),
        ((np.zeros((4, 8, 8, 3), np.uint8), [1, 2]), "4 images but 2 values of 'label'"),
        ((np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 3), 5)), "multi-hot (0s and 1s) or floats"),
        ((np.zeros((2, 8, 8, 3), np.uint8), [1, "cat"]), "'label' mixes types"),
        ([np.zeros((8, 8, 3), np.uint8), "not an array"], "NumPy array"),
    ],
)
def test_arrays_that_are_not_images_are_refused_in_one_line(src, words):
    with pytest.raises(SourceError) as caught:
        list_sources(src)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_options_come_as_keywords_too(ray_cluster, tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    summary = shards.preprocess((x, np.arange(6) % 2), str(tmp_path / "out"), size=64)
    assert summary.written == 6
    images, _ = shards.open(str(tmp_path / "out")).read(np.arange(6))
    assert np.array_equal(images, x)  # 64x64 kept pixel for pixel
    with pytest.raises(shards.ConfigError, match=r"unknown option 'image_size' \(options: size, resize"):
        shards.preprocess((x, None), str(tmp_path / "other"), image_size=64)
    assert not (tmp_path / "other").exists()
