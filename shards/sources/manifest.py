"""CSV or Parquet lists of image paths: a path column (relative paths are taken from the list's
own folder or prefix), optional label columns and extra columns (`--columns`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import SourceError
from shards.sources.listing import InputKind, Listing
from shards.sources.parts import PART_ROWS, ListingSpill, PartedListing
from shards.sources.targets import ListingTargets, targets_from_columns

MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
CSV_BLOCK_BYTES = 16 * 2**20  # a CSV's column types are inferred from its first block


def read_parts(path: str, columns: tuple[str, ...], filesystem: Any = None) -> Iterator[pa.Table]:
    """The wanted columns of a CSV or Parquet list (those it has; the first is read as text), a
    part of at most PART_ROWS rows at a time: a list of a billion rows is never held whole.

    Raises:
        SourceError: the list cannot be read (also when a later block of a CSV holds another
            type than its first block: give such a column one type, or convert it to Parquet).
    """
    try:
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pacsv

            source = filesystem.open_input_stream(path) if filesystem is not None else path
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(column_types={columns[0]: pa.large_string()}),
            )
            batches: Iterator[pa.RecordBatch] = iter(reader)
            schema = reader.schema
        else:
            import pyarrow.parquet as pq

            opened = pq.ParquetFile(path, filesystem=filesystem)
            wanted = [c for c in opened.schema_arrow.names if c in columns]
            schema = opened.schema_arrow
            schema = pa.schema([schema.field(c) for c in wanted])
            batches = opened.iter_batches(batch_size=PART_ROWS, columns=wanted)
        for batch in batches:
            for begin in range(0, batch.num_rows, PART_ROWS):
                yield pa.Table.from_batches([batch.slice(begin, PART_ROWS)], schema)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read manifest ({str(exc).splitlines()[0]})") from exc


def list_manifest(
    path: str,
    *,
    path_column: str = "path",
    label_columns: tuple[str, ...] = ("label",),
    extra_columns: tuple[str, ...] = (),
    filesystem: Any = None,
    base: str | None = None,
) -> PartedListing:
    """List a CSV/Parquet manifest of paths; `base` is the folder relative paths start from.

    Raises:
        SourceError: no path column, an extra column it does not have, or bad targets.
    """
    spill = ListingSpill(path)
    for table in read_parts(path, (path_column, *label_columns, *extra_columns), filesystem):
        spill.add(_paths_part(path, table, path_column, label_columns, extra_columns, base))
    return spill.finish(keeps_order=False)


def _paths_part(
    path: str,
    table: pa.Table,
    path_column: str,
    label_columns: tuple[str, ...],
    extra_columns: tuple[str, ...],
    base: str | None,
) -> Listing:
    if path_column not in table.column_names:
        raise SourceError(f"{path}: manifest needs a {path_column!r} column, found {table.column_names}")
    sources = text_column(path, table, path_column, "paths")
    is_relative = pc.invert(pc.or_(pc.starts_with(sources, "/"), pc.match_substring(sources, "://")))
    if pc.any(is_relative).as_py():
        folder = base if base is not None else os.path.dirname(os.path.abspath(path))
        joined = pc.binary_join_element_wise(
            pa.scalar(folder, pa.large_string()), sources, pa.scalar("/", pa.large_string())
        )
        sources = pc.if_else(is_relative, joined, sources)
    del is_relative
    return listing_of(path, table, sources, label_columns, extra_columns)


def text_column(path: str, table: pa.Table, name: str, holds: str) -> pa.ChunkedArray:
    """Column `name` of a list as large strings (sharing the bytes, chunks kept as read).

    Raises:
        SourceError: it holds something else than text, or is empty in some rows.
    """
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SourceError(f"{path}: {name!r} must hold {holds} (strings), found {column.type}")
    values = column.cast(pa.large_string())
    if values.null_count:
        raise SourceError(f"{path}: {name!r} is empty in {values.null_count} row(s)")
    return values


def listing_of(
    path: str,
    table: pa.Table,
    sources: pa.ChunkedArray,
    label_columns: tuple[str, ...],
    extra_columns: tuple[str, ...],
    kind: InputKind | None = None,
) -> Listing:
    """The listing of a list's rows: `sources` (read by `kind`), the targets of its label
    columns (unlabeled when it has none of them) and its extra columns.

    Raises:
        SourceError: an extra or label column it lacks, or bad targets.
    """
    missing = [name for name in extra_columns if name not in table.column_names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (--columns); it has {table.column_names}")
    columns = table.select(list(extra_columns)) if extra_columns else None
    present = [name for name in label_columns if name in table.column_names]
    if not present:
        return Listing(sources, ListingTargets.unlabeled(len(sources)), kind=kind, columns=columns)
    if len(present) < len(label_columns):
        absent = next(name for name in label_columns if name not in present)
        raise SourceError(f"{path}: no label column {absent!r}; it has {table.column_names}")
    targets, missing_values = targets_from_columns(path, [(name, table.column(name)) for name in label_columns])
    return Listing(sources, targets, kind=kind, problems=missing_values, columns=columns)
