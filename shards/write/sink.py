"""A run's write lifecycle into DEST, as Ray Data's Datasink has it: start, write, complete, fail.

- `on_start`: lock DEST, make it ready (refusing what is not a run's, keeping what a resume can
  keep) and claim it with a run record, before any shard is written.
- write: each shard task (`shards.write.task.write_shard`) writes its files and a receipt.
- `on_complete`: index, rejects and, last, the manifest, which commits the run; then the lock
  is released.
- `on_failed`: release the lock. Finished shards and their receipts stay for `--resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from typing import Any

import numpy as np

from shards.errors import DestinationError
from shards.io.dest_lock import DestLock, hold_dest
from shards.io.location import location
from shards.layout.index import IndexWriter, copy_rows, open_base_index
from shards.layout.manifest import (
    PARTS,
    RUN_RECORD,
    Manifest,
    Receipt,
    build_manifest,
    load_manifest,
    write_manifest,
    write_rejects,
    write_run_record,
)
from shards.layout.plan import ShardPlan
from shards.options import PreprocessOptions
from shards.sources.listing import RunListing
from shards.targets import combined_stats
from shards.write import append
from shards.write.destination import prepare_append, prepare_destination


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What a run is: its source, the options that shape its bytes, its key and plan, and for an
    append (`--append`) the finished run it adds to."""

    src: str
    listing: RunListing
    options: PreprocessOptions
    key: str
    plan: ShardPlan
    base: Manifest | None = None
    inputs: str = ""  # MORE's own run key, to refuse appending the same inputs twice


