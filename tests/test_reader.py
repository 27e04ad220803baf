"""The reader over real shards: coverage for any world size, order, resume, prefetch, safety."""

import collections
import gc
import json
import threading

import numpy as np
import pytest

import shards
from shards.errors import ConfigError, ManifestError
from shards.options import PreprocessOptions


@pytest.fixture(scope="module")
def dataset_dir(photos, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("read") / "out")
    shards.preprocess(photos, dest, PreprocessOptions(size=(24, 24), shard_size=24 * 24 * 3 * 13), workers=0)
    return dest


def fingerprints(images):
    """One value per sample, to follow samples through batches without relying on labels."""
    return [hash(image.tobytes()) for image in images]


@pytest.fixture(scope="module")
def sample_ids(dataset_dir):
    ds = shards.open(dataset_dir)
    images, _ = ds.read(np.arange(len(ds)))
    ids = fingerprints(images)
    assert len(set(ids)) == len(ds)  # every sample distinguishable
    return ids


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_cover_every_sample_once_per_epoch(dataset_dir, sample_ids, world_size, shuffle):
    ds = shards.open(dataset_dir)
    seen = collections.Counter()
    batch_counts = set()
    for rank in range(world_size):
        stream = ds.batches(8, shuffle=shuffle, seed=4, epoch=2, rank=rank, world_size=world_size)
        batches = list(stream)
        batch_counts.add(len(batches))
        assert len(batches) == len(stream)
        for images, labels in batches:
            assert images.shape[1:] == (24, 24, 3) and images.dtype == np.uint8 and len(labels) == len(images)
            seen.update(fingerprints(images))
    assert len(batch_counts) == 1
    assert set(seen) == set(sample_ids)
    assert sum(seen.values()) - len(sample_ids) == -len(sample_ids) % world_size


def test_labels_travel_with_their_images(dataset_dir):
    ds = shards.open(dataset_dir)
    truth = dict(zip(*(lambda im, lb: (fingerprints(im), lb.tolist()))(*ds.read(np.arange(len(ds))))))
    for images, labels in ds.batches(7, shuffle=True, seed=1):
        assert [truth[f] for f in fingerprints(images)] == labels.tolist()


def test_shuffle_differs_between_epochs_and_is_stable_for_a_seed(dataset_dir):
    ds = shards.open(dataset_dir)

    def sets(**kwargs):
        return [frozenset(fingerprints(images)) for images, _ in ds.batches(10, shuffle=True, **kwargs)]

    assert sets(seed=3, epoch=0) == sets(seed=3, epoch=0)
    assert sets(seed=3, epoch=0) != sets(seed=3, epoch=1)
    assert sets(seed=3, epoch=0) != sets(seed=4, epoch=0)


def test_start_resumes_exactly_where_a_reader_stopped(dataset_dir):
    ds = shards.open(dataset_dir)
    full = [fingerprints(images) for images, _ in ds.batches(6, shuffle=True, seed=8, epoch=1)]
    stream = ds.batches(6, shuffle=True, seed=8, epoch=1)
    head = [fingerprints(next(stream)[0]) for _ in range(4)]
    state = stream.state()
    stream.close()
    assert state["position"] == 24 and state["epoch"] == 1 and state["seed"] == 8
    tail = [fingerprints(images) for images, _ in ds.batches(6, shuffle=True, seed=8, epoch=1, start=state["position"])]
    assert head + tail == full


def test_drop_last_gives_only_full_batches(dataset_dir):
    ds = shards.open(dataset_dir)
    batches = list(ds.batches(8, drop_last=True, world_size=2, rank=1))
    assert len(batches) == len(ds) // 16 and all(len(images) == 8 for images, _ in batches)


@pytest.mark.parametrize("epoch", [-1, 1.5, True])
def test_an_epoch_that_names_no_epoch_is_refused_in_words_that_name_it(dataset_dir, epoch):
    with pytest.raises(ConfigError, match=f"epoch must be a non-negative integer, got {epoch!r}"):
        next(iter(shards.open(dataset_dir).batches(8, shuffle=True, epoch=epoch)))


def test_prefetch_is_bounded_and_an_abandoned_stream_stops_its_thread(dataset_dir):
    ds = shards.open(dataset_dir)
    before = threading.active_count()
    stream = ds.batches(4, prefetch=2)
    next(stream)
    assert stream._queue.maxsize == 2
    del stream
    gc.collect()
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before


