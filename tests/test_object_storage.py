"""s3:// sources against a real S3-compatible server (moto's server mode) on 127.0.0.1."""

import hashlib
import json
import os
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import shards
from shards import cli
from shards.errors import SourceError
from shards.io import storage
from shards.options import PreprocessOptions
from shards.sources import list_sources
from tests.corpus import listed
from tests.s3_proxy import moto_server

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes

OPTIONS = PreprocessOptions(size=(24, 32), shard_size="20KiB")


@pytest.fixture(scope="module")
def s3(photos):
    """A moto S3 server on loopback holding the `photos` set under s3://data/photos/."""
    with moto_server() as address:
        yield _holding_the_photos(address, photos)


def _holding_the_photos(address, photos):
    host, port = address.split(":")
    filesystem = pafs.S3FileSystem(
        endpoint_override=f"{host}:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    filesystem.create_dir("data")
    for folder, _, names in os.walk(photos):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), photos)
            with filesystem.open_output_stream(f"data/photos/{relative}") as handle:
                handle.write(open(os.path.join(folder, name), "rb").read())
    return filesystem


def test_listing_an_s3_prefix_of_class_folders(s3, photos):
    remote, local = list_sources("s3://data/photos"), list_sources(photos)
    assert remote.classes == local.classes == ["class_0", "class_1", "class_2"]
    assert [u.removeprefix("s3://data/photos/") for u in listed(remote)[0]] == [
        os.path.relpath(p, photos) for p in listed(local)[0]
    ]
    assert listed(remote)[1] == listed(local)[1]
    with pytest.raises(SourceError, match="no such prefix"):
        list_sources("s3://data/nothing-here")


def test_preprocess_from_s3_equals_the_same_run_from_local_files(ray_cluster, s3, photos, tmp_path):
    summary = shards.preprocess("s3://data/photos", str(tmp_path / "remote"), OPTIONS)
    shards.preprocess(photos, str(tmp_path / "local"), OPTIONS)
    assert summary.written == 90 and summary.rejected == 0
    names = sorted(n for n in os.listdir(tmp_path / "local") if n.startswith("shard-"))
    for name in names:
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    sources = pq.read_table(tmp_path / "remote" / "index.parquet").column("source").to_pylist()
    assert all(s.startswith("s3://data/photos/class_") for s in sources)


def test_an_s3_manifest_with_relative_paths_and_a_missing_object(ray_cluster, s3, photos, tmp_path):
    first = sorted(os.listdir(os.path.join(photos, "class_1")))[:2]
    body = "path,label\n" + "".join(f"photos/class_1/{n},bird\n" for n in first) + "photos/class_1/gone.jpg,bird\n"
    with s3.open_output_stream("data/list.csv") as handle:
        handle.write(body.encode())
    summary = shards.preprocess("s3://data/list.csv", str(tmp_path / "out"), OPTIONS)
    assert (summary.written, summary.rejected) == (2, 1)
    assert "object not found" in (tmp_path / "out" / "rejects.jsonl").read_text()
    images, labels = shards.open(str(tmp_path / "out")).read(np.arange(2))
    assert images.shape == (2, 24, 32, 3) and labels.tolist() == [0, 0]


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3, tmp_path_factory, photos):
    """s3://data/photos preprocessed to s3://data/runs/main, and the same run into a local folder."""
    local = str(tmp_path_factory.mktemp("local-run"))
    assert (
        cli.main(["preprocess", "s3://data/photos", "s3://data/runs/main", "--size", "24x32", "--shard-size", "20KiB"])
        == 0
    )
    shards.preprocess(photos, local, OPTIONS, mode="overwrite")
    return "s3://data/runs/main", local


def object_names(s3, prefix):
    found = s3.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return sorted(f.path.removeprefix(prefix + "/") for f in found if f.type == pafs.FileType.File)


