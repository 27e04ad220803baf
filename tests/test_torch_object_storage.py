"""A node of 2 ranks x 2 DataLoader workers reading one run from an S3-compatible server (moto
on 127.0.0.1) through one shared cache, for fork and spawn workers."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

import shards
from shards.io import storage
from shards.options import PreprocessOptions
from shards.read.sampling import rank_batches
from shards.synthetic import make_image_folder
from tests.s3_proxy import S3Proxy, moto_server

pytestmark = [pytest.mark.torch, pytest.mark.slow]
WORLD, BATCH, SEED = 4, 4, 3


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory):
    """60 samples in 20 shards on s3://data/run, and the same run in a local folder."""
    with moto_server() as address:
        yield _holding_a_run(address, tmp_path_factory)


def _holding_a_run(address, tmp_path_factory):
    storage.s3_client().create_bucket(Bucket="data")
    root = tmp_path_factory.mktemp("torch-s3")
    make_image_folder(str(root / "photos"), 60, classes=3, sizes=(30, 60), seed=4)
    options = PreprocessOptions(size=12, shard_size="1KiB")
    shards.preprocess(str(root / "photos"), "s3://data/run", options, workers=0)
    shards.preprocess(str(root / "photos"), str(root / "local"), options, workers=0)
    return "s3://data/run", str(root / "local"), address


def _rank(remote, cache, limit, rank, start_method, results, step):
    """One rank: a DataLoader with 2 workers over its slice of one shuffled epoch, stepping with
    the other rank after each batch, as DDP's gradient all-reduce makes ranks do."""
    import torch

    feed = shards.open(remote, cache_dir=cache, cache_limit=limit).to_torch(
        BATCH, shuffle=True, seed=SEED, rank=rank, world_size=WORLD, columns=["source"]
    )
    loader = torch.utils.data.DataLoader(feed, batch_size=None, num_workers=2, multiprocessing_context=start_method)
    batches = []
    for images, labels, extra in loader:
        assert labels.dtype == torch.int64  # F.cross_entropy takes them as they come
        batches.append((images.numpy().copy(), labels.numpy().copy(), extra["source"]))
        step.wait(timeout=120)
    results.put((rank, batches))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_two_ranks_with_two_loader_workers_each_share_one_node_cache(s3_run, tmp_path, start_method, monkeypatch):
    remote, local, upstream = s3_run
    nearby = shards.open(local)
    sizes = {name: digest.bytes for info in nearby.manifest.shards for name, digest in info.files.items()}
    limit = sum(sizes.values()) // 4
    cache = str(tmp_path / "node")
    context = multiprocessing.get_context("spawn")  # each rank a fresh process, as torchrun starts them
    results, step = context.Queue(), context.Barrier(2)
    # The node's ranks are known to its readers as torchrun and Ray Train tell them: a rank's
    # workers keep the shards of the node's readers that have not started yet (here a rank's
    # workers can read its whole short epoch before the other rank's spawned workers start).
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with S3Proxy(upstream) as proxy, storage.endpoint(proxy.url):
        ranks = [
            context.Process(target=_rank, args=(remote, cache, limit, r, start_method, results, step)) for r in (0, 1)
        ]
        for process in ranks:
            process.start()
        found = dict(results.get(timeout=300) for _ in ranks)
        for process in ranks:
            process.join(timeout=60)
            assert process.exitcode == 0
    dataset = shards.open(remote, cache_dir=cache, cache_limit=limit)
    sources = dataset.columns(["source"])["source"]
    order = dataset.epoch_order(dataset.read_spec(BATCH, shuffle=True, seed=SEED, world_size=WORLD), 0)
    seen = {}
    for rank, batches in found.items():
        spec = dataset.read_spec(BATCH, shuffle=True, seed=SEED, rank=rank, world_size=WORLD)
        want = [np.sort(positions) for positions in rank_batches(order, spec)]
        assert len(batches) == len(want)
        for (images, labels, names), positions in zip(batches, want):
            assert list(names) == sources[positions].tolist()  # the rank's batches, in order
            want_images, want_labels = nearby.read(positions)
            assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)
        seen[rank] = {name for _, _, names in batches for name in names}
    assert not seen[0] & seen[1]  # the ranks' slices are disjoint
    served = {path.rsplit("/", 1)[-1]: count for path, count in proxy.sent.items() if "shard-" in path}
    twice = {name: (count, sizes[name]) for name, count in served.items() if count > sizes[name]}
    assert served and not twice, twice  # each shard byte once for the node
