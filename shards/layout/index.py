"""index.parquet: every sample's source, label and extra columns, bound to the run they belong to.

The index is written in place by every commit: an append rewrites it as the union, and
`--overwrite` replaces it with another run's, while readers opened before still hold the
manifest they opened. So the index names the runs whose rows it holds, in its Parquet metadata:
its *lineage*, each commit's run key and sample count, oldest first (a run's rows are the
first `count` rows, and an append's follow its base's). Whoever reads it asks for the rows of
one manifest's run:

- a reader opened before an append still gets its run's rows, and never the appended ones;
- a reader whose run was overwritten is refused with a ManifestError, never handed the new
  run's labels beside the old run's images;
- an append copies its base's rows only, never those of an earlier commit cut before its
  manifest, so `--resume` of a cut commit writes what an uncut one would.

An index written before the lineage existed is taken when its row count is the manifest's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from shards.errors import ManifestError
from shards.io.location import location
from shards.layout.manifest import INDEX, Manifest

if TYPE_CHECKING:  # pyarrow is imported where it is used: a shard task's receipt never needs it
    import pyarrow as pa
    import pyarrow.parquet as pq

#: The Parquet metadata key of the lineage: a JSON list of [run key, sample count], oldest first.
LINEAGE_KEY = b"shards.lineage"

Lineage = list[tuple[str, int]]


def read_lineage(index: pq.ParquetFile) -> Lineage | None:
    """The lineage recorded in an opened index; None for an index written before it existed.

    Raises:
        ManifestError: the lineage is there but malformed.
    """
    raw = (index.schema_arrow.metadata or {}).get(LINEAGE_KEY)
    if raw is None:
        return None
    try:
        return [(str(key), int(count)) for key, count in json.loads(raw)]
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"index.parquet: malformed lineage metadata ({exc})") from None


def run_lineage(dest: str, manifest: Manifest, index: pq.ParquetFile) -> Lineage:
    """The part of `index`'s lineage up to and including `manifest`'s run: what an index of that
    run's rows records (an older index with as many rows as the run: the run alone).

    Raises:
        ManifestError: the index does not hold this run's rows (DEST was overwritten, or its
            index disagrees with its manifest).
    """
    lineage = read_lineage(index)
    own = (str(manifest.record.get("run_key")), manifest.count)
    if lineage is None:
        rows = index.metadata.num_rows
        if rows != manifest.count:
            raise ManifestError(
                f"{dest}: index.parquet holds {rows:,} rows and manifest.json counts {manifest.count:,}; "
                "they disagree (run shards verify)"
            )
        return [own]
    if own not in lineage:
        raise ManifestError(
            f"{dest}: index.parquet belongs to another run than the one opened (DEST was overwritten "
            "or replaced since); open it again"
        )
    return lineage[: lineage.index(own) + 1]


def read_run_index(dest: str, manifest: Manifest, columns: list[str]) -> pa.Table:
    """Columns of the rows of `manifest`'s run in DEST's index.parquet, in run order: the first
    `manifest.count` rows of an index whose lineage holds the run.

    Raises:
        ManifestError: the index is not this run's (see `run_lineage`).
        FileNotFoundError: DEST has no index.parquet.
    """
    index = location(dest).parquet_file(INDEX)
    run_lineage(dest, manifest, index)  # metadata and rows from one open file: never two runs'
    return index.read(columns=columns).slice(0, manifest.count)


class IndexWriter:
    """index.parquet written a shard at a time (pyarrow's ParquetWriter, a row group or more a
    shard), so a commit holds one shard's rows and never the run's. Columns: shard (a dictionary
    of the shards' names), row, source, label (the stored targets), then the extra columns; the
    metadata records `lineage` (see the module's docstring).

    Use as a context manager; the file appears whole when the block succeeds, or not at all.
    """

    def __init__(self, dest: str, shard_names: list[str], lineage: Lineage) -> None:
        import pyarrow as pa

        self.dest = dest
        self._names = pa.array(shard_names, pa.string())
        self._lookup = {name: index for index, name in enumerate(shard_names)}
        self._metadata = {LINEAGE_KEY: json.dumps([list(entry) for entry in lineage]).encode()}
        self._writing = location(dest).writing(INDEX)
        self._handle: Any = None
        self._writer: Any = None
        self._schema: Any = None

    def __enter__(self) -> IndexWriter:
        self._handle = self._writing.__enter__()
        return self

    def add(self, shard: str | None, sources: pa.Array, labels: pa.Array, columns: pa.Table | None = None) -> None:
        """The rows of `shard`, in row order (its samples' sources, labels and extra columns);
        None with no rows gives the file its columns."""
        import pyarrow as pa

        count = len(sources)
        ids = pa.array(np.full(count, self._lookup[shard] if shard is not None else 0, np.int32))
        table = pa.table(
            {
                "shard": pa.DictionaryArray.from_arrays(ids, self._names),
                "row": pa.array(np.arange(count, dtype=np.int32)),
                "source": sources,
                "label": labels,
                **({name: columns.column(name) for name in columns.column_names} if columns is not None else {}),
            }
        )
        self.write(table)

    def write(self, table: pa.Table) -> None:
        """Rows already in index.parquet's columns (an appended run's own), shard as text or a
        dictionary of names among this writer's.

        Raises:
            ManifestError: the rows' columns cannot be stored beside the rows written before.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        names = pc.cast(table.column("shard"), pa.string())
        ids = pc.index_in(names, value_set=self._names).cast(pa.int32())
        table = table.set_column(0, "shard", pa.DictionaryArray.from_arrays(ids.combine_chunks(), self._names))
        if self._writer is None:
            self._schema = table.schema.with_metadata(self._metadata)
            self._writer = pq.ParquetWriter(self._handle, self._schema, compression="zstd")
        try:
            table = table.cast(self._schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ManifestError(f"{self.dest}: rows do not fit index.parquet's columns ({exc})") from None
        self._writer.write_table(table)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writing.__exit__(kind, error, trace)


def open_base_index(dest: str, base: Manifest) -> tuple[pq.ParquetFile, Lineage]:
    """DEST's index.parquet opened for an append onto `base`, and the lineage of `base`'s rows
    in it (what the union's lineage starts with).

    Raises:
        ManifestError: the index is not `base`'s or disagrees with it (the append is refused).
    """
    old = location(dest).parquet_file(INDEX)
    return old, run_lineage(dest, base, old)


def copy_rows(old: pq.ParquetFile, count: int, index: IndexWriter) -> None:
    """The first `count` rows of `old` into `index`, a row group at a time: an append's base,
    without the rows of a commit cut before its manifest."""
    left = count
    for group in range(old.num_row_groups):
        if left <= 0:
            break
        rows = old.read_row_group(group)
        index.write(rows.slice(0, left))
        left -= rows.num_rows
