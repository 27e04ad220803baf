"""Tar archives in the WebDataset convention: `key.jpg` beside `key.cls` / `key.json` members,
grouped by key. How LAION, DataComp, img2dataset output and ImageNet's own archives ship.

Each archive is indexed in one sequential pass (a Ray task per archive when Ray is up, threads
otherwise): the byte range of every image member, the label from `.cls` (an integer) or a
`.json` member's field (`label`, or the `--label-column`s: names, numbers or lists of them), and
the fields `--columns` asks for (from `.json`, or a member of that suffix such as `.txt`).
Shard tasks then read just the byte ranges of their samples: shards
take consecutive samples, so one ranged read covers many members. Member names are never used
as paths on disk. What the index finds wrong with a member (an unsafe name, a duplicate key, a
link, data cut off by a truncated archive, no image in a sample) becomes that sample's reject.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import DecodeError, SourceError
from shards.io.source import any_remote, source_place, too_large
from shards.sources.folder import IMAGE_EXTENSIONS
from shards.sources.inputs import Input
from shards.sources.listing import Listing, containers_of, display_name, with_problems
from shards.sources.parts import ListingSpill, PartedListing
from shards.sources.targets import targets_from_columns, typed_values

TAR_EXTENSION = ".tar"
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
SPAN_BYTES = 16 * 2**20  # one read covers consecutive members up to this many bytes
INDEX_THREADS = 4
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext
_IMAGE_SUFFIXES = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_INDEX_SCHEMA = pa.schema(
    [
        ("name", pa.large_string()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("label_int", pa.int64()),
        ("fields", pa.large_string()),
        ("problem", pa.large_string()),
    ]
)


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSION)


def refuse_compressed(name: str) -> None:
    """Compressed archives cannot be read by byte range: refuse them in one line."""
    if name.lower().endswith(COMPRESSED_TAR):
        raise SourceError(
            f"{name}: compressed tar archives cannot be read by byte range; decompress them "
            "(e.g. gunzip) into plain .tar files"
        )


def expand_pattern(src: str) -> list[str]:
    """`data-{000000..000099}.tar` -> the archive names it stands for, in order."""
    import braceexpand

    return list(braceexpand.braceexpand(src))


def list_tar(
    archives: Sequence[str],
    mapper: Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]] | None = None,
    label_columns: Sequence[str] = ("label",),
    extra_columns: Sequence[str] = (),
) -> PartedListing:
    """Index every archive (in parallel through `mapper`, results taken in order one at a time)
    and list their samples in order, a part per archive spilled to local disk."""
    fields = tuple(dict.fromkeys([*label_columns, *extra_columns]))
    spill = ListingSpill(archives[0])
    jobs = [(archive, fields) for archive in archives]
    if mapper is None:
        tables: Iterable[pa.Table] = map_with_threads(index_archive, jobs)
    else:
        tables = (_unpacked(data) for data in mapper(index_archive_packed, jobs))
    for archive, table in zip(archives, tables):
        spill.add(_archive_listing(archive, table, fields, label_columns, extra_columns))
    return spill.finish(keeps_order=True)


def _archive_listing(
    archive: str, table: pa.Table, fields: tuple[str, ...], label_columns: Sequence[str], extra_columns: Sequence[str]
) -> Listing:
    """One archive's samples, from its index, as a listing of their own."""
    kind = TarKind(
        [archive],
        np.zeros(table.num_rows, np.int32),
        table.column("offset").to_numpy(),
        table.column("size").to_numpy(),
    )
    values = _field_values(archive, table.column("fields"), fields)
    classes = table.column("label_int")
    if list(label_columns) == ["label"] and classes.null_count < len(classes):
        in_json = values["label"]
        if in_json.null_count < len(in_json) and not pa.types.is_integer(in_json.type):
            raise SourceError(f"{archive}: labels mix integers (.cls) and {in_json.type} .json labels; use one kind")
        # A sample's .cls wins over its .json label, as WebDataset's decoders read them.
        values["label"] = pc.coalesce(classes.combine_chunks(), in_json.cast(pa.int64()))
    targets, missing = targets_from_columns(archive, [(name, values[name]) for name in label_columns])
    problem_column = table.column("problem").combine_chunks()
    return Listing(
        _joined(f"{archive}#", table.column("name")),
        targets,
        kind=kind,
        problems=with_problems(problem_column if problem_column.null_count < len(problem_column) else None, missing),
        keeps_order=True,
        columns=pa.table({name: values[name] for name in extra_columns}) if extra_columns else None,
    )


def _joined(prefix: str, names: pa.ChunkedArray) -> pa.Array:
    large = pa.large_string()
    return pc.binary_join_element_wise(pa.scalar(prefix, large), names.combine_chunks(), pa.scalar("", large))


def _field_values(where: str, found: pa.ChunkedArray, fields: Sequence[str]) -> dict[str, pa.Array]:
    """Each field as a typed column (null where a sample does not have it)."""
    records = [json.loads(text) if text is not None else {} for text in found.to_pylist()]
    return {name: typed_values(where, [record.get(name) for record in records], name) for name in fields}


