"""Folders of images: class folders (sorted names are the classes) or a flat folder (no labels),
on a local disk or under an s3:// / gs:// prefix.

The walk survives what real trees hold: symlinked folders are followed once each (a symlink
loop ends), DEST is left out when it lies inside SRC, and a file name that is not UTF-8 is
listed with its bytes escaped and a reason, so it becomes a reject rather than a traceback.
Broken symlinks, FIFOs and unreadable files are listed too: the reader rejects them with a
reason rather than letting them vanish from the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import SourceError
from shards.io.location import location
from shards.io.source import ObjectSource
from shards.sources.listing import Listing, display_name, strings
from shards.sources.parts import ListingSpill, PartedListing
from shards.sources.targets import UNLABELED, ListingTargets

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
NOT_UTF8 = "file name is not valid UTF-8"
_CHUNK = 8192  # names gathered as Python strings before they become Arrow


def is_image_name(name: str) -> bool:
    """True when a file name has an image extension, in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_folder(folder: str, exclude: str | None = None) -> PartedListing:
    """List a local folder of class folders or of loose images; `exclude` (DEST) is skipped."""
    folder = os.path.abspath(folder)
    skip = _Skip(exclude)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
    visible = [(entry, _is_dir(entry)) for entry in entries if not entry.name.startswith(".")]
    class_dirs = [entry for entry, is_dir in visible if is_dir and not skip.skips(entry.path)]
    top_images = [entry for entry, is_dir in visible if not is_dir and is_image_name(entry.name)]
    spill = ListingSpill(folder)
    if not class_dirs:
        names, problems = _collect(e.path for e in top_images)
        spill.add_cut(Listing(names, ListingTargets.unlabeled(len(names)), problems=problems))
        return spill.finish(keeps_order=False)
    if top_images:
        raise mixed_layout(folder, [display_name(e.name) for e in top_images])
    classes = [display_name(e.name) for e in class_dirs]
    for label, entry in enumerate(class_dirs):  # one class folder's names held at a time
        names, problems = _collect(_walk_images(entry.path, skip))
        targets = ListingTargets.of_classes(np.full(len(names), label, np.int32), classes)
        spill.add_cut(Listing(names, targets, problems=problems))
    return spill.finish(keeps_order=False)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a symlink loop, or a name too long to stat: the reader will say why
        return False


class _Skip:
    """Folders never to enter again: each one already walked (by device and inode, so a symlink
    loop ends) and DEST."""

    def __init__(self, exclude: str | None) -> None:
        self.seen: set[tuple[int, int]] = set()
        root = location(exclude).local_root if exclude else None  # DEST, when it is a local folder
        self.exclude = os.path.realpath(root) if root else None

    def skips(self, path: str) -> bool:
        if self.exclude is not None and os.path.realpath(path) == self.exclude:
            return True
        try:
            status = os.stat(path)
        except OSError:
            return True
        key = (status.st_dev, status.st_ino)
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


def _walk_images(folder: str, skip: _Skip) -> Iterator[str]:
    """Yield image paths under `folder`, recursively, skipping hidden entries."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:  # read as it goes: no list of a folder's entries
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if _is_dir(entry):
                        if not skip.skips(entry.path):
                            stack.append(entry.path)
                    elif is_image_name(entry.name):
                        yield entry.path
        except OSError as exc:
            raise SourceError(f"{display_name(current)}: cannot list folder ({exc.strerror or exc})") from exc


def _collect(paths: Iterator[str]) -> tuple[pa.Array, pa.Array | None]:
    """Gather paths into one sorted Arrow array, a chunk at a time, with a reason against each
    name that is not UTF-8 (None when every name is)."""
    chunks: list[pa.Array] = []
    odd: list[str] = []
    batch: list[str] = []
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            odd.append(display_name(path))
            continue
        batch.append(path)
        if len(batch) == _CHUNK:
            chunks.append(strings(batch))
            batch = []
    chunks.append(strings(batch + odd))
    array = pa.chunked_array(chunks, pa.large_string()).combine_chunks()
    order = pc.sort_indices(array)
    array = array.take(order)
    if not odd:
        return array, None
    problems = pc.if_else(pc.is_in(array, value_set=strings(odd)), NOT_UTF8, pa.scalar(None, pa.large_string()))
    return array, problems


def mixed_layout(src: str, loose: list[str], count: int | None = None) -> SourceError:
    """Class folders beside loose images: which label the loose ones get is anybody's guess."""
    count = len(loose) if count is None else count
    return SourceError(
        f"{src}: holds both class folders and {count} loose image(s) such as {loose[0]!r}; "
        "move them into a class folder or use a manifest"
    )


def list_prefix(place: ObjectSource) -> Listing:
    """An s3:// or gs:// prefix of class folders or flat images."""
    src = place.uri
    uri_chunks, class_chunks = _listed_pages(place)
    table = pa.table(
        {"class": pa.chunked_array(class_chunks, pa.string()), "uri": pa.chunked_array(uri_chunks, pa.large_string())}
    )
    classes = sorted(pc.unique(table.column("class")).drop_null().to_pylist())
    loose = table.filter(pc.is_null(table.column("class"))).column("uri")
    if classes and len(loose):
        raise mixed_layout(src, [uri.rsplit("/", 1)[-1] for uri in loose.slice(0, 1).to_pylist()], len(loose))
    table = table.sort_by([("class", "ascending"), ("uri", "ascending")])
    labels = pc.index_in(table.column("class"), value_set=pa.array(classes, pa.string()))
    labels = labels.fill_null(UNLABELED).to_numpy().astype(np.int32)
    return Listing(table.column("uri"), ListingTargets.of_classes(labels, classes))


def _listed_pages(place: ObjectSource) -> tuple[list[pa.Array], list[pa.Array]]:
    """The image objects under the prefix, one Arrow chunk per listing page: (uris, class or null)."""
    prefix = place.uri.rstrip("/") + "/"
    uri_chunks, class_chunks = [], []
    for page in place.pages():
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
