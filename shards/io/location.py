"""Where a run's files live: a local (or shared) folder, or an object-storage prefix.

DEST may be either, and everything that reads or writes whole files of a run (the manifest,
index, rejects, receipts, finished shards) goes through one of these two classes, so the commit
rules stay the same: a file appears complete under its final name or not at all. Locally that is
a temporary name, fsync and rename; in object storage it is a single PUT or a multipart upload,
which the store publishes only once it completes.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from shards.errors import DestinationError
from shards.io import checksum, storage
from shards.io.fileio import (
    FileDigest,
    atomic_write,
    digest_stream,
    open_regular,
    regular_size,
    remove_temporaries,
    write_bytes_atomically,
)

if TYPE_CHECKING:  # pyarrow is imported where it is used: a task writing a local DEST never needs it
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq


class Location(abc.ABC):
    """The files of one DEST, addressed by names relative to it (`manifest.json`, `.parts/x.json`)."""

    def __init__(self, root: str) -> None:
        self.root = root

    @property
    def local_root(self) -> str | None:
        """The folder itself where DEST is one (so its files can be memory-mapped); None for a
        prefix in object storage."""
        return None

    @abc.abstractmethod
    def staging(self) -> contextlib.AbstractContextManager[tuple[str, bool]]:
        """Where a shard task writes its files: (local folder, whether to fsync them).

        Files written there appear in DEST once passed to `publish`: a folder is its own staging
        place; object storage stages on the worker's disk and uploads."""

    @abc.abstractmethod
    def publish(self, folder: str, names: Iterable[str]) -> None:
        """Make files written in a `staging()` folder part of DEST, each whole."""

    @abc.abstractmethod
    def describe_writes(self) -> str:
        """Where a run's shard bytes land, for a message about a full or read-only disk."""

    def remove_temporaries(self) -> int:
        """Delete temporary files a killed writer left; returns how many (object storage never
        publishes partial objects, so there is nothing to remove there)."""
        return 0

    @abc.abstractmethod
    def create(self) -> None:
        """Make DEST exist.

        Raises:
            DestinationError: DEST is a file, or its folder cannot be created.
        """

    @abc.abstractmethod
    def names(self, folder: str = "") -> list[str] | None:
        """The entries directly under the root, or under its sub-folder `folder` (files and
        folders); None when that folder is absent."""

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """Every file directly under the root and its size, from one listing."""

    @abc.abstractmethod
    def read(self, relative: str) -> bytes | None:
        """A whole small file; None when it does not exist."""

    @abc.abstractmethod
    def write(self, relative: str, data: bytes) -> None:
        """Write a small file atomically."""

    @abc.abstractmethod
    def writing(self, relative: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary stream whose bytes appear under `relative` only if the block succeeds."""

    @abc.abstractmethod
    def size(self, relative: str) -> int | None:
        """A file's size in bytes; None when it is absent (NotRegularFileError for a FIFO,
        device, folder or symlink in a folder)."""

    @abc.abstractmethod
    def remove(self, relative: str) -> None:
        """Delete a file or a whole folder; absent is fine."""

    @abc.abstractmethod
    def open(self, relative: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A readable binary stream of a file."""

    @abc.abstractmethod
    def read_table(self, relative: str, columns: list[str]) -> pa.Table:
        """Columns of a Parquet file of the run (a regular file, for a folder).

        Raises:
            FileNotFoundError: the file is absent.
        """

    @abc.abstractmethod
    def parquet_file(self, relative: str) -> pq.ParquetFile:
        """A Parquet file of the run opened for reading a row group at a time."""

    def digest(self, relative: str, algorithm: str = checksum.DEFAULT) -> FileDigest:
        """A file's size and checksum, read as a stream (object-storage files are never staged)."""
        with self.open(relative) as handle:
            return digest_stream(handle, algorithm)

    def __str__(self) -> str:
        return self.root


