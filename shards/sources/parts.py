"""A listing held in parts on local disk, so the driver's memory does not grow with SRC.

A source that lists in pieces (tar archives, one index at a time) hands each piece over as a
`Listing` of its own inputs. `ListingSpill` pickles each part to one anonymous temporary file
(in TMPDIR) as it comes, and the driver keeps only where each part lies and how many inputs it
holds: a few dozen bytes a part, nothing a sample. `PartedListing` then answers a run's
questions (`RunListing`) for a batch of positions at a time, loading the one or two parts the
batch falls in. Shards of a container source take consecutive inputs, so a run loads each part
about once to plan its tasks and once more to commit the index.

Each part's targets were found from its own inputs; the listing's are the merge of them all
(`merged_targets`), and a part's class numbers are put in the listing's terms when it is loaded.

A shuffled plan (folders, path and URL lists) puts inputs from all over the listing into each
shard. `PartedListing.planned` regroups the parts into buckets of consecutive plan places (a few
shards each, BUCKET_ROWS inputs at most), so a shard's task is built from one bucket: an
external shuffle in two passes over local disk that holds 32 x sqrt(N) inputs at once (16,384
at least; ~1M at a billion) and writes N / 1,024 pieces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa

from shards.errors import SourceError
from shards.io.scratch import spilling
from shards.permutation import Permutation
from shards.sources.inputs import ChainedInputs, Names
from shards.sources.listing import IndexRows, Listing, ShardRows
from shards.sources.targets import ListingTargets, TargetColumn, merged_targets
from shards.targets import Targets, combined_stats

LOADED_PARTS = 2  # parts kept loaded: a shard that spans an archive boundary needs two
PART_ROWS = 16_384  # inputs a part holds, where a source cuts its own parts (folders, lists)
BUCKET_ROWS = 16_384  # inputs of a planned listing's bucket (at least one shard's)
REGROUP_ROWS = 16_384  # the least inputs a regroup holds at once (see _PlannedListing)
REGROUP_GROWTH = 32  # ... and its budget a square root of the listing's inputs


def regroup_budget(count: int) -> int:
    """Inputs a shuffled plan's regroup holds at once for a listing of `count`."""
    return max(REGROUP_ROWS, int(REGROUP_GROWTH * math.isqrt(count)))


class ListingSpill:
    """Collects a listing's parts, in listing order, into one temporary file."""

    def __init__(self, where: str) -> None:
        self.where = where
        with spilling():
            self._file: IO[bytes] = tempfile.TemporaryFile(prefix="shards-listing-")
        self._bounds: list[tuple[int, int]] = []  # each part's (byte offset, byte length)
        self._counts: list[int] = []
        self._targets: Targets | None = None  # the parts' so far, merged
        self._fingerprints = hashlib.sha256()
        self._remote = False
        self._column_types: dict[str, pa.DataType] = {}

    def add(self, part: Listing) -> None:
        """Spill one part (the driver lets go of it on return)."""
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        with spilling():
            self._bounds.append((self._file.tell(), len(data)))
            self._file.write(data)
        self._counts.append(len(part))
        # Merged as they come: a part's class names are not kept (a list of 100M paths in 6,100
        # parts of 1,024 classes each held 370 MB of names).
        ours = part.targets.targets
        self._targets = ours if self._targets is None else merged_targets(self.where, [self._targets, ours])
        self._fingerprints.update(part.fingerprint().encode())
        self._remote = self._remote or part.remote
        for field in part.columns.schema if part.columns is not None else ():
            known = self._column_types.get(field.name)
            if known is None or pa.types.is_null(known):  # the first part with a value types it
                self._column_types[field.name] = field.type
            elif not pa.types.is_null(field.type) and field.type != known:
                raise SourceError(
                    f"{self.where}: column {field.name!r} holds {known} in one part of SRC and {field.type} in another"
                )

    def add_cut(self, listing: Listing) -> None:
        """Spill a listing as parts of PART_ROWS inputs (none when it is empty)."""
        for begin in range(0, len(listing), PART_ROWS):
            self.add(listing.select(np.arange(begin, min(begin + PART_ROWS, len(listing)))))

    def finish(self, *, keeps_order: bool) -> PartedListing:
        """The listing of every part added, in order."""
        with spilling():
            self._file.flush()
        targets = self._targets if self._targets is not None else ListingTargets.unlabeled(0).targets
        self._fingerprints.update(json.dumps(targets.to_json()).encode())
        return PartedListing(
            self.where,
            self._file,
            np.array(self._bounds, np.int64).reshape(-1, 2),
            np.concatenate([[0], np.cumsum(self._counts, dtype=np.int64)]),
            targets,
            self._fingerprints.hexdigest(),
            keeps_order=keeps_order,
            remote_inputs=self._remote,
            column_types=dict(self._column_types) if self._column_types else None,
        )


