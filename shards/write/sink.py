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
from typing import Any

import numpy as np

from shards.errors import DestinationError
from shards.io.dest_lock import DestLock, hold_dest
from shards.io.location import location
from shards.layout.manifest import Receipt, build_manifest, write_index, write_manifest, write_rejects, write_run_record
from shards.layout.plan import ShardPlan
from shards.options import PreprocessOptions
from shards.sources import Listing
from shards.write.destination import prepare_destination


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What a run is: its source, the options that shape its bytes, its key and plan."""

    src: str
    listing: Listing
    options: PreprocessOptions
    key: str
    plan: ShardPlan


class DestinationSink:
    """Writes one run into DEST (a folder or an object-storage prefix)."""

    def __init__(self, dest: str, run: RunIdentity, *, mode: str) -> None:
        self.place = location(dest)
        self.dest = self.place.root
        self.run = run
        self.mode = mode
        self._held = contextlib.ExitStack()
        self._lock: DestLock | None = None

    def on_start(self) -> dict[str, Receipt]:
        """Lock and claim DEST; return the receipts of the shards a resume keeps.

        Raises:
            DestinationError: another run holds DEST, or DEST cannot receive this run.
        """
        self._lock = self._held.enter_context(hold_dest(self.dest))
        try:
            kept = prepare_destination(
                self.dest, self.mode, self.run.key, self.run.options, self.run.plan, self.run.listing.targets.targets
            )
            try:
                write_run_record(self.dest, self.run.key, self.run.src, self.run.options)
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
            listing, plan = self.run.listing, self.run.plan
            specs = {spec.name: spec for spec in plan}
            positions = []
            for receipt in receipts:
                refused = np.array([r.position for r in receipt.rejects], np.int64)
                spec_positions = specs[receipt.shard.name].positions
                positions.append(spec_positions[~np.isin(spec_positions, refused)])
            rejects = sorted((r for receipt in receipts for r in receipt.rejects), key=lambda r: r.position)
            shards = [r.shard for r in receipts]
            written = np.concatenate(positions) if positions else np.empty(0, np.int64)
            labels = listing.targets.index_column(written)
            write_index(self.dest, shards, positions, listing.sources, labels, listing.columns)
            write_rejects(self.dest, rejects)
            record = build_manifest(
                self.run.options,
                listing.targets.targets,
                listing.targets.stats(written),
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

    def on_failed(self) -> None:
        """Give DEST up after a failure; what finished stays for `--resume`."""
        self._held.close()
