"""tar/WebDataset archives and Parquet files with image bytes, written by the tools that write
them in the wild (webdataset's TarWriter, Hugging Face datasets), against the folder run."""

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shards
from shards.errors import SourceError
from shards.options import PreprocessOptions
from shards.sources import list_sources

OPTIONS = PreprocessOptions(size=(24, 32), shard_size="20KiB")


def _samples(dest: str) -> dict[str, tuple[np.ndarray, int]]:
    """Each written sample by its source's file name: (pixels, label)."""
    index = pq.read_table(os.path.join(dest, "index.parquet")).to_pylist()
    loaded: dict[str, np.ndarray] = {}
    found = {}
    for row in index:
        shard = row["shard"]
        if shard not in loaded:
            loaded[shard] = np.load(os.path.join(dest, f"{shard}.images.npy"))
        found[row["source"]] = (loaded[shard][row["row"]], row["label"])
    return found


def _by_image(samples: dict[str, tuple[np.ndarray, int]], classes: list[str]) -> dict[str, tuple[bytes, str]]:
    """Key each sample by its image's base name (without extension) with its class name."""
    keyed = {}
    for source, (pixels, label) in samples.items():
        name = source.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
        keyed[name.split(".")[0]] = (pixels.tobytes(), classes[label])
    return keyed


@pytest.fixture(scope="module")
def folder_run(ray_cluster, photos, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("folder") / "out")
    shards.preprocess(photos, dest, OPTIONS)
    ds = shards.open(dest)
    return _by_image(_samples(dest), ds.classes)


def _photo_files(photos: str) -> list[tuple[str, str]]:
    """(path, class name) of every photo, in a stable order."""
    return sorted(
        (os.path.join(photos, cls, name), cls)
        for cls in sorted(os.listdir(photos))
        for name in os.listdir(os.path.join(photos, cls))
    )


def _key(path: str) -> str:
    return os.path.basename(path).split(".")[0]


def test_webdataset_tars_give_the_folder_runs_samples_and_labels(ray_cluster, photos, folder_run, tmp_path):
    """Written with webdataset's own TarWriter into 3 archives named by a brace pattern; labels
    from `.json` (class names). Every sample equals the folder run's, byte for byte."""
    import webdataset as wds

    files = _photo_files(photos)
    for part in range(3):
        with wds.TarWriter(str(tmp_path / f"data-{part:06d}.tar")) as sink:
            for path, cls in files[part::3]:
                extension = path.rsplit(".", 1)[-1]
                sink.write({"__key__": _key(path), extension: open(path, "rb").read(), "json": {"label": cls}})
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(tmp_path / "data-{000000..000002}.tar"), dest, OPTIONS)
    assert summary.written == len(files) and summary.rejected == 0
    ds = shards.open(dest)
    assert _by_image(_samples(dest), ds.classes) == folder_run
    # A folder of the same archives lists the same samples.
    assert len(list_sources(str(tmp_path))) == len(files)


def test_hugging_face_parquet_gives_the_folder_runs_samples_and_labels(ray_cluster, photos, folder_run, tmp_path):
    """Written by `datasets` (an `image` column of struct<bytes, path>, a `label` column), with
    the bytes embedded as in every dataset published on the Hub."""
    import datasets

    files = _photo_files(photos)
    images = [{"bytes": open(path, "rb").read(), "path": os.path.basename(path)} for path, _ in files]
    table = datasets.Dataset.from_dict(
        {"image": images, "label": [cls for _, cls in files], "key": [_key(p) for p, _ in files]}
    ).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "train.parquet"))
    schema = pq.read_schema(tmp_path / "train.parquet")
    assert pa.types.is_struct(schema.field("image").type)
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(tmp_path / "train.parquet"), dest, OPTIONS)
    assert summary.written == len(files) and summary.rejected == 0
    ds = shards.open(dest)
    rows = pq.read_table(tmp_path / "train.parquet", columns=["key"]).column("key").to_pylist()
    got = {
        rows[int(source.rsplit("#", 1)[1])]: (px.tobytes(), ds.classes[label])
        for source, (px, label) in _samples(dest).items()
    }
    assert got == folder_run


