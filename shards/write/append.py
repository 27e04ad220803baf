"""`--append`: more samples into a finished run, as new shards made with the run's own options.

An append is a run of its own over MORE, planned after the run's last shard (`shard-00042`
follows `shard-00041`) and keyed by the run's key and MORE's listing, so a killed append
finishes with `--resume` and keeps the new shards that verify. The run's shards are never
touched. Its commit writes index.parquet and rejects.jsonl as the union (the run's rows first,
unchanged, so positions a reader opened before holds still name the same samples), then the
manifest, atomically: a reader opened before sees the old run whole, one opened after the union.
The run's rows are the base manifest's (its count, its rejects), never what a commit cut before
its manifest left in the files, so a `--resume` of a cut commit writes what an uncut one would.

Refused before anything is written, in one line: DEST without a finished run, an option that
differs from the run's (size, resize, dtype, format, compression, columns...), new class names
that would renumber the run's sorted classes, or targets of another kind or width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection
from typing import Any

from shards.errors import ConfigError, DestinationError, ManifestError
from shards.io.location import location
from shards.layout.index import open_base_index
from shards.layout.manifest import PARTS, REJECTS, Manifest, load_manifest, read_json, run_key
from shards.options import REJECT_POLICY, PreprocessOptions
from shards.targets import combined_stats

#: An unfinished append's claim on DEST, beside the run's own record.
APPEND_RECORD = "append.json"


def base_run(dest: str) -> Manifest:
    """The finished run in DEST that an append adds to.

    Raises:
        DestinationError: DEST holds no finished run.
        ManifestError: the run's index or rejects disagree with its manifest.
    """
    try:
        base = load_manifest(dest)
    except ManifestError as exc:
        raise DestinationError(f"{dest}: --append adds to a finished run, and DEST holds none ({exc})") from None
    open_base_index(dest, base)
    base_rejects(dest, base)
    return base


def append_options(
    dest: str, base: Manifest, options: PreprocessOptions, *, given: Collection[str] = ()
) -> PreprocessOptions:
    """The run's own options, with the reject policy and fetch settings given for this append.

    Options left unsaid take the run's; one said (named in `given`, or in `options` at another
    value than its default) with another value than the run's is refused, so an append never
    writes shards the run's readers could not read alike, nor lets a user think it did.

    Raises:
        ConfigError: an option that differs from the run's, named with both values.
    """
    run, default = base.config, PreprocessOptions()
    for field in dataclasses.fields(PreprocessOptions):
        mine, theirs = getattr(options, field.name), getattr(run, field.name)
        said = field.name in given or mine != getattr(default, field.name)
        if field.name not in REJECT_POLICY and said and mine != theirs:
            flag = "--" + field.name.replace("_", "-")
            raise ConfigError(
                f"{dest}: --append keeps the run's options; {flag} {mine!r} differs from the run's {theirs!r}"
            )
    policy = {name: getattr(options, name) for name in REJECT_POLICY}
    return dataclasses.replace(run, **policy)


def refuse_duplicate(dest: str, base: Manifest, mine: str) -> None:
    """Refuse MORE (`mine`: its inputs' `run_key` under the run's options) when the run, or one of its appends, was
    made from the same inputs: every
    sample would be in the run twice (`--allow-duplicates` says that is meant).

    Raises:
        DestinationError: the inputs were added before, naming when.
    """
    appended = base.record.get("appended", [])
    origin = base.record.get("origin_key") if appended else base.record.get("run_key")
    if mine == origin:
        raise DestinationError(
            f"{dest}: the run was made from these inputs already; appending them would hold every sample "
            "twice (--allow-duplicates to append them all the same)"
        )
    for entry in appended:
        if entry.get("listing_key") == mine:
            raise DestinationError(
                f"{dest}: {entry.get('source')!r} was appended with these inputs already; appending them again "
                "would hold every sample twice (--allow-duplicates to append them all the same)"
            )


def append_key(base_key: str, listing_fingerprint: str, options: PreprocessOptions) -> str:
    """The key of an append: the run's key and MORE's own, so the union is a run of its own."""
    return hashlib.sha256(f"{base_key}\0{run_key(listing_fingerprint, options)}".encode()).hexdigest()


def unfinished_append(dest: str) -> dict[str, Any] | None:
    """The record of an append cut short in DEST (what `--resume` continues), or None."""
    try:
        return read_json(dest, f"{PARTS}/{APPEND_RECORD}")
    except ManifestError:
        return None


def claim(dest: str, key: str, source: str) -> None:
    """Claim DEST for an append before any shard is written; refuse another unfinished one.

    Raises:
        DestinationError: an append of other inputs was cut short here and is not finished.
    """
    record = unfinished_append(dest)
    if record is not None and record.get("run_key") != key:
        raise DestinationError(
            f"{dest}: an append of {record.get('source')!r} was cut short here; finish it first "
            f"(shards preprocess {record.get('source')} {dest} --resume)"
        )
    payload = json.dumps({"run_key": key, "source": source}, sort_keys=True).encode()
    location(dest).write(f"{PARTS}/{APPEND_RECORD}", payload)


def base_rejects(dest: str, base: Manifest) -> bytes:
    """The run's own lines of rejects.jsonl, `base.rejected` of them (the append's follow):
    lines past them are a cut commit's, and are written again by the commit that finishes it.

    Raises:
        ManifestError: the file has fewer lines than the run rejected.
    """
    lines = (location(dest).read(REJECTS) or b"").splitlines(keepends=True)
    if len(lines) < base.rejected:
        raise ManifestError(
            f"{dest}: rejects.jsonl holds {len(lines)} lines and manifest.json counts {base.rejected} rejects; "
            "they disagree (run shards verify)"
        )
    return b"".join(lines[: base.rejected])


def merged_stats(base: Manifest, added: list[dict[str, Any]], added_count: int) -> list[dict[str, Any]]:
    """Each target's stats over the run and the append (see `combined_stats`)."""
    old_stats = [entry.get("stats", {}) for entry in base.record.get("targets", [])] or [
        {"counts": base.record.get("class_counts", [])}
    ]
    return combined_stats(old_stats, base.count, added, added_count)