def test_s3_to_s3_writes_the_same_shards_as_a_local_run_and_verifies(s3_run, s3, capsys):
    remote, local = s3_run
    shard_files = sorted(n for n in os.listdir(local) if n.startswith("shard-"))
    names = object_names(s3, "data/runs/main")
    assert [n for n in names if n.startswith("shard-")] == shard_files
    assert {"manifest.json", "index.parquet", "rejects.jsonl"} <= set(names)
    assert not [n for n in names if "tmp" in n]  # nothing staged or half-written was published
    for name in shard_files:
        assert storage.read_bytes(f"{remote}/{name}") == open(os.path.join(local, name), "rb").read(), name
    capsys.readouterr()
    assert cli.main(["verify", remote]) == 0
    assert cli.main(["inspect", remote, "--json"]) == 0
    assert '"count": 90' in capsys.readouterr().out


def test_reader_trains_from_s3_through_a_cache_smaller_than_the_dataset(s3_run, tmp_path):
    from shards.tf.training import TrainOptions, train_worker

    remote, local = s3_run
    nearby = shards.open(local)
    largest = max(s.bytes for s in nearby.manifest.shards)
    total = sum(s.bytes for s in nearby.manifest.shards)
    limit = 4 * largest
    assert limit < total / 2
    dataset = shards.open(remote, cache_limit=limit, cache_dir=str(tmp_path / "cache"))
    assert dataset.shuffle_window == dataset.cache.window >= 1
    for epoch in range(2):
        seen = []
        for rank in range(2):
            for images, labels, positions in dataset.batches(
                8, shuffle=True, epoch=epoch, rank=rank, world_size=2, return_indices=True
            ):
                expected_images, expected_labels = nearby.read(positions)
                assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
                seen += positions.tolist()
        assert sorted(seen) == list(range(90))  # 90 is even: no padding, each sample once per epoch
    assert dataset.cache.peak_bytes <= limit
    # Each epoch fetched every shard about once per rank, not once per batch.
    assert dataset.cache.downloads <= 2 * 2 * len(dataset.manifest.shards) + 2

    audit = str(tmp_path / "audit")
    report = train_worker(
        remote,
        TrainOptions(
            epochs=2, batch_size=8, audit_dir=audit, cache_limit=str(limit), output=str(tmp_path / "model.keras")
        ),
    )
    assert [e["epoch"] for e in report["epochs"]] == [0, 1] and os.path.exists(tmp_path / "model.keras")
    for epoch in ("0", "1"):
        (name,) = os.listdir(audit)
        trained = json.load(open(os.path.join(audit, name)))["epochs"][epoch]
        assert sorted(trained) == list(range(90))


def test_a_shared_cache_folder_is_reused_and_damaged_objects_are_refused(s3_run, s3, tmp_path):
    remote, _ = s3_run
    cache = str(tmp_path / "cache")
    first = shards.open(remote, cache_dir=cache, cache_limit="1MiB")
    first.read(np.arange(90))
    assert first.cache.downloads == len(first.manifest.shards)
    again = shards.open(remote, cache_dir=cache, cache_limit="1MiB")
    again.read(np.arange(90))
    assert again.cache.downloads == 0  # every shard came from the folder, already verified

    # Same size, other bytes: the cache's sha256 check refuses it, and so does verify.
    copy = "runs/damaged"
    for name in object_names(s3, "data/runs/main"):
        s3.copy_file(f"data/runs/main/{name}", f"data/{copy}/{name}")
    victim = f"data/{copy}/shard-00001.images.npy"
    data = bytearray(s3.open_input_file(victim).readall())
    data[-1] ^= 0xFF
    with s3.open_output_stream(victim) as handle:
        handle.write(bytes(data))
    damaged = shards.open(f"s3://data/{copy}", cache_limit="1MiB")
    first_rows = int(damaged.manifest.shards[0].count)
    damaged.read(np.arange(first_rows))  # an intact shard reads
    with pytest.raises(shards.ManifestError, match="xxh3_128 differs from the manifest"):
        damaged.read(np.arange(first_rows, first_rows + 1))
    from shards.layout.verify import verify_dest

    assert verify_dest(f"s3://data/{copy}").problems == [
        "shard-00001: shard-00001.images.npy checksum mismatch (xxh3_128 differs)"
    ]