def map_with_threads(function: Callable[[Any], pa.Table], jobs: Sequence[Any]) -> Iterator[pa.Table]:
    """Index archives on a few threads (when no Ray cluster is up: `shards plan`), results in
    order, a few ahead of the caller."""
    with concurrent.futures.ThreadPoolExecutor(INDEX_THREADS, thread_name_prefix="shards-index") as pool:
        pending = collections.deque(jobs)
        running: collections.deque[concurrent.futures.Future[pa.Table]] = collections.deque()
        try:
            while pending or running:
                while pending and len(running) < 2 * INDEX_THREADS:
                    running.append(pool.submit(function, pending.popleft()))
                yield running.popleft().result()
        finally:
            for future in running:
                future.cancel()


def index_archive_packed(job: tuple[str, tuple[str, ...]]) -> bytes:
    """`index_archive` as a Ray task returns it: Arrow IPC with zstd buffers, 42 KB for the
    612 KB index of a 10,000-member archive. Under Ray's 100 KB limit a result comes back inline,
    in the driver's heap, freed when taken; over it, it lands in the object store, whose pages
    stay counted in the driver's memory once it has read them."""
    table = index_archive(job)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _unpacked(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def index_archive(job: tuple[str, tuple[str, ...]]) -> pa.Table:
    """One sequential pass over an archive: a row per sample, in member order. `job` is the
    archive and the `.json` fields (or member suffixes) to keep.

    Raises:
        SourceError: the archive cannot be opened, or is not a tar archive at all.
    """
    archive, fields = job
    try:
        handle, size = source_place(archive).open_stream()
    except OSError as exc:
        raise SourceError(f"{archive}: cannot open archive ({exc.strerror or str(exc).splitlines()[0]})") from exc
    with handle:
        if handle.peek(2)[:2] == b"\x1f\x8b":
            raise SourceError(f"{archive}: gzip-compressed; decompress it into a plain .tar (byte ranges need one)")
        return _Indexer(archive, size, fields).run(handle)


class _Indexer:
    """Groups members by key as WebDataset does, and records what is wrong with any of them."""

    def __init__(self, archive: str, size: int, fields: tuple[str, ...]) -> None:
        self.archive, self.size, self.fields = archive, size, fields
        self.rows: list[_Row] = []  # tuples: a million samples cost ~100 MB, not dicts' ~400 MB
        self.seen: set[str] = set()
        self.sample: dict[str, Any] | None = None

    def run(self, handle: Any) -> pa.Table:
        try:
            with tarfile.open(fileobj=handle, mode="r|", errors="surrogateescape") as archive:
                for member in archive:
                    self._member(archive, member)
                    archive.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every TarInfo it met: ~500 B a member
        except tarfile.ReadError as exc:
            self._end_sample()
            if not (self.rows and str(self.rows[-1].problem).startswith("truncated archive")):
                where = self.rows[-1].offset + self.rows[-1].size if self.rows else 0
                self.rows.append(_Row(f"<after byte {where}>", problem=f"corrupt or truncated archive ({exc})"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._end_sample()
            self.rows.append(_Row("<archive>", problem=f"cannot read archive ({exc})"))
        self._end_sample()
        columns: list[Sequence[Any]] = list(zip(*self.rows)) if self.rows else [[] for _ in _INDEX_SCHEMA]
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, _INDEX_SCHEMA)], schema=_INDEX_SCHEMA)

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.isdir():
            return
        name = display_name(member.name)
        match = _KEY.match(member.name)
        key, suffix = (match.group(1), match.group(2).lower()) if match else (member.name, "")
        if self.sample is None or self.sample["key"] != key:
            self._end_sample()
            self.sample = {"key": key, "name": name, "problem": None, "image": None, "label": None, "extras": []}
            self.sample["fields"] = {}
            if key in self.seen:
                self.sample["problem"] = f"duplicate key {display_name(key)!r} (also earlier in the archive)"
            self.seen.add(key)
        sample = self.sample
        if _unsafe(member.name):
            sample["problem"] = sample["problem"] or f"unsafe member name {name!r}"
        if not member.isfile():
            if suffix in _IMAGE_SUFFIXES:
                sample["problem"] = sample["problem"] or f"member {name!r} is a link or device, not a file"
            return
        end = member.offset_data + member.size
        if suffix in _IMAGE_SUFFIXES or suffix.rsplit(".", 1)[-1] in _IMAGE_SUFFIXES:
            if sample["image"] is not None:
                sample["problem"] = (
                    sample["problem"] or f"duplicate key {display_name(key)!r} ({name!r} is a second image)"
                )
                return
            sample["image"], sample["name"] = (member.offset_data, member.size), name
            if end > self.size:
                sample["problem"] = (
                    f"truncated archive: {name!r} needs bytes up to {end:,}, the archive has {self.size:,}"
                )
        elif (suffix in ("cls", "json") or suffix in self.fields) and member.size <= 1 << 20 and end <= self.size:
            data = archive.extractfile(member).read()  # type: ignore[union-attr]
            if suffix == "cls":
                sample["label"] = _class_number(data)
            else:
                _read_fields(suffix, data, self.fields, sample["fields"])
        else:
            sample["extras"].append(suffix)

    def _end_sample(self) -> None:
        sample, self.sample = self.sample, None
        if sample is None:
            return
        label = sample["label"]
        problem = sample["problem"]
        if sample["image"] is None and problem is None:
            found = ", ".join("." + s for s in sample["extras"]) or "nothing"
            problem = f"no image member for key {display_name(sample['key'])!r} (found {found})"
        fields = sample["fields"]
        for unreadable in (label, fields.pop(_UNREADABLE, None)):
            if isinstance(unreadable, DecodeError) and problem is None:
                problem = str(unreadable)
        offset, size = sample["image"] or (0, 0)
        number = label if isinstance(label, int) else None
        self.rows.append(_Row(sample["name"], offset, size, number, json.dumps(fields) if fields else None, problem))


