import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shards.errors import DecodeError, SourceError
from shards.io.fileio import open_regular_descriptor, read_descriptor
from shards.sources import files as reading
from shards.sources import list_sources
from shards.sources.files import FileInputs, read_file
from tests.corpus import listed


def _touch_image(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_class_folders_give_sorted_classes_and_labels(tmp_path):
    for name in ["b/2.jpg", "a/1.JPG", "a/sub/3.png", "c/4.jpeg", "a/readme.txt", "a/.hidden.jpg"]:
        path = tmp_path / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            _touch_image(str(path))
    listing = list_sources(str(tmp_path))
    assert listing.classes == ["a", "b", "c"]
    rows = dict(zip((os.path.relpath(s, tmp_path) for s in listed(listing)[0]), listed(listing)[1]))
    assert rows == {"a/1.JPG": 0, "a/sub/3.png": 0, "b/2.jpg": 1, "c/4.jpeg": 2}


def test_flat_folder_is_unlabeled(tmp_path):
    for name in ["x.webp", "y.TIFF", "z.gif"]:
        _touch_image(str(tmp_path / name))
    listing = list_sources(str(tmp_path))
    assert listing.classes == [] and listed(listing)[1] == [-1, -1, -1]
    assert len(listing) == 3


def test_csv_with_string_labels_and_relative_paths(tmp_path):
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.jpg,dog\n/abs/b.jpg,cat\nimgs/c.jpg,dog\nimgs/d.jpg,\n")
    listing = list_sources(str(tmp_path / "list.csv"))
    assert listing.classes == ["cat", "dog"]
    assert listed(listing)[1] == [1, 0, 1, -1]
    assert listed(listing)[0][0] == os.path.join(str(tmp_path), "imgs/a.jpg")
    assert listed(listing)[0][1] == "/abs/b.jpg"


def test_parquet_with_integer_labels(tmp_path):
    pq.write_table(pa.table({"path": ["/x/1.jpg", "/x/2.jpg"], "label": [3, 0]}), tmp_path / "m.parquet")
    listing = list_sources(str(tmp_path / "m.parquet"))
    assert listed(listing)[1] == [3, 0] and listing.classes == ["0", "1", "2", "3"]


def test_manifest_without_labels_is_unlabeled(tmp_path):
    (tmp_path / "list.csv").write_text("path\n/a.jpg\n/b.jpg\n")
    assert listed(list_sources(str(tmp_path / "list.csv")))[1] == [-1, -1]


@pytest.mark.parametrize(
    "content, match",
    [("file,label\na.jpg,x\n", "needs a 'path' column"), ("path,label\na.jpg,-4\n", "labels must be >= 0")],
)
def test_bad_manifests_are_refused_with_a_reason(tmp_path, content, match):
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(SourceError, match=match):
        list_sources(str(tmp_path / "list.csv"))


def test_missing_empty_and_ambiguous_sources(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        list_sources(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        list_sources(str(tmp_path / "empty"))
    _touch_image(str(tmp_path / "mixed" / "cls" / "a.jpg"))
    _touch_image(str(tmp_path / "mixed" / "loose.jpg"))
    with pytest.raises(SourceError, match="loose image"):
        list_sources(str(tmp_path / "mixed"))


def test_listing_labels_are_int32_and_fingerprint_tracks_content(tmp_path):
    for i in range(5):
        _touch_image(str(tmp_path / "k" / f"{i}.png"))
    listing = list_sources(str(tmp_path))
    rows = listing.shard_rows(np.arange(len(listing)))
    assert rows.values.dtype == np.int32 and rows.values.tolist() == [0] * 5
    assert listing.fingerprint() == list_sources(str(tmp_path)).fingerprint()
    _touch_image(str(tmp_path / "k" / "5.png"))
    assert listing.fingerprint() != list_sources(str(tmp_path)).fingerprint()


def test_read_file_names_why_a_file_cannot_be_read(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    with pytest.raises(DecodeError, match="broken symlink"):
        read_file(str(tmp_path / "link.jpg"), 100)
    with pytest.raises(DecodeError, match="file not found"):
        read_file(str(tmp_path / "missing.jpg"), 100)
    (tmp_path / "real.jpg").write_bytes(b"abc")
    assert read_file(str(tmp_path / "real.jpg"), 100) == b"abc"


def test_a_file_that_changed_size_since_its_stat_is_read_to_its_end_but_never_past_the_limit(tmp_path):
    """Reads are sized by the size the file had when opened (a read sized by the 256 MiB input
    limit allocates that much first): a file that grew since is still read to its end, a
    larger one is still cut one byte past the limit, and a file that shrank ends early."""
    path = tmp_path / "growing.jpg"
    path.write_bytes(b"x" * 200_000)
    for stale_size, limit, expected in ((10, 10**6, 200_000), (10, 1_001, 1_001), (10**6, 10**7, 200_000)):
        descriptor, size = open_regular_descriptor(str(path))
        assert size == 200_000
        try:
            assert len(read_descriptor(descriptor, stale_size, limit)) == expected
        finally:
            os.close(descriptor)
    with pytest.raises(DecodeError, match="over the --max-input-bytes limit of 199,999"):
        read_file(str(path), 199_999)
    assert len(read_file(str(path), 200_000)) == 200_000


def test_worker_read_ahead_keeps_order_and_reasons_and_stops_its_threads(tmp_path, monkeypatch):
    """Inputs are read on threads, a batch of local files per hand-off, ahead of the decoder:
    every input still comes back in order, unreadable ones as their own reason, and an
    abandoned shard leaves no reader thread behind."""
    import threading
    import time

    sources = []
    for i in range(5 * reading.LOCAL_BATCH * reading.READ_THREADS + 3):
        path = tmp_path / f"{i}.jpg"
        if i % 7 == 3:
            path.mkdir()
        elif i % 7 != 5:
            path.write_bytes(f"image {i}".encode())
        sources.append(str(path))
    results = list(FileInputs(sources).read(2**20))
    assert len(results) == len(sources)
    for i, result in enumerate(results):
        if i % 7 == 3:
            assert isinstance(result, DecodeError) and str(result) == "is a folder, not a file"
        elif i % 7 == 5:
            assert isinstance(result, DecodeError) and str(result) == "file not found"
        else:
            assert result == f"image {i}".encode()
    threads_before = threading.active_count()
    reads = []
    monkeypatch.setattr(reading, "read_file", lambda source, limit: reads.append(source) or b"x")
    stream = FileInputs(sources).read(2**20)
    next(stream)
    assert threading.active_count() > threads_before  # reading ahead
    time.sleep(0.3)  # let the threads read all they are allowed to
    # Encoded files held ahead stay bounded (camera JPEGs are ~10 MB each).
    assert reading.READ_THREADS <= len(reads) <= reading.READ_AHEAD + reading.LOCAL_BATCH
    stream.close()
    assert threading.active_count() == threads_before
