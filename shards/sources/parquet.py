"""Parquet files whose image column holds the encoded bytes: binary, or struct<bytes, path> as
Hugging Face `datasets` writes it. How most published image datasets are stored.

Listing reads only the files' footers and the label column, never the images. Shards take
consecutive rows (the listing keeps its order), so each task reads the image column of a few
row groups once, rather than every row group for a few scattered rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import DecodeError, SourceError
from shards.io.source import any_remote, source_place, too_large
from shards.sources.inputs import Input
from shards.sources.listing import Listing, containers_of
from shards.sources.parts import ListingSpill, PartedListing
from shards.sources.targets import ListingTargets, targets_from_columns

PARQUET_EXTENSIONS = (".parquet", ".pq")
BATCH_ROWS = 64  # rows decoded from the image column at a time


def holds_image_bytes(column_type: pa.DataType) -> bool:
    """Binary, or a struct with a binary `bytes` field."""
    if pa.types.is_struct(column_type):
        index = column_type.get_field_index("bytes")
        return index >= 0 and holds_image_bytes(column_type.field(index).type)
    return pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)


def open_parquet(path: str) -> Any:
    """A `pyarrow.parquet.ParquetFile` on a local path or an object-storage URI."""
    import pyarrow.parquet as pq

    filesystem, key = source_place(path).arrow()
    return pq.ParquetFile(filesystem.open_input_file(key) if filesystem is not None else key)


def list_parquet(
    files: Sequence[str],
    image_column: str,
    label_columns: Sequence[str] = ("label",),
    extra_columns: Sequence[str] = (),
) -> PartedListing:
    """List the rows of Parquet files with image bytes in `image_column`, in file then row order,
    a part per file spilled to local disk.

    Listing reads the footers, the label columns and the extra columns, never the images.
    """
    spill = ListingSpill(files[0])
    unlabeled = []
    for path in files:
        try:
            part, has_labels = _file_listing(path, image_column, label_columns, extra_columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from exc
        if not has_labels:
            unlabeled.append(path)
        spill.add(part)
    if unlabeled and len(unlabeled) < len(files):
        raise SourceError(f"{unlabeled[0]}: no {label_columns[0]!r} column, unlike other files of SRC")
    return spill.finish(keeps_order=True)


def _file_listing(
    path: str, image_column: str, label_columns: Sequence[str], extra_columns: Sequence[str]
) -> tuple[Listing, bool]:
    """One file's rows as a listing of their own, and whether it has the label columns."""
    parquet = open_parquet(path)
    schema = parquet.schema_arrow
    count = parquet.metadata.num_rows
    if image_column not in schema.names or not holds_image_bytes(schema.field(image_column).type):
        found = schema.field(image_column).type if image_column in schema.names else "no such column"
        raise SourceError(f"{path}: {image_column!r} must hold encoded image bytes, found {found}")
    missing = [name for name in extra_columns if name not in schema.names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (--columns); it has {schema.names}")
    present = [name for name in label_columns if name in schema.names]
    if present and len(present) < len(label_columns):
        absent = next(name for name in label_columns if name not in present)
        raise SourceError(f"{path}: no label column {absent!r}; it has {schema.names}")
    table = parquet.read(columns=[*present, *extra_columns])
    row_numbers = np.arange(count, dtype=np.int64)
    sources = pc.binary_join_element_wise(
        pa.scalar(f"{path}#", pa.large_string()),
        pc.cast(pa.array(row_numbers), pa.large_string()),
        pa.scalar("", pa.large_string()),
    )
    kind = ParquetKind([path], np.zeros(count, np.int32), row_numbers, image_column)
    extras = table.select(list(extra_columns)) if extra_columns else None
    if not present:
        return Listing(sources, ListingTargets.unlabeled(count), kind=kind, keeps_order=True, columns=extras), False
    targets, unusable = targets_from_columns(path, [(name, table.column(name)) for name in label_columns])
    return Listing(sources, targets, kind=kind, problems=unusable, keeps_order=True, columns=extras), True


@dataclasses.dataclass(frozen=True)
class ParquetKind:
    """Where each listed row lives: a file and a row number within it."""

    files: list[str]
    file_index: np.ndarray
    rows: np.ndarray
    column: str

    @property
    def remote(self) -> bool:
        return any_remote(self.files)

    def inputs(self, positions: np.ndarray) -> ParquetInputs:
        files, file_index = containers_of(self.files, self.file_index, positions)
        return ParquetInputs(files, file_index, self.rows[positions], self.column)


@dataclasses.dataclass(frozen=True)
class ParquetInputs:
    """One shard's rows, streamed from the row groups that hold them (image column only), a
    batch of BATCH_ROWS at a time: memory stays bounded however large the row groups are."""

    files: list[str]
    file_index: np.ndarray
    rows: np.ndarray
    column: str

    def read(self, max_bytes: int) -> Iterator[Input]:
        boundaries = np.flatnonzero(np.diff(self.file_index)) + 1
        for rows, file_index in zip(np.split(self.rows, boundaries), np.split(self.file_index, boundaries)):
            if len(rows):
                yield from self._read_file(self.files[int(file_index[0])], rows, max_bytes)

    def _read_file(self, path: str, rows: np.ndarray, max_bytes: int) -> Iterator[Input]:
        done = 0
        try:
            parquet = open_parquet(path)
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            starts = np.cumsum([0, *sizes])
            groups = np.unique(np.searchsorted(starts, rows, side="right") - 1).tolist()
            streamed = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])
            wanted = np.searchsorted(streamed, rows)  # each row's place in the stream
            position = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=[self.column]):
                values = _image_bytes(batch.column(0))
                end = position + batch.num_rows
                while done < len(rows) and wanted[done] < end:
                    yield _row_bytes(values, int(wanted[done]) - position, max_bytes)
                    done += 1
                position = end
                if done == len(rows):
                    return
        except (pa.ArrowInvalid, OSError) as exc:
            reason = f"cannot read Parquet row ({str(exc).splitlines()[0]})"
            yield from (DecodeError(reason) for _ in range(done, len(rows)))
            return
        yield from (DecodeError("row not found in the Parquet file") for _ in range(done, len(rows)))


def _image_bytes(array: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """The bytes of each row, and the struct's `path` field where there is one."""
    if pa.types.is_struct(array.type):
        has_path = array.type.get_field_index("path") >= 0
        return pc.struct_field(array, "bytes"), pc.struct_field(array, "path") if has_path else None
    return array, None


def _row_bytes(values: tuple[pa.Array, pa.Array | None], index: int, max_bytes: int) -> Input:
    data, paths = values
    value = data[index]
    if not value.is_valid:
        path = paths[index].as_py() if paths is not None else None
        if path:  # `datasets` keeps local files by path until the bytes are embedded (push_to_hub)
            return DecodeError(f"no image bytes (null; the row names the file {path!r}: embed the bytes)")
        return DecodeError("no image bytes (null)")
    buffer = value.as_buffer()
    if buffer.size > max_bytes:
        return DecodeError(too_large(buffer.size, max_bytes))
    return buffer.to_pybytes()
