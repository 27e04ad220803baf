"""The options of a preprocess run, validated once, before any work starts.

The CLI and the job entry points build a `PreprocessOptions` from their arguments; the library
takes it as an explicit argument. Everything in it shapes the bytes written, so it is also what
the manifest records and what `--resume` compares.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

from shards.errors import ConfigError

RESIZE_MODES = ("stretch", "crop", "pad")
DTYPES = ("uint8", "float16", "bfloat16", "float32")
# Decide only which inputs are refused (and whether a run may commit), never a byte of a kept
# sample: a failed run resumes under a higher limit or a longer timeout.
REJECT_POLICY = ("max_rejects", "max_reject_fraction", "fetch_timeout", "allow_private_urls")
# Options added after runs were written: left out of the run key at their defaults, so those
# runs keep their key (and stay resumable).
LATER_OPTIONS = ("url_column", "ignore_robots_headers")
DTYPE_BYTES = {"uint8": 1, "float16": 2, "bfloat16": 2, "float32": 4}

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
MAX_SIDE = 16384

# `--shard-size auto` (the default) cuts the listing into AUTO_SHARDS shards, each kept between
# AUTO_MIN_SHARD_BYTES and AUTO_MAX_SHARD_BYTES of image data. The count comes from the listing,
# never from the cluster, so the bytes written do not depend on how many workers run. 64 shards
# keep every core of a small cluster busy to the end (the last round leaves at most one shard per
# worker); the floor keeps per-shard costs (a task, two fsyncs, a receipt) small next to the
# work; the ceiling is the old fixed default, so large datasets get as many shards as before.
AUTO_SHARDS = 64
AUTO_MIN_SHARD_BYTES = 4 * 1024**2
AUTO_MAX_SHARD_BYTES = 256 * 1024**2
# No input is read past this many bytes (a camera JPEG is 5-30 MB; /dev/zero never ends).
MAX_INPUT_BYTES = 256 * 1024**2
# Seconds an HTTP fetch may wait to connect, and then for each read (img2dataset's default is 10).
FETCH_TIMEOUT = 10.0


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """Parse `224` or `160x128` (height x width) into (height, width)."""
    if isinstance(text, tuple):
        height, width = text
    elif isinstance(text, int):
        height = width = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
        if not match:
            raise ConfigError(f"--size must be N or HxW with positive integers, got {text!r}")
        height = int(match.group(1))
        width = int(match.group(2) or match.group(1))
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ConfigError(f"--size must be between 1 and {MAX_SIDE} per side, got {height}x{width}")
    return int(height), int(width)


def parse_bytes(text: str | int, what: str = "--shard-size") -> int:
    """Parse a byte count such as `256MiB`, `1GB` or `1048576`; `what` names it in errors."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise ConfigError(f"{what} must be a size such as 256MiB or 1GB, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


