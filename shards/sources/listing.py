"""What every kind of SRC lists into: a `Listing`, and the `ShardInputs` a shard task reads.

A listing holds one row per input in a deterministic order: the name shown for it (a path, a
URI, `archive.tar#member`, `file.parquet#row`), its targets, the extra columns asked for with
`--columns`, and, where listing already found it
unusable (a tar member with an unsafe name, a file name that is not UTF-8), the reason. How the
bytes are read is the business of the listing's `InputKind`, which hands each shard task just
the part it needs: paths, byte ranges, Parquet rows or a chunk of arrays.

What a run asks of a listing (`RunListing`) is answered for a batch of positions at a time
(`shard_rows`, `index_rows`, `stats`), so a listing held in parts on disk
(`shards.sources.parts.PartedListing`) answers the same questions as one held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa

from shards.io.source import any_remote
from shards.permutation import Permutation
from shards.sources.inputs import Names, ShardInputs
from shards.sources.targets import ListingTargets
from shards.targets import Targets


class InputKind(Protocol):
    """How one kind of SRC is read (held by the driver; only `inputs()` travels to tasks)."""

    @property
    def remote(self) -> bool:
        """Whether the workers need object-storage settings to read the inputs."""
        ...

    def inputs(self, positions: np.ndarray) -> ShardInputs:
        """The inputs at these listing positions, for one shard task."""
        ...


@dataclasses.dataclass(frozen=True)
class ShardRows:
    """What one shard task is handed of its inputs, aligned with its listing positions: each
    input's name, the listing's reason against it (or None), its stored targets, and the reader
    of the inputs without a reason."""

    names: Names
    problems: list[str | None]
    values: np.ndarray
    inputs: ShardInputs


@dataclasses.dataclass(frozen=True)
class IndexRows:
    """index.parquet's columns for some written positions: `source`, `label` and the extra
    columns (`--columns`), or None when the run carries none."""

    sources: pa.Array
    labels: pa.Array
    columns: pa.Table | None


class RunListing(Protocol):
    """What a run needs of a listing, whether held in memory (`Listing`) or in parts on disk."""

    @property
    def keeps_order(self) -> bool: ...

    @property
    def columns(self) -> pa.Table | pa.Schema | None:
        """The extra columns (`--columns`): their values, or (in parts) their names and types."""
        ...

    def __len__(self) -> int: ...

    @property
    def remote(self) -> bool: ...

    @property
    def run_targets(self) -> Targets: ...

    def fingerprint(self) -> str: ...

    def into(self, run: Targets, where: str) -> RunListing:
        """This listing with its targets in a run's terms (`--append`)."""
        ...

    def planned(self, order: Permutation, samples_per_shard: int) -> RunListing:
        """This listing ready to answer for the shards of a plan in `order` (a listing held in
        parts regroups them for a shuffled plan; one in memory answers any positions as it is)."""
        ...

    def shard_rows(self, positions: np.ndarray) -> ShardRows: ...

    def index_rows(self, positions: np.ndarray) -> IndexRows: ...

    def stats(self, positions: np.ndarray) -> list[dict[str, list[float] | list[int]]]: ...


