"""SRC of any kind: refusing it cheaply, telling which kind it is, and listing it.

The driver's side of `shards.sources` (the package re-exports these names): a shard task never
imports it, nor the Arrow listings it builds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from shards.errors import SourceError
from shards.io.http import FetchSettings
from shards.io.source import ObjectSource, SourcePlace, source_place
from shards.sources import arrays, folder, manifest, parquet, tar, urls
from shards.sources.folder import IMAGE_EXTENSIONS, is_image_name
from shards.sources.listing import RunListing
from shards.sources.parts import ListingSpill

Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]
KINDS = "a folder or prefix of images, .tar archives or .parquet files, a .tar, .csv or .parquet file"


def describe_source(src: Any) -> str:
    """SRC as messages and the manifest name it."""
    return arrays.describe(src) if arrays.is_arrays(src) else str(src)


def check_source(src: Any) -> None:
    """Refuse, from a stat alone, a SRC that cannot be listed: a missing local path, a file of
    no known kind, an unknown scheme, a compressed tar. Cheap, so it runs before Ray starts;
    object storage is checked by the listing itself.

    Raises:
        SourceError: the reason, in one line.
    """
    if arrays.is_arrays(src):
        return
    if not isinstance(src, str):
        raise SourceError(f"SRC must be a path, a URI or NumPy arrays, got {type(src).__name__}")
    tar.refuse_compressed(src)
    place = source_place(src)
    if place.remote:
        return
    path = place.uri
    if "{" in path:
        missing = [name for name in tar.expand_pattern(path) if not source_place(name).is_file()]
        if missing:
            raise SourceError(f"{src}: {len(missing)} archive(s) of the pattern do not exist, such as {missing[0]}")
        return
    if place.is_container() or (place.is_file() and _file_kind(path) is not None):
        return
    if os.path.exists(path):
        raise SourceError(f"{src}: SRC must be {KINDS}")
    raise SourceError(f"{src}: no such file or folder")


def indexes_on_cluster(src: Any) -> bool:
    """Whether listing SRC runs Ray tasks (tar archives are indexed in parallel on the cluster)."""
    if not isinstance(src, str):
        return False
    try:
        return _string_kind(source_place(src)) == "tar"
    except SourceError:  # an unknown scheme: check_source refuses it
        return False


def list_sources(
    src: Any,
    *,
    image_column: str | None = None,
    label_columns: Sequence[str] = ("label",),
    extra_columns: Sequence[str] = (),
    exclude: str | None = None,
    mapper: Mapper | None = None,
    url_column: str | None = None,
    fetch: FetchSettings | None = None,
) -> RunListing:
    """List SRC (see the module's kinds).

    Args:
        src: a path or URI, or NumPy arrays (`x` or `(x, y)`).
        image_column: a Parquet/CSV column of image bytes or paths (default `image`, else `path`).
        url_column: a Parquet/CSV column of http(s) URLs (default `url`, when the list has
            neither image bytes nor a `path` column).
        fetch: how the shard tasks fetch a URL list (default `FetchSettings()`).
        label_columns: the target columns (folders: the class folders; arrays: `y`).
        extra_columns: other columns to carry into index.parquet (tables and tar `.json`).
        exclude: a folder never to list (DEST, when it lies inside SRC).
        mapper: runs the archive indexing in parallel (Ray tasks); threads when None.

    Raises:
        SourceError: SRC cannot be listed, or holds no inputs.
    """
    check_source(src)
    columns = _Columns(image_column, tuple(label_columns), tuple(extra_columns), url_column, fetch or FetchSettings())
    listing: RunListing
    if arrays.is_arrays(src):
        listing = arrays.list_arrays(src)
    else:
        listing_errors: tuple[type[BaseException], ...] = (OSError, *_boto_errors())
        try:
            listing = _list_path(source_place(src), columns, exclude, mapper)
        except listing_errors as exc:
            raise SourceError(f"{src}: cannot list ({str(exc).splitlines()[0]})") from exc
    if len(listing) == 0:
        raise SourceError(
            f"{describe_source(src)}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if columns.extras and listing.columns is None:
        raise SourceError(f"{describe_source(src)}: --columns needs a CSV/Parquet list, Parquet or tar SRC")
    if columns.labels != ("label",) and not _names_targets(listing, columns.labels):
        raise SourceError(
            f"{describe_source(src)}: no label column {','.join(columns.labels)!r} (class folders and arrays "
            "name their own labels; --label-column is for CSV/Parquet lists, Parquet and tar)"
        )
    return listing


class _Columns(NamedTuple):
    image: str | None
    labels: tuple[str, ...]
    extras: tuple[str, ...]
    url: str | None
    fetch: FetchSettings


def _names_targets(listing: RunListing, names: tuple[str, ...]) -> bool:
    return tuple(target.name for target in listing.run_targets.items) == names


def _list_path(place: SourcePlace, columns: _Columns, exclude: str | None, mapper: Mapper | None) -> RunListing:
    src = place.uri
    kind = _string_kind(place)
    if kind == "tar":
        archives = tar.archives_in(src)
        if not archives:
            raise SourceError(f"{src}: no .tar archives found")
        return tar.list_tar(archives, mapper, columns.labels, columns.extras)
    if kind == "parquet-folder":
        files = place.files_under(parquet.PARQUET_EXTENSIONS)
        return parquet.list_parquet(files, columns.image or "image", columns.labels, columns.extras)
    if kind in ("csv", "parquet"):
        return _list_table(place, columns)
    if isinstance(place, ObjectSource):
        if not place.is_container():
            raise SourceError(f"{src}: no such prefix, or an object of no known kind ({KINDS})")
        return folder.list_prefix(place)
    return folder.list_folder(src, exclude)


def _list_table(place: SourcePlace, columns: _Columns) -> RunListing:
    """A CSV/Parquet file: image bytes (Parquet), a list of paths, or a list of URLs."""
    path = place.uri
    filesystem, local = place.arrow()
    if _file_kind(path) == "parquet":
        schema = _parquet_schema(local, filesystem, path)
        names = schema.names
        column = columns.image or ("image" if "image" in schema.names else "path")
        if column in schema.names and parquet.holds_image_bytes(schema.field(column).type):
            return parquet.list_parquet([path], column, columns.labels, columns.extras)
    else:
        names = _csv_header(local, filesystem, path)
    if columns.url is not None or (columns.image is None and "path" not in names and urls.URL_COLUMN in names):
        url_column = columns.url or urls.URL_COLUMN
        spill = ListingSpill(path)
        for table in manifest.read_parts(local, (url_column, *columns.labels, *columns.extras), filesystem):
            spill.add(urls.list_urls(path, table, url_column, columns.labels, columns.extras, columns.fetch))
        return spill.finish(keeps_order=False)
    return manifest.list_manifest(
        local,
        path_column=columns.image or "path",
        label_columns=columns.labels,
        extra_columns=columns.extras,
        filesystem=filesystem,
        base=place.base(),
    )


def _csv_header(local: str, filesystem: Any, path: str) -> list[str]:
    """The column names of a CSV list, from its first block alone."""
    import pyarrow.csv as pacsv

    try:
        source = filesystem.open_input_stream(local) if filesystem is not None else local
        with pacsv.open_csv(source) as reader:
            return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read manifest ({str(exc).splitlines()[0]})") from exc


def _parquet_schema(local: str, filesystem: Any, path: str) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(local, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from exc


def _file_kind(path: str) -> str | None:
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(parquet.PARQUET_EXTENSIONS):
        return "parquet"
    if tar.is_tar_name(lowered):
        return "tar"
    return None


def _string_kind(place: SourcePlace) -> str:
    """tar, csv, parquet, parquet-folder, or images (a folder or prefix of them)."""
    if "{" in place.uri:
        return "tar"
    kind = _file_kind(place.uri)
    if kind is not None:
        return kind
    names = place.first_names()
    if any(is_image_name(name) for name in names):
        return "images"
    if any(tar.is_tar_name(name) for name in names):
        return "tar"
    if any(name.lower().endswith(parquet.PARQUET_EXTENSIONS) for name in names):
        return "parquet-folder"
    return "images"


def _boto_errors() -> tuple[type[Exception], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return ()
    return (BotoCoreError, ClientError)
