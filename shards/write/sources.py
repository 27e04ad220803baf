"""Listing SRC into (source, label) rows.

SRC is a folder of class folders (sorted names are the classes), a flat folder (no labels), or a
CSV/Parquet manifest with a `path` column and an optional `label` column. The listing is kept as
Arrow arrays, so ten million paths cost their bytes and not ten million Python objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import DecodeError, SourceError
from shards.io import storage

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
UNLABELED = -1
_CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class Listing:
    """Every input of a run, in a deterministic order.

    Attributes:
        sources: the path or URI of each input (Arrow strings, possibly chunked: a manifest's
            column is kept as read, never copied into one block).
        labels: an int32 label per input, an index into `classes`, or -1 where unlabeled.
        classes: the class names.
    """

    sources: pa.Array | pa.ChunkedArray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def fingerprint(self) -> str:
        """A digest of the sources, labels and classes: cheap for millions of rows, and the same
        whatever the Arrow chunking (string lengths and bytes are digested separately)."""
        lengths, data = hashlib.sha256(), hashlib.sha256()
        chunks = self.sources.chunks if isinstance(self.sources, pa.ChunkedArray) else [self.sources]
        for chunk in chunks:
            chunk = chunk.cast(pa.large_string())
            _, offsets_buffer, data_buffer = chunk.buffers()
            offsets = np.frombuffer(offsets_buffer, np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
            lengths.update(np.diff(offsets).tobytes())
            if data_buffer is not None:
                data.update(memoryview(data_buffer)[offsets[0] : offsets[-1]])
        digest = hashlib.sha256(lengths.digest() + data.digest())
        digest.update(np.ascontiguousarray(self.labels, "<i4").tobytes())
        digest.update("\0".join(self.classes).encode())
        return digest.hexdigest()


def check_source(src: str) -> None:
    """Refuse, from a stat alone, a SRC that cannot be listed: a missing local path, a file that
    is not a manifest, an unknown scheme. Cheap, so it runs before Ray starts; object storage is
    checked by the listing itself.

    Raises:
        SourceError: the reason, in one line.
    """
    if storage.is_remote(src):
        return
    if "://" in src and not src.startswith("file://"):
        raise SourceError(f"{src}: unsupported scheme; SRC is a local path, s3:// or gs://")
    path = src.removeprefix("file://")
    if os.path.isdir(path) or (os.path.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS)):
        return
    if os.path.exists(path):
        raise SourceError(f"{src}: SRC must be a folder or a .csv/.parquet manifest")
    raise SourceError(f"{src}: no such file or folder")


def list_sources(src: str) -> Listing:
    """List SRC: a folder (class folders or flat) or a CSV/Parquet manifest.

    Raises:
        SourceError: SRC does not exist, holds no images, or its manifest lacks a `path` column.
    """
    check_source(src)
    if storage.is_remote(src):
        listing = _list_remote(src)
    else:
        path = src.removeprefix("file://")
        listing = _list_folder(path) if os.path.isdir(path) else _list_manifest(path)
    if len(listing) == 0:
        raise SourceError(f"{src}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return listing


def is_image_name(name: str) -> bool:
    """True when a file name has an image extension, in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: str) -> Iterator[str]:
    """Yield image paths under `folder`, recursively, skipping hidden entries."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise SourceError(f"{current}: cannot list folder ({exc.strerror or exc})") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                stack.append(entry.path)
            elif is_image_name(entry.name):
                # Broken symlinks and unreadable files are listed: they become rejects with a
                # reason rather than silently vanishing from the run.
                yield entry.path


def _collect(paths: Iterator[str]) -> pa.Array:
    """Gather paths into one sorted Arrow array, a chunk at a time."""
    chunks: list[pa.Array] = []
    batch: list[str] = []
    for path in paths:
        batch.append(path)
        if len(batch) == _CHUNK:
            chunks.append(pa.array(batch, pa.large_string()))
            batch = []
    chunks.append(pa.array(batch, pa.large_string()))
    array = pa.chunked_array(chunks, pa.large_string()).combine_chunks()
    return array.take(pc.sort_indices(array))


def _list_folder(folder: str) -> Listing:
    folder = os.path.abspath(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
    class_dirs = [e for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]
    top_images = [e for e in entries if not e.name.startswith(".") and not e.is_dir() and is_image_name(e.name)]
    if not class_dirs:
        sources = _collect(iter(e.path for e in top_images))
        return Listing(sources, np.full(len(sources), UNLABELED, np.int32), [])
    if top_images:
        raise _mixed_layout(folder, [e.name for e in top_images])
    arrays, labels = [], []
    for label, entry in enumerate(class_dirs):
        array = _collect(_walk_images(entry.path))
        arrays.append(array)
        labels.append(np.full(len(array), label, np.int32))
    sources = pa.chunked_array(arrays, pa.large_string()).combine_chunks()
    return Listing(sources, np.concatenate(labels), [e.name for e in class_dirs])


def _mixed_layout(src: str, loose: list[str], count: int | None = None) -> SourceError:
    """Class folders beside loose images: which label the loose ones get is anybody's guess."""
    count = len(loose) if count is None else count
    return SourceError(
        f"{src}: holds both class folders and {count} loose image(s) such as {loose[0]!r}; "
        "move them into a class folder or use a manifest"
    )


