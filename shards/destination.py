"""Getting DEST ready for a run: refuse to clobber, resume what verifies, or start over.

A DEST that holds a run is never silently overwritten: `--resume` continues the same run (same
inputs and options) and `--overwrite` removes what a run wrote, nothing else.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re

from shards.errors import DestinationError
from shards.fileio import TEMP_PREFIX, remove_temporaries
from shards.location import Location, location
from shards.manifest import INDEX, MANIFEST, PARTS, REJECTS, Receipt, read_receipt, read_run_record
from shards.options import PreprocessOptions
from shards.plan import ShardPlan
from shards.verify import shard_problems

logger = logging.getLogger(__name__)

MODES = ("new", "resume", "overwrite")
RECEIPT_THREADS = 8
_RUN_FILE = re.compile(r"shard-\d+\.(images\.npy|labels\.npy|tfrecord(\.gz)?)")


def prepare_destination(dest: str, mode: str, key: str, options: PreprocessOptions,
                        plan: ShardPlan) -> dict[str, Receipt]:
    """Make DEST (a folder or an object-storage prefix) ready; return the receipts a resumed run keeps.

    Raises:
        DestinationError: DEST is a file, holds another dataset, holds a run and neither
            `resume` nor `overwrite` was asked for, or holds files that are not a run's.
    """
    place = location(dest)
    if not place.is_remote and os.path.exists(dest) and not os.path.isdir(dest):
        raise DestinationError(f"{dest}: DEST exists and is not a folder")
    entries = place.names()
    if entries is None:
        if not place.is_remote:
            os.makedirs(dest)
        return {}
    record = read_run_record(dest)
    foreign = [name for name in entries if not _owned_by_run(name)]
    if record is None:
        if foreign:
            raise DestinationError(f"{dest}: DEST is not empty and holds no shards run "
                                   f"(found {foreign[0]!r}); choose an empty or new folder")
        _remove_run_files(place, entries)
        return {}
    if mode == "overwrite":
        _remove_run_files(place, entries)
        return {}
    if record.get("run_key") != key:
        raise DestinationError(f"{dest}: DEST holds a different dataset ({_difference(record, options)}); "
                               "use another DEST or --overwrite")
    if mode == "new":
        raise DestinationError(f"{dest}: DEST already holds this run; pass --resume to continue it "
                               "or --overwrite to redo it")
    if not place.is_remote:
        remove_temporaries(dest)
    return _verified_receipts(place, key, options, plan)


def _verified_receipts(place: Location, key: str, options: PreprocessOptions, plan: ShardPlan) -> dict[str, Receipt]:
    kept: dict[str, Receipt] = {}
    # In object storage a shard object exists only once its upload completed, so its size (all
    # from one listing) is checked here and its bytes by `shards verify` and by the reader's
    # cache: a resume downloads nothing. Receipts are fetched a few at a time.
    deep = not place.is_remote
    sizes = None if deep else place.sizes()
    specs = list(plan)
    with concurrent.futures.ThreadPoolExecutor(RECEIPT_THREADS) as pool:
        receipts = list(pool.map(lambda spec: read_receipt(place.root, spec.name), specs))
    for spec, receipt in zip(specs, receipts):
        if receipt is None or receipt.run_key != key:
            continue
        problems = shard_problems(place.root, receipt.shard, options.format, options.shape, options.dtype,
                                  deep=deep, sizes=sizes)
        if problems:
            logger.warning("redoing %s: %s", spec.name, problems[0])
            continue
        kept[spec.name] = receipt
    return kept


def _difference(record: dict, options: PreprocessOptions) -> str:
    theirs = record.get("config", {})
    ours = options.to_json()
    changed = [f"{name} {theirs.get(name)!r} vs {ours[name]!r}" for name in ours if theirs.get(name) != ours[name]]
    return "options differ: " + ", ".join(changed) if changed else "the inputs differ"


def _owned_by_run(name: str) -> bool:
    return (name in (MANIFEST, INDEX, REJECTS, PARTS) or name.startswith(TEMP_PREFIX)
            or bool(_RUN_FILE.fullmatch(name)))


def _remove_run_files(place: Location, entries: list[str]) -> None:
    # The manifest goes first: a half-removed run must never look like a finished one.
    for name in sorted(entries, key=lambda n: n != MANIFEST):
        if _owned_by_run(name):
            place.remove(name)
