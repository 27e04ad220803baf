"""Getting DEST ready for a run: refuse to clobber, resume what verifies, or start over.

A DEST that holds a run is never silently overwritten: `--resume` continues the same run (same
inputs and options) and `--overwrite` removes what a run wrote, nothing else. A folder is a
run's only when a record shards wrote says so; anything else in it is the user's, and refused.
"""

from __future__ import annotations

import concurrent.futures
import logging

from shards.errors import DestinationError, ManifestError
from shards.formats import is_shard_file
from shards.io.dest_lock import LOCK_NAME
from shards.io.fileio import TEMP_PREFIX
from shards.io.location import Location, location
from shards.layout.manifest import (
    INDEX,
    MANIFEST,
    PARTS,
    REJECTS,
    RUN_RECORD,
    Receipt,
    is_run_record,
    read_json,
    read_receipt,
)
from shards.layout.plan import ShardPlan
from shards.layout.verify import shard_problems
from shards.options import PreprocessOptions
from shards.targets import Targets

logger = logging.getLogger(__name__)

MODES = ("new", "resume", "overwrite", "append")
RECEIPT_THREADS = 8


def prepare_destination(
    dest: str, mode: str, key: str, options: PreprocessOptions, plan: ShardPlan, targets: Targets
) -> dict[str, Receipt]:
    """Make DEST (a folder or an object-storage prefix, locked by the caller) ready; return the
    receipts a resumed run keeps.

    DEST belongs to a run only when a manifest or run record that shards wrote proves it, and
    then only the files a run writes are ever removed: anything else in DEST is refused, in
    every mode, and left as it is.

    Raises:
        DestinationError: DEST holds files that are not a shards run's, another dataset, or a
            run and neither `resume` nor `overwrite` was asked for.
    """
    place = location(dest)
    entries = [name for name in place.names() or [] if name != LOCK_NAME]
    if not entries:
        return {}
    record = _run_record(dest)
    if record is None:
        raise DestinationError(
            f"{dest}: DEST is not empty and holds no shards run (found {entries[0]!r}); choose an empty or new folder"
        )
    foreign = sorted(name for name in entries if not _owned_by_run(name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DestinationError(
            f"{dest}: DEST holds a shards run and files that are not its own ({foreign[0]!r}{more}); "
            "move them out first, shards never deletes them"
        )
    if mode == "overwrite":
        _remove_run_files(place, entries)
        return {}
    if record.get("run_key") != key:
        raise DestinationError(
            f"{dest}: DEST holds a different dataset ({_difference(record, options)}); use another DEST or --overwrite"
        )
    if mode == "new":
        raise DestinationError(
            f"{dest}: DEST already holds this run; pass --resume to continue it or --overwrite to redo it"
        )
    place.remove_temporaries()
    return _verified_receipts(place, key, options, plan, targets)


def prepare_append(
    dest: str, key: str, options: PreprocessOptions, plan: ShardPlan, targets: Targets
) -> dict[str, Receipt]:
    """Make DEST (locked by the caller, holding the finished run appended to) ready for an
    append; return the receipts of the new shards a cut append already finished and that verify."""
    place = location(dest)
    place.remove_temporaries()
    return _verified_receipts(place, key, options, plan, targets)


def _run_record(dest: str) -> dict | None:
    """The manifest or run record in DEST if shards wrote it; refuses one it did not write."""
    for relative in (MANIFEST, f"{PARTS}/{RUN_RECORD}"):
        try:
            record = read_json(dest, relative)
        except ManifestError as exc:
            raise DestinationError(
                f"{dest}: DEST holds a {relative} that shards did not write ({exc}); choose another DEST"
            ) from None
        if record is not None:
            if not is_run_record(record):
                raise DestinationError(
                    f"{dest}: DEST holds a {relative} that shards did not write; choose another DEST"
                )
            return record
    return None


def _verified_receipts(
    place: Location, key: str, options: PreprocessOptions, plan: ShardPlan, targets: Targets
) -> dict[str, Receipt]:
    kept: dict[str, Receipt] = {}
    # In object storage a shard object exists only once its upload completed, so its size (all
    # from one listing) is checked here and its bytes by `shards verify` and by the reader's
    # cache: a resume downloads nothing. Receipts are fetched a few at a time.
    deep = place.local_root is not None
    sizes = None if deep else place.sizes()
    names = plan.names()
    with concurrent.futures.ThreadPoolExecutor(RECEIPT_THREADS) as pool:
        receipts = list(pool.map(lambda name: read_receipt(place.root, name), names))
    for name, receipt in zip(names, receipts):
        if receipt is None or receipt.run_key != key:
            continue
        problems = shard_problems(
            place.root, receipt.shard, options.format, options.shape, options.dtype, targets, deep=deep, sizes=sizes
        )
        if problems:
            logger.warning("redoing %s: %s", name, problems[0])
            continue
        kept[name] = receipt
    return kept


def _difference(record: dict, options: PreprocessOptions) -> str:
    theirs = record.get("config", {})
    ours = options.output_json()
    changed = [
        f"{name} {theirs.get(name)!r} in DEST, {ours[name]!r} asked" for name in ours if theirs.get(name) != ours[name]
    ]
    return "options differ: " + ", ".join(changed) if changed else "the inputs differ"


def _owned_by_run(name: str) -> bool:
    return name in (MANIFEST, INDEX, REJECTS, PARTS) or name.startswith(TEMP_PREFIX) or is_shard_file(name)


def _remove_run_files(place: Location, entries: list[str]) -> None:
    """Remove a run's files. The manifest goes first, so a half-removed run never looks
    finished; the run record goes last, so a removal cut short still proves whose files the
    rest are."""
    if MANIFEST in entries:
        place.remove(MANIFEST)
    for name in entries:
        if name not in (MANIFEST, PARTS) and _owned_by_run(name):
            place.remove(name)
    if PARTS in entries:
        for name in place.names(PARTS) or []:
            if name != RUN_RECORD:
                place.remove(f"{PARTS}/{name}")
        place.remove(PARTS)