def _read_manifest_table(path: str, filesystem: object = None) -> pa.Table:
    try:
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pacsv

            source = filesystem.open_input_stream(path) if filesystem is not None else path  # type: ignore[attr-defined]
            return pacsv.read_csv(
                source, convert_options=pacsv.ConvertOptions(column_types={"path": pa.large_string()})
            )
        import pyarrow.parquet as pq

        names = pq.read_schema(path, filesystem=filesystem).names
        return pq.read_table(path, columns=[c for c in names if c in ("path", "label")], filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read manifest ({str(exc).splitlines()[0]})") from exc


def _list_remote(src: str) -> Listing:
    """An s3:// or gs:// SRC: a prefix of class folders or flat images, or a manifest object."""
    listing_errors: tuple[type[BaseException], ...] = (OSError, *_boto_errors())
    try:
        found = storage.info(src)
        if found.type == storage.pafs.FileType.File:
            if not src.lower().endswith(MANIFEST_EXTENSIONS):
                raise SourceError(f"{src}: SRC must be a prefix (folder) or a .csv/.parquet manifest")
            filesystem, path = storage.resolve(src)
            return _list_manifest(path, filesystem=filesystem, base=src.rsplit("/", 1)[0])
        if found.type != storage.pafs.FileType.Directory:
            raise SourceError(f"{src}: no such prefix or object")
        uri_chunks, class_chunks = _listed_pages(src)
    except listing_errors as exc:
        raise SourceError(f"{src}: cannot list ({str(exc).splitlines()[0]})") from exc
    table = pa.table(
        {"class": pa.chunked_array(class_chunks, pa.string()), "uri": pa.chunked_array(uri_chunks, pa.large_string())}
    )
    classes = sorted(pc.unique(table.column("class")).drop_null().to_pylist())
    loose = table.filter(pc.is_null(table.column("class"))).column("uri")
    if classes and len(loose):
        raise _mixed_layout(src, [uri.rsplit("/", 1)[-1] for uri in loose.slice(0, 1).to_pylist()], len(loose))
    table = table.sort_by([("class", "ascending"), ("uri", "ascending")])
    labels = pc.index_in(table.column("class"), value_set=pa.array(classes, pa.string()))
    labels = labels.fill_null(UNLABELED).to_numpy().astype(np.int32)
    return Listing(table.column("uri"), labels, classes)


def _listed_pages(src: str) -> tuple[list[pa.Array], list[pa.Array]]:
    """The image objects under `src`, one Arrow chunk per listing page: (uris, class or null)."""
    prefix = src.rstrip("/") + "/"
    uri_chunks, class_chunks = [], []
    for page in storage.list_pages(src):
        uris, classes = [], []
        for uri in page:
            parts = uri[len(prefix) :].split("/")
            if any(part.startswith(".") for part in parts) or not is_image_name(parts[-1]):
                continue
            uris.append(uri)
            classes.append(parts[0] if len(parts) > 1 else None)
        uri_chunks.append(pa.array(uris, pa.large_string()))
        class_chunks.append(pa.array(classes, pa.string()))
    return uri_chunks, class_chunks


def _boto_errors() -> tuple[type[Exception], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return ()
    return (BotoCoreError, ClientError)


def _list_manifest(path: str, filesystem: object = None, base: str | None = None) -> Listing:
    table = _read_manifest_table(path, filesystem)
    if "path" not in table.column_names:
        raise SourceError(f"{path}: manifest needs a 'path' column, found {table.column_names}")
    sources = table.column("path").cast(pa.large_string())  # shares the bytes; chunks kept as read
    if sources.null_count:
        raise SourceError(f"{path}: 'path' is empty in {sources.null_count} row(s)")
    is_relative = pc.invert(pc.or_(pc.starts_with(sources, "/"), pc.match_substring(sources, "://")))
    if pc.any(is_relative).as_py():
        folder = base if base is not None else os.path.dirname(os.path.abspath(path))
        joined = pc.binary_join_element_wise(
            pa.scalar(folder, pa.large_string()), sources, pa.scalar("/", pa.large_string())
        )
        sources = pc.if_else(is_relative, joined, sources)
    del is_relative
    if "label" not in table.column_names:
        return Listing(sources, np.full(len(sources), UNLABELED, np.int32), [])
    labels, classes = _labels_from_column(path, table.column("label").combine_chunks())
    return Listing(sources, labels, classes)


def _labels_from_column(path: str, column: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Integer labels are kept (classes "0".."K-1"); string labels are sorted into classes."""
    if pa.types.is_integer(column.type):
        labels = column.fill_null(UNLABELED).to_numpy().astype(np.int64)
        if (labels < UNLABELED).any():
            raise SourceError(f"{path}: integer labels must be >= 0 (or -1 for none), found {labels.min()}")
        if labels.max(initial=UNLABELED) >= 2**31:
            raise SourceError(f"{path}: integer label {labels.max()} is too large")
        count = int(labels.max(initial=UNLABELED)) + 1
        return labels.astype(np.int32), [str(i) for i in range(count)]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.utf8_trim_whitespace(column)
        present = pc.and_(pc.is_valid(column), pc.not_equal(column, ""))
        classes = sorted(pc.unique(pc.filter(column, present)).to_pylist())
        index = pc.index_in(column, value_set=pa.array(classes, column.type))
        return index.fill_null(UNLABELED).to_numpy(zero_copy_only=False).astype(np.int32), classes
    raise SourceError(f"{path}: 'label' must hold integers or class names, found {column.type}")


def read_source(source: str) -> bytes:
    """The bytes of one input; a DecodeError names why a file cannot be read.

    Broken symlinks, missing and unreadable files are refused one by one (they become rejects),
    never a reason to stop the run. Object-storage URIs are read through `shards.io.storage`.
    """
    if storage.is_remote(source):
        try:
            return storage.read_bytes(source)
        except FileNotFoundError:
            raise DecodeError("object not found") from None
        except OSError as exc:
            raise DecodeError(f"cannot read ({str(exc).splitlines()[0]})") from exc
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        reason = "broken symlink" if os.path.islink(source) else "file not found"
        raise DecodeError(reason) from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a folder, not a file") from None
    except OSError as exc:
        raise DecodeError(f"cannot read ({exc.strerror or exc})") from exc