class _Row(NamedTuple):
    """One sample of an archive's index (the columns of _INDEX_SCHEMA, in order)."""

    name: str
    offset: int = 0
    size: int = 0
    label_int: int | None = None
    fields: str | None = None  # the kept fields as a JSON object
    problem: str | None = None


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


_UNREADABLE = "\0unreadable"  # where _read_fields leaves why a member could not be read


def _class_number(data: bytes) -> int | DecodeError:
    """The class a `.cls` member holds."""
    try:
        return int(data.decode("utf-8").strip())
    except (ValueError, UnicodeDecodeError) as exc:
        return DecodeError(f"unreadable .cls label ({str(exc).splitlines()[0]})")


def _read_fields(suffix: str, data: bytes, fields: tuple[str, ...], into: dict[str, Any]) -> None:
    """Keep the wanted fields of a `.json` member, or a member named by its suffix (`.txt`) whole
    as text."""
    try:
        if suffix != "json":
            into[suffix] = data.decode("utf-8")
            return
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        into[_UNREADABLE] = DecodeError(f"unreadable .{suffix} member ({str(exc).splitlines()[0]})")
        return
    if isinstance(record, dict):
        into.update({name: record[name] for name in fields if name in record and name not in into})


@dataclasses.dataclass(frozen=True)
class TarKind:
    """Where each listed sample's image bytes are: an archive and a byte range in it."""

    archives: list[str]
    archive_index: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    @property
    def remote(self) -> bool:
        return any_remote(self.archives)

    def inputs(self, positions: np.ndarray) -> RangeInputs:
        archives, archive_index = containers_of(self.archives, self.archive_index, positions)
        return RangeInputs(archives, archive_index, self.offsets[positions], self.sizes[positions])


@dataclasses.dataclass(frozen=True)
class RangeInputs:
    """Byte ranges of archives; consecutive ranges of one archive are read in one request."""

    archives: list[str]
    archive_index: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def read(self, max_bytes: int) -> Iterator[Input]:
        count = len(self.offsets)
        start = 0
        while start < count:
            end = self._span_end(start, max_bytes)
            yield from self._read_span(start, end, max_bytes)
            start = end

    def _span_end(self, start: int, max_bytes: int) -> int:
        """The end of the run of members from `start` that one read covers."""
        end = start + 1
        if self.sizes[start] > max_bytes:
            return end
        while (
            end < len(self.offsets)
            and self.archive_index[end] == self.archive_index[start]
            and self.offsets[end] >= self.offsets[end - 1]
            and self.offsets[end] + self.sizes[end] - self.offsets[start] <= SPAN_BYTES
            and self.sizes[end] <= max_bytes
        ):
            end += 1
        return end

    def _read_span(self, start: int, end: int, max_bytes: int) -> Iterator[Input]:
        if self.sizes[start] > max_bytes:
            yield DecodeError(too_large(int(self.sizes[start]), max_bytes))
            return
        archive = self.archives[self.archive_index[start]]
        first, last = int(self.offsets[start]), int(self.offsets[end - 1] + self.sizes[end - 1])
        try:
            data = source_place(archive).read_range(first, last - first)
        except OSError as exc:
            reason = DecodeError(f"cannot read archive ({exc.strerror or str(exc).splitlines()[0]})")
            yield from (reason for _ in range(start, end))
            return
        view = memoryview(data)
        for i in range(start, end):
            begin = int(self.offsets[i]) - first
            piece = view[begin : begin + int(self.sizes[i])]
            yield bytes(piece) if len(piece) == self.sizes[i] else DecodeError("truncated archive (member cut off)")


def archives_in(src: str) -> list[str]:
    """The .tar files SRC names: one archive, a brace pattern, or a folder/prefix of them."""
    if "{" in src:
        return expand_pattern(src)
    if is_tar_name(src):
        return [src]
    return source_place(src).files_under((TAR_EXTENSION,))
