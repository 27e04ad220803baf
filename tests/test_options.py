import pytest

import shards
from shards.errors import ConfigError
from shards.formats import check_format
from shards.options import (
    AUTO_MAX_SHARD_BYTES,
    AUTO_MIN_SHARD_BYTES,
    PreprocessOptions,
    parse_bytes,
    parse_max_rejects,
    parse_size,
)


@pytest.mark.parametrize(
    "text, expected", [("224", (224, 224)), ("160x128", (160, 128)), (" 32X48 ", (32, 48)), (96, (96, 96))]
)
def test_parse_size_accepts_square_and_height_by_width(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "0x10", "-3", "abc", "10x", "99999"])
def test_parse_size_refuses_bad_sizes_naming_the_option(text):
    with pytest.raises(ConfigError, match="--size"):
        parse_size(text)


@pytest.mark.parametrize("text, expected", [("256MiB", 256 * 2**20), ("1GB", 10**9), ("4096", 4096), ("1.5KiB", 1536)])
def test_parse_bytes_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["0", "12 parsecs", "-1MiB", ""])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="--shard-size"):
        parse_bytes(text)


def test_max_rejects_count_and_percentage():
    assert parse_max_rejects("5") == (5, None)
    assert parse_max_rejects("2.5%") == (None, 0.025)
    assert parse_max_rejects(None) == (None, None)
    with pytest.raises(ConfigError, match="--max-rejects"):
        parse_max_rejects("lots")
    with pytest.raises(ConfigError, match="--max-rejects"):
        parse_max_rejects("120%")


def test_options_validate_every_choice_with_the_allowed_values():
    with pytest.raises(ConfigError, match="--dtype must be one of uint8, float16, bfloat16, float32"):
        PreprocessOptions(dtype="int4")
    with pytest.raises(ConfigError, match="--resize"):
        PreprocessOptions(resize="squash")
    with pytest.raises(ConfigError, match="--format must be one of npy, tfrecord, got 'zip'"):
        check_format(PreprocessOptions(format="zip").format)
    with pytest.raises(ConfigError, match="--compression must be one of gzip, none, got 'lz4'"):
        check_format("tfrecord", "lz4")
    with pytest.raises(ConfigError, match="--format"):
        shards.preprocess("nowhere", "nowhere-either", format="zip")  # refused before SRC is looked at


def test_samples_per_shard_follows_shard_size_and_dtype():
    small = PreprocessOptions(size=(10, 10), shard_size=3000)
    assert small.sample_bytes == 300 and small.samples_per_shard(10**6) == 10
    assert PreprocessOptions(size=(10, 10), shard_size=3000, dtype="float32").samples_per_shard(5) == 2
    assert PreprocessOptions(size=(100, 100), shard_size=1).samples_per_shard(5) == 1


@pytest.mark.parametrize(
    "inputs, per_shard, shards",
    [
        (400, 27, 15),  # camera photos: the 4 MiB floor, 15 tasks instead of one
        (20_000, 313, 64),  # ImageNet-sized set: the 64-shard target
        (1_281_167, 1_783, 719),  # ImageNet: the 256 MiB ceiling, as the old fixed default
        (1, 27, 1),
    ],
)
def test_default_shard_sizing_comes_from_the_input_count_within_a_floor_and_a_ceiling(inputs, per_shard, shards):
    options = PreprocessOptions()
    assert options.shard_size is None and PreprocessOptions(shard_size="auto") == options
    assert options.samples_per_shard(inputs) == per_shard
    assert -(-inputs // per_shard) == shards
    shard_bytes = per_shard * options.sample_bytes
    assert shard_bytes <= AUTO_MAX_SHARD_BYTES and (shard_bytes >= AUTO_MIN_SHARD_BYTES - options.sample_bytes)


def test_reject_limit_from_count_or_fraction():
    assert PreprocessOptions(max_rejects=3).reject_limit(1000) == 3
    assert PreprocessOptions(max_reject_fraction=0.01).reject_limit(1000) == 10
    assert PreprocessOptions().reject_limit(1000) is None


def test_options_round_trip_through_json():
    options = PreprocessOptions(size=(32, 48), resize="pad", dtype="bfloat16", seed=9)
    assert PreprocessOptions.from_json(options.to_json()) == options


def test_fetch_options_are_checked_and_leave_the_run_key_of_earlier_runs_alone():
    with pytest.raises(ConfigError, match=r"--fetch-timeout must be a number of seconds in \(0, 3600\], got 0"):
        PreprocessOptions(fetch_timeout=0)
    with pytest.raises(ConfigError, match="--image-column and --url-column name the same thing"):
        PreprocessOptions(image_column="picture", url_column="link")
    default = PreprocessOptions().output_json()
    assert "url_column" not in default and "ignore_robots_headers" not in default  # keys as before they existed
    assert PreprocessOptions(fetch_timeout=30).output_json() == default  # a resume may wait longer
    assert PreprocessOptions(url_column="link").output_json()["url_column"] == "link"
    assert PreprocessOptions(ignore_robots_headers=True).output_json() != default
