"""TFRecord shards: plain tf.data reads them with no shards code, and they hold the npy pixels."""

import glob
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shards
from shards.formats import check_format
from shards.options import PreprocessOptions

SIZE = (24, 32)


@pytest.fixture(scope="module")
def npy_run(photos, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("npy") / "out")
    shards.preprocess(photos, dest, PreprocessOptions(size=SIZE, shard_size="40KiB"), workers=0)
    return dest


PLAIN_TF_READER = textwrap.dedent("""
    import glob, json, sys
    import numpy as np
    import tensorflow as tf  # no shards import: the documented feature spec is enough
    dest, compression, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "shape": tf.io.FixedLenFeature([3], tf.int64)}
    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.dtypes.as_dtype(dtype)), example["shape"])
        return image, example["label"]
    files = sorted(glob.glob(dest + "/shard-*.tfrecord*"))
    ds = tf.data.TFRecordDataset(files, compression_type=compression).map(parse)
    images, labels = zip(*[(i.numpy(), l.numpy()) for i, l in ds])
    np.savez(sys.argv[4], images=np.stack(images).astype(np.float32), labels=np.array(labels))
""")


@pytest.mark.slow  # reads with TensorFlow in a process of its own
@pytest.mark.parametrize("dtype, compression", [("uint8", "none"), ("float16", "gzip"), ("bfloat16", "none")])
def test_plain_tf_data_reads_the_same_pixels_as_the_npy_output(npy_run, photos, tmp_path, dtype, compression):
    dest = str(tmp_path / "tf")
    shards.preprocess(
        photos,
        dest,
        PreprocessOptions(size=SIZE, format="tfrecord", dtype=dtype, compression=compression, shard_size="40KiB"),
        workers=0,
    )
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    assert glob.glob(f"{dest}/shard-*{suffix}")
    out = tmp_path / "parsed.npz"
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TF_READER, dest, "GZIP" if compression == "gzip" else "", dtype, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = np.load(out)
    reference, labels = shards.open(npy_run).read(np.arange(90))
    expected = reference.astype(np.float32) / (1 if dtype == "uint8" else 255)
    # Same plan and seed: records come in the same order as the npy samples.
    assert parsed["images"].shape == (90, *SIZE, 3)
    np.testing.assert_array_equal(parsed["labels"], labels)
    np.testing.assert_allclose(parsed["images"], expected, atol=0 if dtype == "uint8" else 4e-3)
    # And shards.open reads the TFRecords behind the same API.
    images, _ = shards.open(dest).read(np.arange(90))
    np.testing.assert_allclose(images.astype(np.float32), expected, atol=0 if dtype == "uint8" else 4e-3)
    manifest = json.load(open(f"{dest}/manifest.json"))
    assert manifest["format"] == "tfrecord" and manifest["dtype"] == dtype


def test_verify_finds_a_truncated_tfrecord(photos, tmp_path, capsys):
    from shards import cli

    dest = str(tmp_path / "tf")
    shards.preprocess(photos, dest, PreprocessOptions(size=SIZE, format="tfrecord", shard_size="40KiB"), workers=0)
    assert cli.main(["verify", dest]) == 0
    path = f"{dest}/shard-00001.tfrecord"
    with open(path, "r+b") as handle:
        handle.truncate(100)
    assert cli.main(["verify", dest]) == 1
    assert "shard-00001: shard-00001.tfrecord is 100 bytes" in capsys.readouterr().out


def test_gzip_needs_tfrecord():
    with pytest.raises(
        shards.ConfigError, match=r"--compression gzip needs --format tfrecord \(npy shards are memory-mapped\)"
    ):
        check_format("npy", "gzip")
    with pytest.raises(shards.ConfigError, match="--compression gzip needs --format tfrecord"):
        shards.preprocess("nowhere", "nowhere-either", compression="gzip")
