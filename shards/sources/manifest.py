"""CSV or Parquet lists of image paths: a path column (relative paths are taken from the list's
own folder or prefix), optional label columns and extra columns (`--columns`)."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import SourceError
from shards.sources.listing import Listing
from shards.sources.targets import ListingTargets, targets_from_columns

MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")


def read_table(path: str, columns: tuple[str, ...], filesystem: Any = None) -> pa.Table:
    """The wanted columns of a CSV or Parquet list (those it has; the first is read as text)."""
    try:
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pacsv

            source = filesystem.open_input_stream(path) if filesystem is not None else path
            return pacsv.read_csv(
                source, convert_options=pacsv.ConvertOptions(column_types={columns[0]: pa.large_string()})
            )
        import pyarrow.parquet as pq

        names = pq.read_schema(path, filesystem=filesystem).names
        return pq.read_table(path, columns=[c for c in names if c in columns], filesystem=filesystem)
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
) -> Listing:
    """List a CSV/Parquet manifest of paths; `base` is the folder relative paths start from.

    Raises:
        SourceError: no path column, an extra column it does not have, or bad targets.
    """
    table = read_table(path, (path_column, *label_columns, *extra_columns), filesystem)
    if path_column not in table.column_names:
        raise SourceError(f"{path}: manifest needs a {path_column!r} column, found {table.column_names}")
    column = table.column(path_column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SourceError(f"{path}: {path_column!r} must hold paths (strings), found {column.type}")
    sources = column.cast(pa.large_string())  # shares the bytes; chunks kept as read
    if sources.null_count:
        raise SourceError(f"{path}: {path_column!r} is empty in {sources.null_count} row(s)")
    is_relative = pc.invert(pc.or_(pc.starts_with(sources, "/"), pc.match_substring(sources, "://")))
    if pc.any(is_relative).as_py():
        folder = base if base is not None else os.path.dirname(os.path.abspath(path))
        joined = pc.binary_join_element_wise(
            pa.scalar(folder, pa.large_string()), sources, pa.scalar("/", pa.large_string())
        )
        sources = pc.if_else(is_relative, joined, sources)
    del is_relative
    missing = [name for name in extra_columns if name not in table.column_names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (--columns); it has {table.column_names}")
    columns = table.select(list(extra_columns)) if extra_columns else None
    present = [name for name in label_columns if name in table.column_names]
    if not present:
        return Listing(sources, ListingTargets.unlabeled(len(sources)), columns=columns)
    if len(present) < len(label_columns):
        absent = next(name for name in label_columns if name not in present)
        raise SourceError(f"{path}: no label column {absent!r}; it has {table.column_names}")
    targets, missing_values = targets_from_columns(path, [(name, table.column(name)) for name in label_columns])
    return Listing(sources, targets, problems=missing_values, columns=columns)