class LocalLocation(Location):
    """A folder on a local or shared file system (NFS, Lustre, a mounted bucket)."""

    def __init__(self, root: str) -> None:
        super().__init__(os.path.abspath(root))

    @property
    def local_root(self) -> str | None:
        return self.root

    @contextlib.contextmanager
    def staging(self) -> Iterator[tuple[str, bool]]:
        yield self.root, True

    def publish(self, folder: str, names: Iterable[str]) -> None:
        """Nothing to do: shard files are committed in place (temporary name, fsync, rename)."""

    def describe_writes(self) -> str:
        return self.root

    def remove_temporaries(self) -> int:
        return remove_temporaries(self.root) if os.path.isdir(self.root) else 0

    def create(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except FileExistsError:
            raise DestinationError(f"{self.root}: DEST exists and is not a folder") from None
        except OSError as exc:
            raise DestinationError(f"{self.root}: cannot create DEST ({exc.strerror or exc})") from None

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    def names(self, folder: str = "") -> list[str] | None:
        path = self.path(folder) if folder else self.root
        if not os.path.isdir(path) or os.path.islink(path):
            return None
        return os.listdir(path)

    def sizes(self) -> dict[str, int]:
        with os.scandir(self.root) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file(follow_symlinks=False)}

    def read(self, relative: str) -> bytes | None:
        # Regular files only: a FIFO or a symlink to /dev/zero under a run's name must not hang
        # or flood the caller, and nothing outside DEST is read through a symlink.
        try:
            with open_regular(self.path(relative)) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, relative: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(self.path(relative)) or ".", exist_ok=True)
        write_bytes_atomically(self.path(relative), data)

    @contextlib.contextmanager
    def writing(self, relative: str) -> Iterator[BinaryIO]:
        with atomic_write(self.path(relative)) as handle:
            yield handle  # type: ignore[misc]

    def size(self, relative: str) -> int | None:
        return regular_size(self.path(relative))

    def remove(self, relative: str) -> None:
        path = self.path(relative)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[BinaryIO]:
        with open_regular(self.path(relative)) as handle:
            yield handle

    def read_table(self, relative: str, columns: list[str]) -> pa.Table:
        import pyarrow.parquet as pq

        path = self.path(relative)
        if regular_size(path) is None:  # a FIFO or symlink raises NotRegularFileError: never opened
            raise FileNotFoundError(path)
        # By path, with pyarrow's own reader. Through a Python file object, pyarrow's I/O threads
        # call back into Python, and `shards verify` aborted at exit ("terminate called without an
        # active exception") in 7 of 60 runs on a loaded 2-core machine; 0 of 60 by path.
        return pq.read_table(path, columns=columns)

    def parquet_file(self, relative: str) -> pq.ParquetFile:
        import pyarrow.parquet as pq

        path = self.path(relative)
        if regular_size(path) is None:
            raise FileNotFoundError(path)
        return pq.ParquetFile(path)  # by path, as read_table


