"""A dataset is a random-access source: `len(ds)` and `ds[i]`, for grain and map-style
DataLoaders; a pickled dataset reopens the same run (and part) in the process that loads it."""

import copy
import pickle

import numpy as np
import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("random-access")
    make_image_folder(str(root / "photos"), 30, classes=3, sizes=(30, 60), seed=5)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=12, shard_size="4KiB"), workers=0)
    return dest


def test_indexing_gives_one_sample_as_read_gives_it(run):
    ds = shards.open(run)
    images, labels = ds.read(np.arange(len(ds)))
    assert len(ds) == 30
    for index in (0, 7, 29, -1, -30):
        image, label = ds[index]
        assert image.shape == (12, 12, 3) and np.array_equal(image, images[index]) and label == labels[index]
    with pytest.raises(IndexError, match="index 30 is out of range for 30 samples"):
        ds[30]
    with pytest.raises(IndexError):
        ds[-31]
    with pytest.raises(TypeError, match="integers, got str"):
        ds["3"]
    _, validation = ds.split(0.2, seed=1)
    image, _ = validation[2]
    assert np.array_equal(image, validation.read(np.array([2]))[0][0])


def test_grain_takes_the_dataset_as_a_source(run):
    import grain

    ds = shards.open(run)
    source = grain.MapDataset.source(ds)
    assert len(source) == 30
    images, labels = source.batch(8)[1]
    want_images, want_labels = ds.read(np.arange(8, 16))
    assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)
    shuffled = [int(label) for _, label in grain.MapDataset.source(ds).shuffle(seed=3)]
    assert sorted(shuffled) == sorted(ds.labels().tolist())


def test_a_pickled_dataset_reopens_the_same_part(run):
    ds = shards.open(run)
    _, validation = ds.split(0.3, seed=2)
    again = pickle.loads(pickle.dumps(validation))
    assert len(again) == len(validation) == 9
    assert np.array_equal(again.read(np.arange(9))[0], validation.read(np.arange(9))[0])
    held = ds.in_memory()
    assert np.array_equal(pickle.loads(pickle.dumps(held)).read(np.arange(30))[0], ds.read(np.arange(30))[0])
    view = copy.copy(held)  # a copy is a view sharing the loaded run, not a reopening
    assert view._readers is held._readers