class PartedListing:
    """A listing whose parts live in a temporary file (see the module); a `RunListing`."""

    def __init__(
        self,
        where: str,
        spill: IO[bytes],
        bounds: np.ndarray,
        starts: np.ndarray,
        targets: Targets,
        digest: str,
        *,
        keeps_order: bool,
        remote_inputs: bool,
        column_types: dict[str, pa.DataType] | None,
    ) -> None:
        self.where, self._spill, self._bounds, self._starts = where, spill, bounds, starts
        self._targets, self._digest = targets, digest
        self.keeps_order, self._remote = keeps_order, remote_inputs
        self._column_schema = pa.schema(list(column_types.items())) if column_types else None
        self._loaded: dict[int, Listing] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def parts(self) -> int:
        return len(self._bounds)

    @property
    def remote(self) -> bool:
        return self._remote

    @property
    def run_targets(self) -> Targets:
        return self._targets

    @property
    def classes(self) -> list[str]:
        return self._targets.classes

    @property
    def columns(self) -> pa.Schema | None:
        """The extra columns' names and types (`--columns`), or None."""
        return self._column_schema

    def fingerprint(self) -> str:
        return self._digest

    def into(self, run: Targets, where: str) -> PartedListing:
        """The listing in a run's terms (`--append`): the merged targets checked and extended
        as `ListingTargets.into` does, each part renumbered into them when loaded."""
        extended = _empty_targets(self._targets).into(run, where).targets
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__, _targets=extended, _loaded={})
        return other

    def part(self, index: int) -> Listing:
        """Part `index`, its targets in the listing's terms."""
        offset, length = (int(v) for v in self._bounds[index])
        self._spill.seek(offset)
        loaded: Listing = pickle.loads(self._spill.read(length))
        return dataclasses.replace(loaded, targets=loaded.targets.into(self._targets, self.where))

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which loadable unit holds each position, and its row there (parts, here)."""
        owner = np.searchsorted(self._starts, positions, side="right") - 1
        return owner, positions - self._starts[owner]

    def _unit(self, index: int) -> Listing:
        """Loadable unit `index`, from the few kept loaded."""
        unit = self._loaded.get(index)
        if unit is None:
            if len(self._loaded) >= LOADED_PARTS:
                self._loaded.pop(next(iter(self._loaded)))
            unit = self._loaded[index] = self._load(index)
        return unit

    def _load(self, index: int) -> Listing:
        return self.part(index)

    def _runs(self, positions: np.ndarray) -> Iterator[tuple[Listing, np.ndarray]]:
        """`positions` as runs held by one unit each, in order: (unit, rows within it)."""
        positions = np.asarray(positions, np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)})")
        owner, local = self._locate(positions)
        cuts = np.flatnonzero(np.diff(owner)) + 1
        for run in np.split(np.arange(len(positions)), cuts):
            if len(run):
                yield self._unit(int(owner[run[0]])), local[run]

    def planned(self, order: Permutation, samples_per_shard: int) -> PartedListing:
        """This listing regrouped for a shuffled plan whose order is `order`: buckets of
        consecutive plan places (whole shards, BUCKET_ROWS inputs or one shard), spilled in
        plan order by an external shuffle (`_PlannedListing`). Positions mean what they meant;
        a shard's inputs now come from one bucket instead of every part."""
        if self.keeps_order or not order.shuffle:
            return self
        rows = samples_per_shard * max(1, BUCKET_ROWS // samples_per_shard)
        return _PlannedListing(self, order, rows)

    def shard_rows(self, positions: np.ndarray) -> ShardRows:
        pieces = [part.shard_rows(local) for part, local in self._runs(positions)]
        if len(pieces) == 1:
            return pieces[0]
        values = np.concatenate([piece.values for piece in pieces]) if pieces else self._targets.empty(0)
        return ShardRows(
            Names.concat([piece.names for piece in pieces]),
            [problem for piece in pieces for problem in piece.problems],
            values,
            ChainedInputs(tuple(piece.inputs for piece in pieces)),
        )

    def index_rows(self, positions: np.ndarray) -> IndexRows:
        pieces = [part.index_rows(local) for part, local in self._runs(positions)]
        if not pieces:
            empty = self.part(0).index_rows(np.empty(0, np.int64))
            pieces = [empty]
        columns = None
        if self._column_schema is not None:
            columns = pa.concat_tables([_typed(piece.columns, self._column_schema, self.where) for piece in pieces])
        return IndexRows(
            pa.concat_arrays([_combined(piece.sources) for piece in pieces]),
            pa.concat_arrays([_combined(piece.labels) for piece in pieces]),
            columns,
        )

    def stats(self, positions: np.ndarray) -> list[dict[str, Any]]:
        merged: list[dict[str, Any]] | None = None
        count = 0
        for part, local in self._runs(positions):
            stats = part.stats(local)
            merged = stats if merged is None else combined_stats(merged, count, stats, len(local))
            count += len(local)
        return merged if merged is not None else self.part(0).stats(np.empty(0, np.int64))


def _combined(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _typed(table: pa.Table | None, schema: pa.Schema, where: str) -> pa.Table:
    """A part's extra columns in the listing's types (a part that holds no value of a column
    lists it as nulls)."""
    if table is None:
        raise SourceError(f"{where}: a part of SRC carries no extra columns")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
        raise SourceError(f"{where}: an extra column holds different types in different parts ({exc})") from None


def _empty_targets(targets: Targets) -> ListingTargets:
    """`targets` over no inputs: for checking and extending them (`into`) without values."""
    columns = []
    for target in targets.items:
        if target.kind == "multilabel":
            values: Any = pa.array([], pa.list_(pa.int32()))
        elif target.kind == "regression":
            values = np.empty((0, target.width) if target.width else 0, np.float32)
        else:
            values = np.empty(0, np.int32)
        columns.append(TargetColumn(target, values))
    return ListingTargets(tuple(columns))


class _PlannedListing(PartedListing):
    """A `PartedListing` whose units are buckets of plan places (see `PartedListing.planned`).

    The regroup is an external shuffle in two passes over local disk. Scatter: the parts are
    read in order and gathered `budget` inputs at a time; each gathering is cut into one piece
    per group of buckets (`budget` consecutive plan places) and spilled. Gather: each group's
    pieces are read back, put in plan order and spilled again a bucket at a time, so a bucket
    is one read. One pass that spilled a piece per bucket at every gathering wrote (N / 32,768)
    x (N / bucket) pieces: 140,000 of ~70 inputs for 10M paths (1.6 GB, 23 s), 14M at 100M.
    Here there are (N / budget)^2 pieces, and with a budget of 32 x sqrt(N) inputs (16,384 at
    least) that is N / 1,024 of ~1,024 inputs each: a budget of ~1M inputs at a billion.
    """

    def __init__(self, listing: PartedListing, order: Permutation, rows: int) -> None:
        self.__dict__.update(listing.__dict__, _loaded={})
        self._order, self._rows = order, rows
        budget = rows * max(1, -(-regroup_budget(len(listing)) // rows))  # whole buckets a group
        with spilling():
            self._buckets = tempfile.TemporaryFile(prefix="shards-plan-")
            with tempfile.TemporaryFile(prefix="shards-scatter-") as scattered:
                pieces = self._scatter(listing, budget, scattered)
                self._bucket_bounds = self._gather(pieces, budget, scattered)

    def _scatter(self, listing: PartedListing, budget: int, into: IO[bytes]) -> np.ndarray:
        """Spill the parts as pieces of one group each: rows (group, byte offset, byte length)."""
        written: list[tuple[int, int, int]] = []
        held: list[tuple[np.ndarray, Listing]] = []
        count = 0
        for index in range(listing.parts):
            part = listing.part(index)
            begin = int(listing._starts[index])
            held.append((self._order.inverse(np.arange(begin, begin + len(part), dtype=np.int64)), part))
            count += len(part)
            if count >= budget or index == listing.parts - 1:
                places = np.concatenate([places for places, _ in held])
                gathered = Listing.concat([part for _, part in held]) if len(held) > 1 else held[0][1]
                held, count = [], 0
                groups = places // budget
                by_group = np.argsort(groups, kind="stable")
                found, firsts = np.unique(groups[by_group], return_index=True)
                for group, members in zip(found.tolist(), np.split(by_group, firsts[1:])):
                    data = pickle.dumps((places[members], gathered.select(members)), protocol=pickle.HIGHEST_PROTOCOL)
                    written.append((group, into.tell(), len(data)))
                    into.write(data)
        table = np.array(written, np.int64).reshape(-1, 3)
        return table[np.argsort(table[:, 0], kind="stable")]

    def _gather(self, pieces: np.ndarray, budget: int, scattered: IO[bytes]) -> np.ndarray:
        """Each group's pieces in plan order, spilled a bucket at a time: each bucket's (byte
        offset, byte length) in `self._buckets`."""
        bounds = np.zeros((-(-len(self) // self._rows), 2), np.int64)
        starts = np.searchsorted(pieces[:, 0], np.arange(-(-len(self) // budget) + 1))
        for group in range(len(starts) - 1):
            places, held = [], []
            for _, offset, length in pieces[starts[group] : starts[group + 1]].tolist():
                scattered.seek(offset)
                piece_places, piece = pickle.loads(scattered.read(length))
                places.append(piece_places)
                held.append(piece)
            joined = Listing.concat(held) if len(held) > 1 else held[0]
            in_order = joined.select(np.argsort(np.concatenate(places), kind="stable"))
            del joined, held
            first_bucket = group * budget // self._rows
            for begin in range(0, len(in_order), self._rows):
                bucket = in_order.select(np.arange(begin, min(begin + self._rows, len(in_order))))
                data = pickle.dumps(bucket, protocol=pickle.HIGHEST_PROTOCOL)
                bounds[first_bucket + begin // self._rows] = (self._buckets.tell(), len(data))
                self._buckets.write(data)
        return bounds

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        places = self._order.inverse(positions)
        return places // self._rows, places % self._rows

    def _load(self, index: int) -> Listing:
        """Bucket `index`, in plan order (row r is place index * rows + r)."""
        offset, length = (int(v) for v in self._bucket_bounds[index])
        self._buckets.seek(offset)
        bucket: Listing = pickle.loads(self._buckets.read(length))
        return bucket

    def planned(self, order: Permutation, samples_per_shard: int) -> PartedListing:
        return self