def _tar(path, members):
    """A tar from (name, bytes) pairs, with tarfile (names webdataset's writer would refuse)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    from shards.synthetic import photo_like

    buffer = io.BytesIO()
    Image.fromarray(photo_like(np.random.default_rng(seed), 40, 50, (90, 120, 200))).save(buffer, "JPEG")
    return buffer.getvalue()


def test_hostile_tars_become_exact_rejects_with_reasons(ray_cluster, tmp_path):
    good = [member for i in range(4) for member in ((f"ok{i}.jpg", _jpeg(i)), (f"ok{i}.cls", b"1"))]
    _tar(
        tmp_path / "a.tar",
        [
            *good,
            ("notes.txt", b"just text"),  # a sample with no image
            ("fake.jpg", b"not a jpeg at all"),  # an image member that is not an image
            ("ok1.jpg", _jpeg(9)),  # a key seen before
            ("../escape.jpg", _jpeg(10)),  # a name that climbs out of any folder
            ("badlabel.jpg", _jpeg(11)),
            ("badlabel.cls", b"one"),
        ],
    )
    _tar(tmp_path / "cut.tar", [("c0.jpg", _jpeg(20)), ("c1.jpg", _jpeg(21))])
    cut = (tmp_path / "cut.tar").read_bytes()
    second = cut.index(b"c1.jpg")  # the second member's header
    (tmp_path / "cut.tar").write_bytes(cut[: second + 512 + 100])  # its data cut after 100 bytes
    os.makedirs(tmp_path / "both")
    os.replace(tmp_path / "a.tar", tmp_path / "both" / "a.tar")
    os.replace(tmp_path / "cut.tar", tmp_path / "both" / "cut.tar")
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(tmp_path / "both"), dest, PreprocessOptions(size=16))
    assert summary.written == 5 and summary.rejected == 6, summary
    reasons = [json.loads(line) for line in open(os.path.join(dest, "rejects.jsonl"))]
    by_source = {r["source"].rsplit("#", 1)[1]: r["reason"] for r in reasons}
    assert "no image member" in by_source["notes.txt"]
    assert "not an image" in by_source["fake.jpg"]
    assert "duplicate key" in by_source["ok1.jpg"]
    assert "unsafe member name" in by_source["../escape.jpg"]
    assert "unreadable .cls label" in by_source["badlabel.jpg"]
    assert "truncated archive" in by_source["c1.jpg"]
    assert not os.path.exists(tmp_path / "escape.jpg") and not os.path.exists(tmp_path.parent / "escape.jpg")


def test_compressed_and_unknown_archives_are_refused_in_one_line(tmp_path):
    (tmp_path / "data.tar.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(SourceError, match="compressed tar archives cannot be read by byte range"):
        list_sources(str(tmp_path / "data.tar.gz"))
    (tmp_path / "gz.tar").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(SourceError, match="gzip-compressed"):
        list_sources(str(tmp_path / "gz.tar"))
    with pytest.raises(SourceError, match="do not exist"):
        list_sources(str(tmp_path / "data-{000000..000003}.tar"))


def test_parquet_rows_without_bytes_are_rejects(ray_cluster, tmp_path):
    images = [_jpeg(i) for i in range(5)]
    images[1] = None  # a null row
    images[3] = b"\0" * 64  # null bytes
    pq.write_table(
        pa.table({"image": pa.array(images, pa.binary()), "label": [0, 1, 0, 1, 0]}),
        tmp_path / "d.parquet",
        row_group_size=2,
    )
    dest = str(tmp_path / "out")
    summary = shards.preprocess(str(tmp_path / "d.parquet"), dest, PreprocessOptions(size=16))
    assert summary.written == 3 and summary.rejected == 2
    reasons = {
        json.loads(line)["source"]: json.loads(line)["reason"] for line in open(os.path.join(dest, "rejects.jsonl"))
    }
    assert "null" in reasons[f"{tmp_path}/d.parquet#1"]
    assert "not an image" in reasons[f"{tmp_path}/d.parquet#3"]
    assert shards.open(dest).classes == ["0", "1"]


def test_parquet_image_column_options(tmp_path):
    pq.write_table(pa.table({"pixels": pa.array([_jpeg(1)], pa.binary()), "y": ["cat"]}), tmp_path / "d.parquet")
    listing = list_sources(str(tmp_path / "d.parquet"), image_column="pixels", label_columns=("y",))
    assert len(listing) == 1 and listing.classes == ["cat"]
    with pytest.raises(SourceError, match="'path' column"):
        list_sources(str(tmp_path / "d.parquet"))
    with pytest.raises(SourceError, match="'nope' column"):
        list_sources(str(tmp_path / "d.parquet"), image_column="nope")
