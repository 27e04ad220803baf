"""s3:// sources against a real S3-compatible server (moto's server mode) on 127.0.0.1."""

import os

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import shards
from shards import cli, storage
from shards.errors import SourceError
from shards.options import PreprocessOptions
from shards.sources import list_sources

OPTIONS = PreprocessOptions(size=(24, 32), shard_size="20KiB")


@pytest.fixture(scope="module")
def s3(photos):
    """A moto S3 server on loopback holding the `photos` set under s3://data/photos/."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    filesystem = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", access_key="testing",
                                   secret_key="testing", region="us-east-1", allow_bucket_creation=True)
    filesystem.create_dir("data")
    for folder, _, names in os.walk(photos):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), photos)
            with filesystem.open_output_stream(f"data/photos/{relative}") as handle:
                handle.write(open(os.path.join(folder, name), "rb").read())
    yield filesystem
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


def test_listing_an_s3_prefix_of_class_folders(s3, photos):
    remote, local = list_sources("s3://data/photos"), list_sources(photos)
    assert remote.classes == local.classes == ["class_0", "class_1", "class_2"]
    assert [u.removeprefix("s3://data/photos/") for u in remote.sources.to_pylist()] == \
        [os.path.relpath(p, photos) for p in local.sources.to_pylist()]
    assert remote.labels.tolist() == local.labels.tolist()
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


def test_an_object_storage_dest_is_refused_in_one_line_before_any_work(s3, capsys):
    assert cli.main(["preprocess", "s3://data/photos", "s3://data/out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "object-storage DEST is not supported yet" in err
    assert storage.info("s3://data/out").type == pafs.FileType.NotFound