def test_no_prefetch_gives_the_same_batches(dataset_dir):
    ds = shards.open(dataset_dir)
    a = [fingerprints(images) for images, _ in ds.batches(9, shuffle=True, prefetch=0)]
    b = [fingerprints(images) for images, _ in ds.batches(9, shuffle=True, prefetch=3)]
    assert a == b


def test_bad_reader_arguments_are_refused(dataset_dir):
    ds = shards.open(dataset_dir)
    with pytest.raises(ConfigError, match="rank"):
        ds.batches(4, rank=3, world_size=2)
    with pytest.raises(ConfigError, match="start"):
        ds.batches(4, start=len(ds) + 1)


def test_manifest_of_another_version_or_escaping_names_is_refused(dataset_dir, tmp_path):
    record = json.loads(open(f"{dataset_dir}/manifest.json").read())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(record, version=99)))
    with pytest.raises(ManifestError, match="version 99 is not supported"):
        shards.open(str(tmp_path))
    record["shards"][0]["name"] = "../../etc/passwd"
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="not a plain file name"):
        shards.open(str(tmp_path))
    with pytest.raises(ManifestError, match="nothing: no such folder"):
        shards.open(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="empty: no manifest.json; not a finished shards run"):
        shards.open(str(tmp_path / "empty"))


def test_reused_batch_buffers_never_change_a_batch_someone_still_holds(dataset_dir):
    ds = shards.open(dataset_dir)
    expected = [
        ds.read(indices)[0].copy()
        for indices in (b[2] for b in ds.batches(5, shuffle=True, seed=9, return_indices=True))
    ]
    held = []
    for step, (images, _) in enumerate(ds.batches(5, shuffle=True, seed=9, prefetch=1)):
        if step % 3 == 0:
            held.append((step, images))  # kept; the others are dropped and their buffers reused
        elif step % 3 == 1:
            view = images[1:3]  # a view alone also keeps its buffer
            held.append((step, view))
    for step, kept in held:
        reference = expected[step] if kept.shape[0] == expected[step].shape[0] else expected[step][1:3]
        np.testing.assert_array_equal(kept, reference)


def test_tensors_from_to_tf_stay_intact_while_the_stream_goes_on(dataset_dir):
    ds = shards.open(dataset_dir)
    tensors = [images for images, _ in ds.to_tf(6, shuffle=True, seed=2)]
    direct = [images for images, _ in ds.batches(6, shuffle=True, seed=2)]
    assert len(tensors) == len(direct)
    for tensor, images in zip(tensors, direct):
        np.testing.assert_array_equal(tensor.numpy(), images)


def test_buffers_nobody_holds_are_reused_and_a_held_one_never_is(dataset_dir):
    """Reuse rests on lifetimes (a lease freed with the last array that sees the buffer), and
    it does happen: a stream whose batches are dropped keeps rewriting a few buffers."""
    ds = shards.open(dataset_dir)
    stream = ds.batches(8, prefetch=0)
    first, _ = next(stream)
    kept, held_at = first[2:5], first.ctypes.data
    expected = kept.copy()
    del first  # only a slice of the first batch is still held
    addresses = [images.ctypes.data for images, _ in stream if len(images) == 8]
    assert len(addresses) >= 8 and len(set(addresses)) <= 2  # dropped buffers came back
    assert held_at not in addresses  # the held one never did
    np.testing.assert_array_equal(kept, expected)


def test_resume_continues_a_saved_stream_and_refuses_another_order(dataset_dir, sample_ids):
    ds = shards.open(dataset_dir)
    whole = [fingerprints(images) for images, _ in ds.batches(10, shuffle=True, seed=4, epoch=1)]
    stream = ds.batches(10, shuffle=True, seed=4, epoch=1)
    for _ in range(3):
        next(stream)
    state = json.loads(json.dumps(stream.state()))  # as a checkpoint saves it
    rest = ds.resume(state, ds.read_spec(5, shuffle=True, seed=4))  # another batch size is fine
    resumed = [sample for images, _ in rest for sample in fingerprints(images)]
    assert sorted(resumed) == sorted(sample for batch in whole[3:] for sample in batch)
    with pytest.raises(ConfigError, match=r"cannot resume: .*seed 4 -> 5"):
        ds.resume(state, ds.read_spec(10, shuffle=True, seed=5))