def parse_max_rejects(text: str | int | None) -> tuple[int | None, float | None]:
    """Parse `--max-rejects N` or `P%` into (count, fraction); (None, None) means no limit."""
    if text is None:
        return None, None
    if isinstance(text, int):
        count = text
    else:
        raw = str(text).strip()
        if raw.endswith("%"):
            try:
                percent = float(raw[:-1])
            except ValueError:
                percent = -1.0
            if not 0 <= percent <= 100:
                raise ConfigError(f"--max-rejects must be N or P% with 0 <= P <= 100, got {text!r}")
            return None, percent / 100
        if not raw.isdigit():
            raise ConfigError(f"--max-rejects must be a count N or a percentage P%, got {text!r}")
        count = int(raw)
    if count < 0:
        raise ConfigError(f"--max-rejects must not be negative, got {text!r}")
    return count, None


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """What a preprocess run produces. Equal options on equal inputs give equal bytes.

    Attributes:
        size: output (height, width) in pixels.
        resize: `stretch` (ignore aspect), `crop` (shorter side to size, centre crop) or `pad`
            (longer side to size, letterbox on black).
        dtype: `uint8` keeps 0..255; float dtypes hold values scaled to [0, 1].
        format: the shard format (a key of `shards.formats.FORMATS`; `shards.formats.check_format`
            checks it and its compression, before any work).
        shard_size: target bytes of image data per shard, which sets the samples per shard; None
            (`--shard-size auto`, the default) derives them from the number of inputs (see
            `samples_per_shard`).
        seed: seeds the permutation that mixes classes across shards.
        max_rejects: the most refused inputs a run accepts before failing, as a count (or as
            text: `"10"`, or `"5%"`, which sets `max_reject_fraction`).
        max_reject_fraction: the same as a fraction of the inputs (from `P%`).
        compression: `none`, or a compression the format writes (`gzip` for TFRecord shards).
        max_input_bytes: an input file, archive member or Parquet value larger than this is a
            reject, never read whole.
        image_column: the Parquet/CSV column of image bytes or paths (None: `image` when it
            holds bytes, else `path`).
        label_column: the column of labels (None: `label`); several, comma-separated, make a
            multi-output run (`age,gender`).
        columns: other columns carried into index.parquet, comma-separated (`id,caption`).
        url_column: the CSV/Parquet column of http(s) URLs to fetch (None: `url`, when the list
            has neither image bytes nor a `path` column).
        fetch_timeout: seconds a URL fetch may wait to connect and then for each read; a fetch
            takes at most 6 times this in all.
        ignore_robots_headers: fetch images whose server says `X-Robots-Tag: noai`,
            `noimageai`, `noindex` or `noimageindex` (honoured by default, as img2dataset does).
        allow_private_urls: fetch URLs whose address is not public (loopback, private,
            link-local, ...); refused by default, so a list from the internet cannot reach
            services inside the cluster.
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "crop"
    dtype: str = "uint8"
    format: str = "npy"
    shard_size: int | None = None
    seed: int = 0
    max_rejects: int | str | None = None
    max_reject_fraction: float | None = None
    compression: str = "none"
    max_input_bytes: int = MAX_INPUT_BYTES
    image_column: str | None = None
    label_column: str | None = None
    columns: str | None = None
    url_column: str | None = None
    fetch_timeout: float = FETCH_TIMEOUT
    ignore_robots_headers: bool = False
    allow_private_urls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", parse_size(self.size))
        if self.shard_size is not None and str(self.shard_size).strip().lower() != "auto":
            object.__setattr__(self, "shard_size", parse_bytes(self.shard_size))
        else:
            object.__setattr__(self, "shard_size", None)
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("format", "compression"):  # which ones exist is the formats' to say
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"--{name} must be a name, got {getattr(self, name)!r}")
        object.__setattr__(self, "max_input_bytes", parse_bytes(self.max_input_bytes, "--max-input-bytes"))
        if self.max_rejects is not None:  # `max_rejects="5%"` from Python, as on the command line
            count, fraction = parse_max_rejects(self.max_rejects)
            if fraction is not None and self.max_reject_fraction is not None:
                raise ConfigError("give max_rejects or max_reject_fraction, not both")
            object.__setattr__(self, "max_rejects", count)
            object.__setattr__(
                self, "max_reject_fraction", fraction if fraction is not None else self.max_reject_fraction
            )
        for name in ("image_column", "label_column", "columns", "url_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not all(_names(value))):
                raise ConfigError(f"--{name.replace('_', '-')} must be column names, got {value!r}")
        for name in ("image_column", "url_column"):
            value = getattr(self, name)
            if value is not None and "," in value:
                raise ConfigError(f"--{name.replace('_', '-')} must be one column name, got {value!r}")
        if self.image_column is not None and self.url_column is not None:
            raise ConfigError("--image-column and --url-column name the same thing: give one")
        timeout = self.fetch_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ConfigError(f"--fetch-timeout must be a number of seconds in (0, 3600], got {timeout!r}")
        object.__setattr__(self, "fetch_timeout", float(timeout))
        for name in ("ignore_robots_headers", "allow_private_urls"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for names in (self.label_columns, self.extra_columns):
            if len(set(names)) < len(names):
                raise ConfigError(f"a column is named twice in {','.join(names)!r}")
        reserved = set(self.extra_columns) & {"shard", "row", "source", "label"}
        if reserved:
            raise ConfigError(f"--columns: {sorted(reserved)[0]!r} is a column index.parquet already has")
        both = set(self.label_columns) & set(self.extra_columns)
        if both:
            raise ConfigError(f"{sorted(both)[0]!r} is both a label column and an extra column (--columns)")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The target columns, in order (default: `label`)."""
        return _names(self.label_column) if self.label_column else ("label",)

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The columns carried into index.parquet beside the targets."""
        return _names(self.columns) if self.columns else ()

    def listing_arguments(self) -> dict[str, Any]:
        """What `list_sources` takes from these options: the columns and how URLs are fetched."""
        from shards.io.http import FetchSettings

        fetch = FetchSettings(
            timeout=self.fetch_timeout,
            honour_robots=not self.ignore_robots_headers,
            allow_private=self.allow_private_urls,
        )
        return {
            "image_column": self.image_column,
            "label_columns": self.label_columns,
            "extra_columns": self.extra_columns,
            "url_column": self.url_column,
            "fetch": fetch,
        }

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one output sample, [H, W, C]."""
        return (self.size[0], self.size[1], 3)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one output image."""
        height, width, channels = self.shape
        return height * width * channels * DTYPE_BYTES[self.dtype]

    def samples_per_shard(self, inputs: int) -> int:
        """The fixed sample count per shard for a listing of `inputs` samples; at least one.

        An explicit `shard_size` gives `shard_size // sample_bytes`. The default aims at
        AUTO_SHARDS shards, within the byte floor and ceiling: 400 camera photos at 224x224 make
        15 shards of 27 (4 MiB) instead of one of 400; 20,000 ImageNet images make 64 shards of
        313 (47 MB); 1.28 million make 719 of 1,783 (the 256 MiB ceiling).
        """
        if self.shard_size is not None:
            return max(1, self.shard_size // self.sample_bytes)
        floor = max(1, AUTO_MIN_SHARD_BYTES // self.sample_bytes)
        ceiling = max(1, AUTO_MAX_SHARD_BYTES // self.sample_bytes)
        return min(ceiling, max(floor, -(-inputs // AUTO_SHARDS)))

    def reject_limit(self, inputs: int) -> int | None:
        """The most rejects allowed for a run over `inputs` files, or None for no limit."""
        if self.max_rejects is not None:
            return int(self.max_rejects)
        if self.max_reject_fraction is not None:
            return int(self.max_reject_fraction * inputs)
        return None

    def to_json(self) -> dict[str, Any]:
        """The options as the manifest records them."""
        record = dataclasses.asdict(self)
        record["size"] = list(self.size)
        return record

    def output_json(self) -> dict[str, Any]:
        """The options that shape the bytes written: all but the reject policy, which decides
        only whether a run may commit (so a failed run resumes under a higher limit)."""
        record = self.to_json()
        for policy in REJECT_POLICY:
            record.pop(policy)
        for name in LATER_OPTIONS:
            if record[name] == getattr(PreprocessOptions, name):
                record.pop(name)
        return record

    def command_flags(self) -> list[str]:
        """The `shards preprocess` flags that give these options: one for every field that
        differs from its default, in field order (what `shards inspect` prints to resume a cut
        run). Built from the fields themselves, so a new option cannot be left out.

        Raises:
            KeyError: a field with no flag in `_FLAGS` (a new option must name its flag there).
        """
        default = PreprocessOptions()
        flags: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != getattr(default, field.name):
                flag, form = _FLAGS[field.name]
                flags += [flag] if form is None else [flag, shlex.quote(form(value))]
        return flags

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PreprocessOptions:
        """The inverse of `to_json`; unknown keys are refused by the dataclass."""
        record = dict(record)
        record["size"] = tuple(record["size"])
        return cls(**record)


#: Each option's command-line flag and how its value is written there (None: a switch).
_FLAGS: dict[str, tuple[str, Callable[[Any], str] | None]] = {
    "size": ("--size", lambda size: "x".join(map(str, size))),
    "resize": ("--resize", str),
    "dtype": ("--dtype", str),
    "format": ("--format", str),
    "shard_size": ("--shard-size", str),
    "seed": ("--seed", str),
    "max_rejects": ("--max-rejects", str),
    "max_reject_fraction": ("--max-rejects", lambda fraction: f"{fraction * 100:g}%"),
    "compression": ("--compression", str),
    "max_input_bytes": ("--max-input-bytes", str),
    "image_column": ("--image-column", str),
    "label_column": ("--label-column", str),
    "columns": ("--columns", str),
    "url_column": ("--url-column", str),
    "fetch_timeout": ("--fetch-timeout", lambda seconds: f"{seconds:g}"),
    "ignore_robots_headers": ("--ignore-robots-headers", None),
    "allow_private_urls": ("--allow-private-urls", None),
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def numpy_storage_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype stored on disk for a manifest dtype.

    bfloat16 has no portable .npy descriptor (NumPy writes it as opaque `|V2`), so its bits are
    stored as little-endian uint16 and viewed as `ml_dtypes.bfloat16` on read.
    """
    if dtype == "bfloat16":
        return np.dtype("<u2")
    return np.dtype(dtype).newbyteorder("<") if dtype != "uint8" else np.dtype("u1")


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype a reader hands out for a manifest dtype."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)