class DestinationSink:
    """Writes one run into DEST (a folder or an object-storage prefix)."""

    def __init__(self, dest: str, run: RunIdentity, *, mode: str) -> None:
        self.place = location(dest)
        self.dest = self.place.root
        self.run = run
        self.mode = mode
        self._held = contextlib.ExitStack()
        self._lock: DestLock | None = None
        self._found: list[str] | None = None  # DEST's entries before this run claimed it (None: absent)
        self._claim = f"{PARTS}/{append.APPEND_RECORD if run.base is not None else RUN_RECORD}"
        self._claimed_before = False
        #: an append that wrote no sample was taken back whole (DEST is as it was found)
        self.discarded = False

    def on_start(self) -> dict[str, Receipt]:
        """Lock and claim DEST; return the receipts of the shards a resume keeps.

        Raises:
            DestinationError: another run holds DEST, or DEST cannot receive this run.
        """
        self._found = self.place.names()
        self._lock = self._held.enter_context(hold_dest(self.dest))
        try:
            self._claimed_before = self.place.read(self._claim) is not None
            run, targets = self.run, self.run.listing.run_targets
            if run.base is not None:
                if load_manifest(self.dest).record.get("run_key") != run.base.record.get("run_key"):
                    raise DestinationError(f"{self.dest}: DEST's run changed while MORE was listed; append again")
                kept = prepare_append(self.dest, run.key, run.options, run.plan, targets)
            else:
                kept = prepare_destination(self.dest, self.mode, run.key, run.options, run.plan, targets)
            try:
                if run.base is not None:
                    append.claim(self.dest, run.key, run.src)
                else:
                    write_run_record(self.dest, run.key, run.src, run.options)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DestinationError(
                        f"{self.dest}: no space left on its device; free some space and rerun"
                        + (" with --resume" if self.mode == "resume" else "")
                    ) from exc
                raise DestinationError(f"{self.dest}: cannot write to DEST: {str(exc).splitlines()[0]}") from exc
        except BaseException:
            self._held.close()
            raise
        return kept

    def on_complete(self, receipts: list[Receipt], *, complete: bool, run_info: dict[str, Any]) -> dict[str, Any]:
        """Commit the shards of `receipts` (in plan order): index.parquet, rejects.jsonl, then the
        manifest; returns the manifest record. `complete=False` records a run that failed its
        reject limit.

        Raises:
            DestinationError: the lock was lost (another run took DEST over); nothing is committed.
        """
        try:
            if self._lock is not None:
                self._lock.check()
            if self.run.base is not None:
                return self._commit_append(receipts, complete=complete, run_info=run_info)
            listing = self.run.listing
            shards = [r.shard for r in receipts]
            lineage = [(self.run.key, sum(shard.count for shard in shards))]
            with IndexWriter(self.dest, [shard.name for shard in shards], lineage) as index:
                _, stats = self._index_shards(index, receipts)
                if not receipts:  # the columns, with no rows
                    rows = listing.index_rows(np.empty(0, np.int64))
                    index.add(None, rows.sources, rows.labels, rows.columns)
            rejects = _rejects(receipts)
            write_rejects(self.dest, rejects)
            record = build_manifest(
                self.run.options,
                listing.run_targets,
                stats,
                shards,
                inputs=len(listing),
                rejected=len(rejects),
                samples_per_shard=self.run.plan.samples_per_shard,
                source=self.run.src,
                key=self.run.key,
                complete=complete,
                run=run_info,
            )
            write_manifest(self.dest, record)
            self.place.remove_temporaries()  # left by workers killed mid-write; their shards were redone
            return record
        finally:
            self._held.close()

    def _index_shards(self, index: IndexWriter, receipts: list[Receipt]) -> tuple[int, list[dict[str, Any]]]:
        """Each receipt's rows into `index`, one shard at a time (the listing answers for one
        shard's positions, never all), and the written samples' count and target stats."""
        listing, plan = self.run.listing, self.run.plan
        written = 0
        stats = listing.stats(np.empty(0, np.int64))
        for receipt in receipts:
            spec = plan.named(receipt.shard.name)
            refused = np.array([r.position for r in receipt.rejects], np.int64)
            positions = spec.positions[~np.isin(spec.positions, refused)]
            rows = listing.index_rows(positions)
            index.add(receipt.shard.name, rows.sources, rows.labels, rows.columns)
            stats = combined_stats(stats, written, listing.stats(positions), len(positions))
            written += len(positions)
        return written, stats

    def _commit_append(self, receipts: list[Receipt], *, complete: bool, run_info: dict[str, Any]) -> dict[str, Any]:
        """The union of the run and the append: index and rejects (the run's rows first), then
        the manifest. An append that failed its reject limit commits nothing: the run stays as
        it was, and the new shards wait for `--resume`. One that ran every shard and wrote no
        sample (all its inputs rejected) is taken back whole: DEST is left as it found it, and
        open to the next append."""
        base = self.run.base
        assert base is not None
        if not complete:
            if len(receipts) == len(self.run.plan) and not any(r.shard.count for r in receipts):
                self._discard_append(receipts)
            return base.record
        listing, options = self.run.listing, self.run.options
        shards = [r.shard for r in receipts]
        old, lineage = open_base_index(self.dest, base)
        lineage.append((self.run.key, base.count + sum(shard.count for shard in shards)))
        with IndexWriter(self.dest, [shard.name for shard in base.shards + shards], lineage) as index:
            copy_rows(old, base.count, index)
            written, added_stats = self._index_shards(index, receipts)
        rejects = _rejects(receipts)
        write_rejects(self.dest, rejects, before=append.base_rejects(self.dest, base))
        stats = append.merged_stats(base, added_stats, written)
        record = build_manifest(
            options,
            listing.run_targets,
            stats,
            base.shards + shards,
            inputs=int(base.record.get("inputs", base.count)) + len(listing),
            rejected=base.rejected + len(rejects),
            samples_per_shard=self.run.plan.samples_per_shard,
            source=str(base.record.get("source")),
            key=self.run.key,
            complete=True,
            run=base.record.get("run", {}),
        )
        record["origin_key"] = base.record.get("origin_key") or base.record.get("run_key")
        record["appended"] = [
            *base.record.get("appended", []),
            {
                "source": self.run.src,
                "listing_key": self.run.inputs,
                "shards": len(shards),
                "count": int(written),
                "inputs": len(listing),
                "rejected": len(rejects),
                "run": run_info,
            },
        ]
        write_manifest(self.dest, record)
        self.place.remove(f"{PARTS}/{append.APPEND_RECORD}")
        self.place.remove_temporaries()
        return record

    def _discard_append(self, receipts: list[Receipt]) -> None:
        """Remove what an append that wrote nothing left: its empty shards, their receipts and
        its claim (last, so a removal cut short is still known as this append's)."""
        for receipt in receipts:
            for name in receipt.shard.files:
                self.place.remove(name)
            self.place.remove(f"{PARTS}/{receipt.shard.name}.json")
        self.place.remove(f"{PARTS}/{append.APPEND_RECORD}")
        self.place.remove_temporaries()
        self.discarded = True

    def on_failed(self) -> None:
        """Give DEST up after a failure; what finished stays for `--resume`."""
        self._held.close()

    def on_abandoned(self) -> None:
        """Give DEST up before any shard task ran (Ray could not start, or the run was stopped
        first): the claim this run made is taken back, so DEST is as it was found and the same
        command fills it again without `--resume`. A claim found there (a run or append cut
        short) stays."""
        try:
            if not self._claimed_before:
                self.place.remove(self._claim)
                if not self.place.names(PARTS):
                    self.place.remove(PARTS)
        finally:
            self._held.close()
        folder = self.place.local_root
        if self._found is None and folder is not None:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # made by this run, and empty again (never removed when not empty)


def _rejects(receipts: list[Receipt]) -> list[Any]:
    """Every reject of `receipts`, in listing order."""
    return sorted((r for receipt in receipts for r in receipt.rejects), key=lambda r: r.position)
