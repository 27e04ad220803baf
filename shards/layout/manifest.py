"""What DEST holds: the manifest schema, its version, the index, rejects and per-shard receipts.

The manifest is the commit marker of a run: written last, atomically. Until then each finished
shard leaves a small receipt in `DEST/.parts/` (its files' digests and its rejects), so a run
killed at any moment can be resumed by keeping every shard whose receipt and files agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from shards.errors import ManifestError
from shards.formats import FORMATS, ShardInfo, get_format
from shards.io import storage
from shards.io.location import location
from shards.options import DTYPE_BYTES, DTYPES, MAX_SIDE, PreprocessOptions
from shards.targets import Targets

# 3: `targets` records each target's kind (class, multilabel, regression), classes and width,
# with per-target statistics; version 2 runs hold one class target (their `classes`).
# 2: checksums name their algorithm (`checksum: "xxh3_128:<hex>"`); version 1 wrote bare sha256
# hex under `sha256`. All are read; new runs write 3.
MANIFEST_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
INDEX = "index.parquet"
REJECTS = "rejects.jsonl"
PARTS = ".parts"
RUN_RECORD = "run.json"
HOW_TO_PROCEED = (
    "fix or remove those inputs and rerun with --overwrite, or accept them and rerun with "
    "--resume and a higher --max-rejects"
)

# Raised when equal options start to write different pixels, so `--resume` never mixes shards of
# two resamplers in one run. 2: 0.3.0's first antialiased resampler (0.2.0 keys had no such
# field); 3: Pillow's bicubic filter (shards.write.resample).
PIXELS = 3
# Raised when equal inputs, options and seed start to put other samples in each shard, so
# `--resume` never keeps shards of one plan order and writes the rest by another (each sample
# would then be written twice or not at all). 2: the computed permutation (shards.permutation)
# that replaced 0.3.0's permutation array; keys before it had no such field. 3: swap-or-not for
# counts up to shards.permutation.SMALL, whose Feistel orders were far from uniform.
PLAN_ORDER = 3
_RUN_KEY = re.compile(r"[0-9a-f]{64}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REQUIRED = ("version", "format", "complete", "count", "shape", "dtype", "classes", "rejected", "shards", "config")


@dataclasses.dataclass(frozen=True)
class Reject:
    """One refused input: its position in the listing, its source and a reason a person reads."""

    position: int
    source: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What one shard task wrote, left in `.parts/` before the manifest exists."""

    run_key: str
    shard: ShardInfo
    rejects: list[Reject]
    node: str
    started: float = 0.0
    finished: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "run_key": self.run_key,
            "shard": self.shard.to_json(),
            "rejects": [dataclasses.asdict(r) for r in self.rejects],
            "node": self.node,
            "started": self.started,
            "finished": self.finished,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Receipt:
        return cls(
            record["run_key"],
            ShardInfo.from_json(record["shard"]),
            [Reject(**r) for r in record["rejects"]],
            record.get("node", ""),
            float(record.get("started", 0.0)),
            float(record.get("finished", 0.0)),
        )


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.json."""

    format: str
    complete: bool
    count: int
    shape: tuple[int, int, int]
    dtype: str
    classes: list[str]
    rejected: int
    shards: list[ShardInfo]
    config: PreprocessOptions
    record: dict[str, Any]
    targets: Targets


def check_shard_name(name: str, where: str) -> str:
    """Refuse names that could point outside DEST (`../x`, `/abs`, hidden files)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ManifestError(f"{where}: shard name {name!r} is not a plain file name")
    return name


def reason_kind(reason: str) -> str:
    """A reject reason without its details, for counting ("truncated image (...)" -> "truncated image")."""
    return reason.split(" (")[0].split(":")[0]