class RemoteLocation(Location):
    """A prefix in object storage (s3://bucket/prefix, gs://bucket/prefix)."""

    def __init__(self, root: str) -> None:
        super().__init__(root.rstrip("/"))
        self._endpoint = os.environ.get("AWS_ENDPOINT_URL")  # where it was opened, wherever it is used
        self._path = storage.resolve(self.root, self._endpoint)[1]

    @property
    def _filesystem(self) -> pafs.FileSystem:
        """This process's client (a forked child makes its own; see `storage.resolve`)."""
        return storage.resolve(self.root, self._endpoint)[0]

    def key(self, relative: str) -> str:
        return f"{self._path}/{relative}"

    @contextlib.contextmanager
    def staging(self) -> Iterator[tuple[str, bool]]:
        # Not flushed to this disk: the upload is what makes the files last.
        folder = tempfile.mkdtemp(prefix="shards-stage-", dir=os.environ.get("SHARDS_STAGING_DIR"))
        try:
            yield folder, False
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, folder: str, names: Iterable[str]) -> None:
        for name in names:
            self.put(os.path.join(folder, name), name)

    def describe_writes(self) -> str:
        return "the staging folder (SHARDS_STAGING_DIR or TMPDIR)"

    def create(self) -> None:
        """Nothing to do: a prefix exists once it holds an object."""

    def names(self, folder: str = "") -> list[str] | None:
        return [os.path.basename(entry.path.rstrip("/")) for entry in self._listing(folder)] or None

    def sizes(self) -> dict[str, int]:
        return {os.path.basename(entry.path): entry.size for entry in self._listing() if entry.is_file}

    def _listing(self, folder: str = "") -> list[pafs.FileInfo]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.key(folder) if folder else self._path, recursive=False, allow_not_found=True)
        return storage.retried(lambda: self._filesystem.get_file_info(selector), f"listing {self.root}")

    def read(self, relative: str) -> bytes | None:
        try:
            return storage.read_bytes(storage.join(self.root, relative))
        except FileNotFoundError:
            return None

    def write(self, relative: str, data: bytes) -> None:
        def put() -> None:
            with self._filesystem.open_output_stream(self.key(relative)) as handle:
                handle.write(data)

        storage.retried(put, f"writing {storage.join(self.root, relative)}")

    @contextlib.contextmanager
    def writing(self, relative: str) -> Iterator[BinaryIO]:
        # Staged on local disk, so a failure half-way never publishes a partial object.
        with tempfile.NamedTemporaryFile(prefix="shards-upload-") as staged:
            yield staged  # type: ignore[misc]
            staged.flush()
            self.put(staged.name, relative)

    def put(self, local_path: str, relative: str) -> None:
        """Upload a finished local file whole: the object appears only once the upload completes."""
        import pyarrow.fs as pafs

        storage.retried(
            lambda: pafs.copy_files(
                local_path,
                self.key(relative),
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self._filesystem,
            ),
            f"uploading {storage.join(self.root, relative)}",
        )

    def size(self, relative: str) -> int | None:
        found = storage.retried(
            lambda: self._filesystem.get_file_info(self.key(relative)),
            f"looking up {storage.join(self.root, relative)}",
        )
        return found.size if found.is_file else None

    def remove(self, relative: str) -> None:
        import pyarrow.fs as pafs

        found = storage.retried(lambda: self._filesystem.get_file_info(self.key(relative)), f"looking up {relative}")
        if found.type == pafs.FileType.Directory:
            storage.retried(lambda: self._filesystem.delete_dir(self.key(relative)), f"removing {relative}")
        elif found.type == pafs.FileType.File:
            storage.retried(lambda: self._filesystem.delete_file(self.key(relative)), f"removing {relative}")

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[BinaryIO]:
        if self.root.startswith("s3://"):  # a client of this process's own: safe in a forked worker
            with storage.open_s3_object(storage.join(self.root, relative), self._endpoint) as body:
                yield body
            return
        handle = storage.retried(
            lambda: self._filesystem.open_input_stream(self.key(relative)),
            f"opening {storage.join(self.root, relative)}",
        )
        with handle:
            yield handle

    def read_table(self, relative: str, columns: list[str]) -> pa.Table:
        import pyarrow.parquet as pq

        return storage.retried(
            lambda: pq.read_table(self.key(relative), columns=columns, filesystem=self._filesystem),
            f"reading {storage.join(self.root, relative)}",
        )

    def parquet_file(self, relative: str) -> pq.ParquetFile:
        import pyarrow.parquet as pq

        return storage.retried(
            lambda: pq.ParquetFile(self._filesystem.open_input_file(self.key(relative))),
            f"opening {storage.join(self.root, relative)}",
        )


def location(dest: str) -> Location:
    """The Location of DEST: object storage for s3:// and gs:// URIs, a folder otherwise."""
    return RemoteLocation(dest) if storage.is_remote(dest) else LocalLocation(dest)
