"""to_torch: a DataLoader's workers read disjoint batches and together yield the batches of
`batches()` in order, ranks split an epoch without overlap, tensors keep the stored dtype; the
dataset also serves a map-style DataLoader, and Keras fits on the torch backend."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder

pytestmark = pytest.mark.torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """60 samples in shards of ~9, as uint8 and as bfloat16."""
    root = tmp_path_factory.mktemp("torch")
    make_image_folder(str(root / "photos"), 60, classes=3, sizes=(30, 60), seed=6)
    runs = {}
    for dtype in ("uint8", "bfloat16"):
        runs[dtype] = str(root / dtype)
        shards.preprocess(
            str(root / "photos"), runs[dtype], PreprocessOptions(size=12, dtype=dtype, shard_size="4KiB"), workers=0
        )
    return runs


def loader(feed, workers):
    import torch

    return torch.utils.data.DataLoader(feed, batch_size=None, num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_dataloader_yields_the_batches_of_batches_in_order(run, workers):
    ds = shards.open(run["uint8"])
    feed = ds.to_torch(7, shuffle=True, seed=2, epoch=1)
    got = [(images.numpy(), labels.numpy()) for images, labels in loader(feed, workers)]
    want = list(ds.batches(7, shuffle=True, seed=2, epoch=1))
    assert len(got) == len(want) == len(feed) == 9
    for (images, labels), (want_images, want_labels) in zip(got, want):
        assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)


def test_more_workers_than_the_rank_has_shards_yield_each_sample_once(run):
    ds = shards.open(run["uint8"])
    feed = ds.to_torch(32, shuffle=True, seed=4, columns=("source",))  # 2 batches for 4 workers
    sources = [source for _, _, extra in loader(feed, 4) for source in extra["source"]]
    assert sorted(sources) == sorted(ds.columns(["source"])["source"].tolist()) and len(set(sources)) == 60


def test_two_ranks_split_an_epoch_without_overlap_and_set_epoch_reshuffles(run):
    ds = shards.open(run["uint8"])
    every = sorted(ds.columns(["source"])["source"].tolist())
    for epoch in (0, 1):
        seen = {}
        for rank in (0, 1):
            feed = ds.to_torch(5, shuffle=True, seed=1, rank=rank, world_size=2, columns=("source",))
            feed.set_epoch(epoch)
            seen[rank] = [s for _, _, extra in loader(feed, 2) for s in extra["source"]]
            want = [s for _, _, extra in ds.batches(5, shuffle=True, seed=1, epoch=epoch, rank=rank, world_size=2,
                                                     columns=("source",)) for s in extra["source"]]  # fmt: skip
            assert seen[rank] == want
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == every
        if epoch == 0:
            first = seen[0]
    assert seen[0] != first  # epoch 1 has its own order


def test_tensors_keep_the_stored_dtype_and_layout(run):
    import ml_dtypes
    import torch

    ds = shards.open(run["uint8"])
    images, labels = next(iter(ds.to_torch(4)))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 12, 12, 3) and labels.dtype == torch.int64
    # Class indices in PyTorch's convention: the loss takes them as pasted (int32 raised
    # "expected scalar type Long").
    logits = torch.zeros(4, len(ds.classes), requires_grad=True)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    first, _ = ds.read(np.arange(4))
    nchw, _ = next(iter(ds.to_torch(4, channels_first=True)))
    assert tuple(nchw.shape) == (4, 3, 12, 12) and np.array_equal(nchw.numpy(), first.transpose(0, 3, 1, 2))
    assert nchw.is_contiguous(memory_format=torch.channels_last)  # the same memory, no copy
    half = shards.open(run["bfloat16"])
    images, _ = next(iter(loader(half.to_torch(4), 2)))
    want, _ = half.read(np.arange(4))
    assert images.dtype == torch.bfloat16
    assert np.array_equal(images.float().numpy(), want.astype(np.float32)) and want.dtype == ml_dtypes.bfloat16


def test_a_resumed_epoch_starts_at_its_position(run):
    ds = shards.open(run["uint8"])
    rest = [images.numpy() for images, _ in loader(ds.to_torch(8, shuffle=True, seed=3, start=24), 2)]
    want = [images for images, _ in ds.batches(8, shuffle=True, seed=3, start=24)]
    assert len(rest) == len(want) == 5 and all(np.array_equal(a, b) for a, b in zip(rest, want))


def test_bad_arguments_are_refused_in_one_line(run):
    ds = shards.open(run["uint8"])
    with pytest.raises(shards.ConfigError, match=r"rank must be in \[0, world_size\).*got 2 of 2"):
        ds.to_torch(4, rank=2, world_size=2)
    with pytest.raises(shards.ConfigError, match=r"start must be in \[0, 60\], got -1"):
        ds.to_torch(4, start=-1)
    with pytest.raises(shards.ConfigError, match="no column 'nope'"):
        ds.to_torch(4, columns=("nope",))


def test_the_dataset_serves_a_map_style_dataloader(run):
    import torch

    ds = shards.open(run["uint8"])
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)))
    want_images, want_labels = ds.read(np.arange(8))
    assert np.array_equal(images.numpy(), want_images) and np.array_equal(labels.numpy(), want_labels)


@pytest.mark.slow  # fits in a process of its own
def test_keras_fits_from_to_keras_on_the_torch_backend_without_tensorflow(absent, run):
    code = (
        "import importlib.util, json, sys, keras, shards\n"
        "from shards.keras.model import build_model, compile_model\n"
        f"ds = shards.open({run['uint8']!r})\n"
        "keras.utils.set_random_seed(0)\n"
        "model = compile_model(build_model(ds.shape, ds.targets, 'uint8'), 3e-3, ds.targets)\n"
        "history = model.fit(ds.to_keras(10, shuffle=True), epochs=3, verbose=0)\n"
        "print(json.dumps([keras.backend.backend(), len(history.history['loss']), "
        "importlib.util.find_spec('tensorflow') is not None]))"
    )
    # This environment (make test's 3.11 one, [torch,keras]) has no TensorFlow at all: torch's
    # own import asks find_spec about it, which a blocked-but-installed one would fail.
    env = absent(KERAS_BACKEND="torch")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == ["torch", 3, False]


def test_to_torch_passes_on_every_keyword_and_drop_remainder_still_works_with_a_warning(run):
    import inspect

    from shards.dataset import ShardDataset
    from shards.torch.dataset import to_torch

    method = inspect.signature(ShardDataset.to_torch).parameters
    wrapped = inspect.signature(to_torch).parameters
    assert {n: p.default for n, p in method.items() if n != "self"} == {
        n: p.default for n, p in wrapped.items() if n != "dataset"
    }
    ds = shards.open(run["uint8"])
    with pytest.warns(DeprecationWarning, match=r"to_torch\(drop_remainder=\.\.\.\) is now drop_last"):
        old = ds.to_torch(16, drop_remainder=True)
    new = ds.to_torch(16, drop_last=True)
    assert len(old) == len(new) == len(ds) // 16  # the last incomplete batch dropped by both