def run_key(listing_fingerprint: str, options: PreprocessOptions) -> str:
    """One value that changes whenever the inputs or any output-shaping option change.

    The reject policy (`--max-rejects`) is left out: it shapes no byte, and a run that failed
    its limit must be resumable under a higher one. Runs written before this rule carry keys
    that included it; they open as before but cannot be resumed by this version. `PIXELS`
    names the resampler and `PLAN_ORDER` the plan's permutation, so a run started by another
    one is not resumed either.
    """
    record = {
        "listing": listing_fingerprint,
        "config": options.output_json(),
        "pixels": PIXELS,
        "plan_order": PLAN_ORDER,
    }
    payload = json.dumps(record, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def is_run_record(record: dict[str, Any]) -> bool:
    """Whether a manifest or run record is one shards wrote (and so may be replaced by a run)."""
    key = record.get("run_key")
    return (
        isinstance(record.get("version"), int)
        and isinstance(key, str)
        and bool(_RUN_KEY.fullmatch(key))
        and isinstance(record.get("config"), dict)
    )


def build_manifest(
    options: PreprocessOptions,
    targets: Targets,
    stats: list[dict[str, Any]],
    shards: list[ShardInfo],
    *,
    inputs: int,
    rejected: int,
    samples_per_shard: int,
    source: str,
    key: str,
    complete: bool,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The manifest record; everything but `run` is a pure function of inputs and options.

    `classes` and `class_counts` repeat the first class or multi-label target's, for readers of
    version 2 manifests; `targets` says everything, with each target's `stats` (`counts` per
    class, or regression `min`/`mean`/`max`)."""
    first = next((i for i, t in enumerate(targets.items) if t.kind != "regression"), None)
    return {
        "version": MANIFEST_VERSION,
        "format": options.format,
        "complete": complete,
        "count": sum(s.count for s in shards),
        "shape": list(options.shape),
        "dtype": options.dtype,
        "classes": targets.classes,
        "class_counts": stats[first]["counts"] if first is not None else [],
        "targets": [{**entry, "stats": stat} for entry, stat in zip(targets.to_json(), stats)],
        "inputs": inputs,
        "rejected": rejected,
        "samples_per_shard": samples_per_shard,
        "shards": [s.to_json() for s in shards],
        "config": options.to_json(),
        "source": source,
        "run_key": key,
        "run": run,
    }


def write_manifest(dest: str, record: dict[str, Any]) -> None:
    """Commit a run: the manifest is written last, atomically."""
    location(dest).write(MANIFEST, _dumps(record))


def load_manifest(dest: str, *, allow_incomplete: bool = False) -> Manifest:
    """Read and validate DEST/manifest.json.

    Raises:
        ManifestError: missing, unreadable, of another version, malformed, or incomplete.
    """
    path = f"{dest.rstrip('/')}/{MANIFEST}"
    record = read_json(dest, MANIFEST)
    if record is None:
        if not storage.is_remote(dest) and not os.path.isdir(dest):
            raise ManifestError(f"{dest}: no such folder")
        raise ManifestError(f"{dest}: no {MANIFEST}; not a finished shards run")
    version = record.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ManifestError(
            f"{path}: manifest version {version!r} is not supported (this shards reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    _check_fields(record, path)
    if not record["complete"] and not allow_incomplete:
        raise ManifestError(
            f"{path}: the run that wrote it failed ({record.get('rejected')} of "
            f"{record.get('inputs')} inputs rejected; see rejects.jsonl): {HOW_TO_PROCEED}"
        )
    try:
        shards = [ShardInfo.from_json(s) for s in record["shards"]]
        for shard in shards:
            check_shard_name(shard.name, path)
            for file_name in shard.files:
                check_shard_name(file_name, path)
        height, width, channels = (int(v) for v in record["shape"])
        shape = (height, width, channels)
        config = PreprocessOptions.from_json(record["config"])
        targets = Targets.from_manifest(record, path)
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({exc})") from exc
    if sum(s.count for s in shards) != record["count"]:
        raise ManifestError(
            f"{path}: count {record['count']} disagrees with its shards' {sum(s.count for s in shards)}"
        )
    _check_shard_sizes(
        shards, shape, str(record["dtype"]), get_format(record["format"]).max_expansion(config.compression), path
    )
    return Manifest(
        record["format"],
        bool(record["complete"]),
        int(record["count"]),
        shape,
        str(record["dtype"]),
        list(record["classes"]),
        int(record["rejected"]),
        shards,
        config,
        record,
        targets,
    )


def _check_fields(record: dict[str, Any], path: str) -> None:
    """Refuse a tampered or foreign manifest field by field, before any number in it sizes an
    allocation: one ManifestError line naming the field."""

    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise ManifestError(f"{path}: {problem}")

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53

    need(record["format"] in FORMATS, f"unknown format {record['format']!r} (this shards reads {', '.join(FORMATS)})")
    need(isinstance(record["complete"], bool), f"'complete' must be true or false, got {record['complete']!r}")
    for field in ("count", "rejected"):
        need(is_count(record[field]), f"{field!r} must be a non-negative integer, got {record[field]!r}")
    shape = record["shape"]
    need(
        isinstance(shape, list)
        and len(shape) == 3
        and all(is_count(side) and 0 < side <= MAX_SIDE for side in shape[:2])
        and shape[2] == 3,
        f"'shape' must be [height, width, 3] with sides of 1-{MAX_SIDE}, got {shape!r}",
    )
    need(record["dtype"] in DTYPES, f"unknown dtype {record['dtype']!r} (this shards reads {', '.join(DTYPES)})")
    classes = record["classes"]
    need(
        isinstance(classes, list) and all(isinstance(name, str) for name in classes),
        f"'classes' must be a list of names, got {type(classes).__name__}",
    )
    need(
        isinstance(record["shards"], list) and all(isinstance(s, dict) for s in record["shards"]),
        "'shards' must be a list of shard records",
    )
    need(isinstance(record["config"], dict), "'config' must be an object")
    for shard in record["shards"]:
        count, files = shard.get("count"), shard.get("files")
        need(is_count(count), f"shard {shard.get('name')!r}: 'count' must be a non-negative integer, got {count!r}")
        need(
            isinstance(files, dict) and all(isinstance(f, dict) and is_count(f.get("bytes")) for f in files.values()),
            f"shard {shard.get('name')!r}: 'files' must map names to their bytes and checksum",
        )


def _check_shard_sizes(shards: list[ShardInfo], shape: tuple[int, ...], dtype: str, ratio: int, path: str) -> None:
    """A shard cannot hold more samples than its files have room for (`ratio`: the sample bytes a
    byte of file holds at most, as the format says; gzip TFRecords deflate's 1032:1), so a count
    no reader could serve is refused before it sizes anything."""
    sample_bytes = int(np.prod(shape)) * DTYPE_BYTES[dtype]
    for shard in shards:
        room = sum(digest.bytes for digest in shard.files.values()) * ratio
        if shard.count * sample_bytes > room:
            raise ManifestError(
                f"{path}: shard {shard.name!r} claims {shard.count:,} samples, more than its "
                f"{room // ratio:,} bytes of files can hold"
            )


def write_receipt(dest: str, receipt: Receipt) -> None:
    location(dest).write(f"{PARTS}/{receipt.shard.name}.json", _dumps(receipt.to_json()))


def read_receipt(dest: str, shard: str) -> Receipt | None:
    """A shard's receipt; None when it is absent or damaged (the shard is then redone)."""
    try:
        record = read_json(dest, f"{PARTS}/{shard}.json")
    except ManifestError:
        return None
    if record is None or record.get("version") not in READABLE_VERSIONS:
        return None
    try:
        return Receipt.from_json(record)
    except (KeyError, TypeError, ValueError):
        return None


def write_run_record(dest: str, key: str, source: str, options: PreprocessOptions) -> None:
    """Claim DEST for a run before any shard is written, so a crashed run is still recognised."""
    record = {"version": MANIFEST_VERSION, "run_key": key, "source": source, "config": options.to_json()}
    location(dest).write(f"{PARTS}/{RUN_RECORD}", _dumps(record))


def write_rejects(dest: str, rejects: list[Reject], *, before: bytes = b"") -> None:
    """rejects.jsonl: one JSON object a line with `source` and `reason`, in listing order
    (after the lines `before`: an appended run's own)."""
    lines = [json.dumps({"source": r.source, "reason": r.reason}, ensure_ascii=False) for r in rejects]
    location(dest).write(REJECTS, before + ("\n".join(lines) + "\n" if lines else "").encode())


def read_json(dest: str, relative: str) -> dict[str, Any] | None:
    """A JSON object from a file of DEST; None if absent; ManifestError if not a JSON object."""
    path = f"{dest.rstrip('/')}/{relative}"
    try:
        data = location(dest).read(relative)
        if data is None:
            return None
        record = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return record


def _dumps(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode()