@dataclasses.dataclass(frozen=True)
class Listing:
    """Every input of a run, in a deterministic order.

    Attributes:
        sources: each input's name (Arrow strings, possibly chunked: a manifest's column is kept
            as read, never copied into one block); index.parquet and rejects.jsonl show it.
        targets: each input's targets (class, multi-label or regression; one or several).
        kind: reads the inputs; None for paths and URIs read whole (`sources` are the paths).
        problems: why an input cannot be used, found while listing (null where none), or None.
        keeps_order: shards take consecutive inputs rather than a permutation, so each task
            reads a contiguous part of a container (tar archive, Parquet file, array).
        identity: digests content that `sources` does not name (arrays in memory).
        columns: the extra columns carried into index.parquet (`--columns`), or None.
    """

    sources: pa.Array | pa.ChunkedArray
    targets: ListingTargets
    kind: InputKind | None = None
    problems: pa.Array | pa.ChunkedArray | None = None
    keeps_order: bool = False
    identity: str = ""
    columns: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def classes(self) -> list[str]:
        """The class names of the first class or multi-label target."""
        return self.targets.targets.classes

    @property
    def labels(self) -> np.ndarray:
        """The first target's values: class indices for folders, `.cls` members and class columns
        (Arrow lists for a multi-label target)."""
        return np.asarray(self.targets.columns[0].values)

    def fingerprint(self) -> str:
        """A digest of the sources and targets: cheap for millions of rows, and the same
        whatever the Arrow chunking (string lengths and bytes are digested separately). Extra
        columns are left out: they shape no shard and are written at the commit."""
        digest = hashlib.sha256(_strings_digest(self.sources))
        digest.update(self.targets.digest())
        if self.problems is not None:
            digest.update(_strings_digest(self.problems.fill_null("")))
        if self.keeps_order or self.identity:
            digest.update(f"\0order={self.keeps_order}\0{self.identity}".encode())
        return digest.hexdigest()

    def shard_problems(self, positions: np.ndarray) -> list[str | None]:
        """The listing's reason against each input at `positions` (None where it has none)."""
        if self.problems is None:
            return [None] * len(positions)
        return self.problems.take(positions).to_pylist()

    @property
    def remote(self) -> bool:
        """Whether the workers read object storage."""
        return self.kind.remote if self.kind is not None else any_remote(self.sources)

    @property
    def run_targets(self) -> Targets:
        return self.targets.targets

    def into(self, run: Targets, where: str) -> Listing:
        return dataclasses.replace(self, targets=self.targets.into(run, where))

    def planned(self, order: Permutation, samples_per_shard: int) -> Listing:
        return self

    def select(self, positions: np.ndarray) -> Listing:
        """The listing of the inputs at `positions`, in that order (for kinds that read whole
        inputs by name: paths and URLs; container kinds keep their order and are never cut)."""
        taken = pa.array(positions, pa.int64())
        kind = self.kind.select(positions) if self.kind is not None else None  # type: ignore[attr-defined]
        return dataclasses.replace(
            self,
            sources=self.sources.take(taken),
            targets=self.targets.select(positions),
            kind=kind,
            problems=self.problems.take(taken) if self.problems is not None else None,
            columns=self.columns.take(taken) if self.columns is not None else None,
        )

    @staticmethod
    def concat(listings: Sequence[Listing]) -> Listing:
        """One listing of several with the same targets, one after the other."""
        first = listings[0]
        problems = None
        if any(listing.problems is not None for listing in listings):
            problems = pa.chunked_array(
                [chunk.cast(pa.large_string()) for listing in listings for chunk in _problem_chunks(listing)],
                pa.large_string(),
            )
        kind = first.kind.concat([listing.kind for listing in listings[1:]]) if first.kind is not None else None  # type: ignore[attr-defined]
        return dataclasses.replace(
            first,
            sources=pa.chunked_array([c for listing in listings for c in _chunked(listing.sources)], pa.large_string()),
            targets=ListingTargets.concat([listing.targets for listing in listings]),
            kind=kind,
            problems=problems,
            columns=pa.concat_tables([listing.columns for listing in listings]) if first.columns is not None else None,
        )

    def shard_rows(self, positions: np.ndarray) -> ShardRows:
        names = packed_names(self.sources.take(positions))
        problems = self.shard_problems(positions)
        usable = [problem is None for problem in problems]
        if self.kind is None:  # the names are the paths
            from shards.sources.files import FileInputs

            inputs: ShardInputs = FileInputs(names.select(usable))
        else:
            inputs = self.kind.inputs(positions[usable])
        return ShardRows(names, problems, self.targets.rows(positions), inputs)

    def index_rows(self, positions: np.ndarray) -> IndexRows:
        taken = pa.array(positions, pa.int64())
        columns = self.columns
        return IndexRows(
            self.sources.take(taken),
            self.targets.index_column(positions),
            pa.table({name: columns.column(name).take(taken) for name in columns.column_names}) if columns else None,
        )

    def stats(self, positions: np.ndarray) -> list[dict[str, list[float] | list[int]]]:
        return self.targets.stats(positions)


def packed_names(strings: pa.Array | pa.ChunkedArray) -> Names:
    """Arrow strings as `Names`, straight from their buffers (no Python string a name)."""
    array = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    array = array.cast(pa.large_string())
    if not len(array):
        return Names(b"", np.empty(0, np.int64))
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64)[array.offset : array.offset + len(array) + 1]
    data = bytes(memoryview(data_buffer)[offsets[0] : offsets[-1]]) if data_buffer is not None else b""
    return Names(data, offsets[1:] - offsets[0])


def _problem_chunks(listing: Listing) -> list[pa.Array]:
    if listing.problems is None:
        return [pa.nulls(len(listing), pa.large_string())]
    return _chunked(listing.problems)


def _chunked(values: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(values.chunks) if isinstance(values, pa.ChunkedArray) else [values]


def _strings_digest(strings: pa.Array | pa.ChunkedArray) -> bytes:
    lengths, data = hashlib.sha256(), hashlib.sha256()
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string())
        _, offsets_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        lengths.update(np.diff(offsets).tobytes())
        if data_buffer is not None:
            data.update(memoryview(data_buffer)[offsets[0] : offsets[-1]])
    return lengths.digest() + data.digest()


def containers_of(containers: list[str], index: np.ndarray, positions: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The containers (archives, Parquet files) the inputs at `positions` live in, and each
    input's index into that short list: what one shard task needs, not the whole listing's."""
    used = np.unique(index[positions])
    return [containers[i] for i in used.tolist()], np.searchsorted(used, index[positions]).astype(np.int32)


def display_name(raw: str | bytes) -> str:
    """A name that Arrow and JSON can hold: bytes or surrogate-escaped text that is not UTF-8
    shows its odd bytes as \\xNN escapes."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    return data.decode("utf-8", "backslashreplace")


def strings(values: Sequence[str | None]) -> pa.Array:
    """Arrow large strings (the listing's type for names and problems)."""
    return pa.array(values, pa.large_string())


def with_problems(problems: pa.Array | pa.ChunkedArray | None, more: pa.Array | None) -> pa.Array | None:
    """Two columns of reasons against inputs as one (the first reason wins); None when empty."""
    if more is None:
        return problems
    if problems is None:
        return more
    import pyarrow.compute as pc

    if isinstance(problems, pa.ChunkedArray):
        problems = problems.combine_chunks()
    return pc.coalesce(problems.cast(pa.large_string()), more)