def test_resume_on_s3_redoes_only_what_is_missing(s3_run, s3):
    remote, _ = s3_run
    copy = "runs/crashed"
    for name in object_names(s3, "data/runs/main"):
        if name not in ("manifest.json", "shard-00003.labels.npy", ".parts/shard-00005.json"):
            s3.copy_file(f"data/runs/main/{name}", f"data/{copy}/{name}")
    before = {name: s3.get_file_info(f"data/{copy}/{name}").mtime for name in ("shard-00000.images.npy",)}
    with pytest.raises(shards.DestinationError, match="pass --resume"):
        shards.preprocess("s3://data/photos", f"s3://data/{copy}", OPTIONS)
    summary = shards.preprocess("s3://data/photos", f"s3://data/{copy}", OPTIONS, mode="resume")
    assert summary.shards - summary.resumed_shards == 2  # shard 3 lost a file, shard 5 its receipt
    for name in object_names(s3, "data/runs/main"):
        if name.startswith("shard-"):
            assert storage.read_bytes(f"s3://data/{copy}/{name}") == storage.read_bytes(f"{remote}/{name}"), name
    assert s3.get_file_info(f"data/{copy}/shard-00000.images.npy").mtime == before["shard-00000.images.npy"]


def test_object_storage_dest_refusals_are_one_line(s3_run, s3, capsys, tmp_path):
    remote, _ = s3_run
    with pytest.raises(shards.ConfigError, match="fewer than two shards"):
        shards.open(remote, cache_limit="10KiB")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(shards.ConfigError, match=r"cache folder .*a-file/cache: Not a directory; give cache_dir="):
        shards.open(remote, cache_dir=str(tmp_path / "a-file" / "cache"))
    with s3.open_output_stream("data/foreign/notes.txt") as handle:
        handle.write(b"not a run")
    capsys.readouterr()
    assert cli.main(["preprocess", "s3://data/photos", "s3://data/foreign"]) == 1  # not a usage error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no shards run (found 'notes.txt')" in err
    assert cli.main(["preprocess", "s3://data/photos", "s3://no-such-bucket/out"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://no-such-bucket/out" in err


def test_s3_listing_streams_page_by_page(s3):
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    for i in range(1005):
        client.put_object(Bucket="data", Key=f"many/class_{i % 2}/img-{i:05d}.jpg", Body=b"x")
    client.put_object(Bucket="data", Key="many/class_0/.hidden.jpg", Body=b"x")
    client.put_object(Bucket="data", Key="many/class_1/notes.txt", Body=b"x")
    pages = list(storage.list_pages("s3://data/many"))
    assert [len(page) for page in pages] == [1000, 7]  # ListObjectsV2's pages, never one big list
    listing = list_sources("s3://data/many")
    assert len(listing) == 1005 and listing.classes == ["class_0", "class_1"]
    uris = listed(listing)[0]
    assert uris == sorted(uris) and listed(listing)[1] == [0] * 503 + [1] * 502
    client.put_object(Bucket="data", Key="many/loose.jpg", Body=b"x")
    with pytest.raises(SourceError, match="class folders and 1 loose image"):
        list_sources("s3://data/many")


def test_an_s3_dest_takes_one_writer_and_a_stale_lock_is_taken_over(s3, photos, capsys):
    from shards.io.dest_lock import hold_dest

    dest = "s3://data/locked"
    with hold_dest(dest):
        assert "locked/.shards.lock" in object_names(s3, "data")
        with pytest.raises(shards.DestinationError, match=f"in use by another shards run .pid {os.getpid()} on"):
            with hold_dest(dest):
                pass
        capsys.readouterr()
        assert cli.main(["preprocess", photos, dest]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another shards run" in err
    assert "locked/.shards.lock" not in object_names(s3, "data")

    # A holder that stopped refreshing (crashed, or paused past the stale limit) loses the lock to
    # the next run, and finds out before it could commit.
    with hold_dest(dest, heartbeat=0.2) as paused:
        with hold_dest(dest, stale=-1) as taker:  # every lock counts as stale for this taker
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    paused.check()
                except shards.DestinationError as exc:
                    assert "took over DEST's lock" in str(exc)
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the holder never noticed that its lock was taken over")
            taker.check()
            assert "locked/.shards.lock" in object_names(s3, "data")
    assert "locked/.shards.lock" not in object_names(s3, "data")


def test_tar_and_parquet_sources_on_s3_equal_their_local_runs(ray_cluster, s3, photos, tmp_path):
    """The archives' index and the shard tasks' byte ranges go through S3 range requests."""
    import io
    import tarfile

    import pyarrow as pa

    files = sorted(os.path.join(c, n) for c in sorted(os.listdir(photos)) for n in os.listdir(os.path.join(photos, c)))
    for part in range(2):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for relative in files[part::2]:
                key = relative.replace("/", "_").split(".")[0]
                archive.add(os.path.join(photos, relative), arcname=f"{key}.{relative.rsplit('.', 1)[1]}")
                label = relative.split("/")[0].encode()
                info = tarfile.TarInfo(f"{key}.json")
                payload = b'{"label": "' + label + b'"}'
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
        (tmp_path / f"part-{part}.tar").write_bytes(buffer.getvalue())
        with s3.open_output_stream(f"data/tars/part-{part}.tar") as handle:
            handle.write(buffer.getvalue())
    table = pa.table(
        {
            "image": pa.array([open(os.path.join(photos, f), "rb").read() for f in files], pa.binary()),
            "label": [f.split("/")[0] for f in files],
        }
    )
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=16)
    with s3.open_output_stream("data/images.parquet") as handle:
        pq.write_table(table, handle, row_group_size=16)
    for remote, local in [
        ("s3://data/tars", str(tmp_path / "part-{0..1}.tar")),
        ("s3://data/images.parquet", str(tmp_path / "images.parquet")),
    ]:
        name = remote.rsplit("/", 1)[1]
        remote_run = shards.preprocess(remote, str(tmp_path / f"remote-{name}"), OPTIONS)
        local_run = shards.preprocess(local, str(tmp_path / f"local-{name}"), OPTIONS)
        assert remote_run.written == local_run.written == 90 and remote_run.rejected == 0
        shard_files = sorted(n for n in os.listdir(tmp_path / f"local-{name}") if n.startswith("shard-"))
        assert len(shard_files) > 2
        for shard in shard_files:
            assert (tmp_path / f"remote-{name}" / shard).read_bytes() == (
                tmp_path / f"local-{name}" / shard
            ).read_bytes()
        assert shards.open(str(tmp_path / f"remote-{name}")).classes == ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def s3_node_run(s3, photos, tmp_path_factory):
    """The photos in 24 small shards on s3://data/runs/node (written without Ray), and the same
    run in a local folder to compare reads with."""
    options = PreprocessOptions(size=(24, 32), shard_size="8KiB")
    local = str(tmp_path_factory.mktemp("node-local"))
    shards.preprocess(photos, "s3://data/runs/node", options, workers=0)
    shards.preprocess(photos, local, options, workers=0)
    return "s3://data/runs/node", local


def _node_reader(dataset, rank, part, results):
    """One of a node's readers: rank `rank` of 4, loader worker `part` of 2, one shuffled epoch."""
    spec = dataset.read_spec(4, shuffle=True, seed=5, rank=rank, world_size=4)
    read = []
    for images, _, positions in dataset.stream(spec, epoch=1, part=(part, 2), return_indices=True):
        read.append((positions.tolist(), hashlib.sha256(images.tobytes()).hexdigest()))
    results.put((rank, part, read))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_nodes_readers_share_one_cache_and_fetch_each_shard_once(
    s3_node_run, s3, tmp_path, start_method, monkeypatch
):
    """2 ranks x 2 loader workers of a world of 4, all at once, through a cache a quarter of the
    run: each sample once a rank-epoch, ranks disjoint, and each shard byte served at most once
    for the node, counted by a proxy in front of the server. The readers know the node's ranks
    as torchrun and Ray Train tell them (LOCAL_WORLD_SIZE), so one that starts late finds the
    shards it needs kept for it."""
    import multiprocessing

    from shards.read.sampling import rank_batches
    from tests.s3_proxy import S3Proxy

    remote, local = s3_node_run
    nearby = shards.open(local)
    sizes = {name: digest.bytes for info in nearby.manifest.shards for name, digest in info.files.items()}
    limit = sum(sizes.values()) // 4
    upstream = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    with S3Proxy(upstream) as proxy, storage.endpoint(proxy.url):
        dataset = shards.open(remote, cache_limit=limit, cache_dir=str(tmp_path / "node"))
        assert len(dataset.manifest.shards) >= 16
        # The parent reads first, as a training script does before its DataLoader forks: its
        # pins and download threads must not leak into the workers.
        next(iter(dataset.batches(4, shuffle=True, seed=5, epoch=1)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        context = multiprocessing.get_context(start_method)
        results = context.Queue()
        readers = [
            context.Process(target=_node_reader, args=(dataset, rank, part, results))
            for rank in range(2)
            for part in range(2)
        ]
        for reader in readers:
            reader.start()
        found = [results.get(timeout=180) for _ in readers]
        for reader in readers:
            reader.join(timeout=30)
            assert reader.exitcode == 0
    spec = dataset.read_spec(4, shuffle=True, seed=5, world_size=4)
    order = dataset.epoch_order(spec, 1)
    by_rank: dict[int, list] = {0: [], 1: []}
    for rank, _part, read in found:
        by_rank[rank] += [positions for positions, _ in read]
        for positions, digest in read:
            images, _ = nearby.read(np.array(positions))
            assert hashlib.sha256(images.tobytes()).hexdigest() == digest  # the right bytes
    for rank, batches in by_rank.items():
        want = sorted(
            p
            for batch in rank_batches(order, dataset.read_spec(4, shuffle=True, seed=5, rank=rank, world_size=4))
            for p in batch.tolist()
        )
        assert sorted(p for batch in batches for p in batch) == want  # each of the rank's samples once
    assert not {p for b in by_rank[0] for p in b} & {p for b in by_rank[1] for p in b}
    served = {path.rsplit("/", 1)[-1]: count for path, count in proxy.sent.items() if "shard-" in path}
    twice = {name: (count, sizes[name]) for name, count in served.items() if count > sizes[name]}
    assert served and not twice, twice  # each shard byte once for the node
    leftovers = [n for n in os.listdir(dataset.cache.folder) if n.startswith((".tmp-", ".claim-"))]
    assert not leftovers


def test_reads_through_503_slowdowns_and_cut_downloads_equal_a_clean_read(s3_node_run, tmp_path):
    """Every 5th shard GET answered 503 SlowDown and every 7th cut halfway: the reader retries
    (botocore's backoff, then the cache's) and hands out exactly the batches of a clean read."""
    from tests.s3_proxy import S3Proxy

    remote, local = s3_node_run
    clean = [(images, labels) for images, labels in shards.open(local).batches(8, shuffle=True, seed=2)]
    upstream = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    with S3Proxy(upstream, slow_down_every=5, cut_every=7) as proxy, storage.endpoint(proxy.url):
        dataset = shards.open(remote, cache_dir=str(tmp_path / "node"))
        local_order = shards.open(local)
        assert dataset.shuffle_window is not None
        read = [(images.copy(), labels.copy()) for images, labels in dataset.batches(8, shuffle=True, seed=2)]
    assert proxy.slowed and proxy.cut  # the faults happened
    # The same order needs the same shuffle window: compare sample by sample instead.
    spec = dataset.read_spec(8, shuffle=True, seed=2)
    from shards.read.sampling import rank_batches

    for (images, labels), positions in zip(read, rank_batches(dataset.epoch_order(spec, 0), spec)):
        want_images, want_labels = local_order.read(np.sort(positions))
        assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)
    assert len(read) == len(clean)
    assert not [n for n in os.listdir(dataset.cache.folder) if n.startswith((".tmp-", ".claim-"))]
