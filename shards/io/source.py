"""Where SRC, or one input it names, lies: a `SourcePlace`, as DEST is a `Location`.

The source side asks one object the questions it used to answer by looking at the string (is it
object storage? what is in it? how is it read?): a local path and an s3:// or gs:// URI answer
them in their own class, so a new kind of place is one more class, not a branch in every
source module. Reads are bounded by `max_bytes` and refuse what is not a regular file; remote
I/O, and only remote I/O, is retried (`shards.io.storage`).
"""

from __future__ import annotations

import abc
import errno
import io
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from shards.errors import DecodeError, SourceError
from shards.io import storage
from shards.io.fileio import NotRegularFileError, open_regular_descriptor, read_descriptor

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs


def too_large(size: int, max_bytes: int) -> str:
    """The reason for refusing an input by its size."""
    return f"{size:,} bytes, over the --max-input-bytes limit of {max_bytes:,}"


class SourcePlace(abc.ABC):
    """A file, folder or prefix that SRC names (or one input of it).

    Attributes:
        uri: the path or URI as given (`file://` removed).
        remote: whether Ray workers read it over the network (object storage).
    """

    remote: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __str__(self) -> str:
        return self.uri

    @abc.abstractmethod
    def is_file(self) -> bool:
        """Whether it is one file (an object)."""

    @abc.abstractmethod
    def is_container(self) -> bool:
        """Whether it is a folder (a prefix with objects under it)."""

    @abc.abstractmethod
    def first_names(self) -> list[str]:
        """The visible file names directly under it (a prefix: its first listing page), to tell
        its kind cheaply; empty when it cannot be listed."""

    @abc.abstractmethod
    def files_under(self, extensions: tuple[str, ...]) -> list[str]:
        """Every visible file under it whose name ends with one of `extensions` (any case),
        sorted: the archives or Parquet files of a container SRC."""

    @abc.abstractmethod
    def arrow(self) -> tuple[pafs.FileSystem | None, str]:
        """(filesystem, path) for pyarrow's readers; None for the local file system."""

    def base(self) -> str | None:
        """What relative paths in a list file are resolved against: None (the working folder)
        for a local list, the list's own prefix in object storage."""
        return None

    @abc.abstractmethod
    def read(self, max_bytes: int) -> bytes:
        """The whole file, at most `max_bytes` of it.

        Raises:
            DecodeError: missing, unreadable, not a regular file, or over `max_bytes`.
        """

    @abc.abstractmethod
    def open_stream(self) -> tuple[io.BufferedReader, int]:
        """A buffered handle to read it front to back, and its size (tar indexing)."""

    @abc.abstractmethod
    def read_range(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (tar members)."""


class LocalSource(SourcePlace):
    """A path on this node's file system."""

    def is_file(self) -> bool:
        return os.path.isfile(self.uri)

    def is_container(self) -> bool:
        return os.path.isdir(self.uri)

    def first_names(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.uri) if not e.name.startswith(".") and e.is_file()]
        except OSError:
            return []

    def files_under(self, extensions: tuple[str, ...]) -> list[str]:
        found: list[str] = []
        for current, dirs, names in os.walk(self.uri):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(
                os.path.join(current, n) for n in names if n.lower().endswith(extensions) and not n.startswith(".")
            )
        return sorted(found)

    def arrow(self) -> tuple[pafs.FileSystem | None, str]:
        return None, self.uri

    def read(self, max_bytes: int) -> bytes:
        try:
            descriptor, size = open_regular_descriptor(self.uri, follow_symlinks=True)
        except FileNotFoundError:
            raise DecodeError("broken symlink" if os.path.islink(self.uri) else "file not found") from None
        except NotRegularFileError as exc:
            raise DecodeError("is a folder, not a file" if os.path.isdir(self.uri) else str(exc.strerror)) from None
        except OSError as exc:
            raise DecodeError(_os_reason(exc)) from None
        try:
            if size > max_bytes:
                raise DecodeError(too_large(size, max_bytes))
            data = read_descriptor(descriptor, size, max_bytes + 1)  # a file that grew since is still cut at the limit
        except OSError as exc:
            raise DecodeError(_os_reason(exc)) from None
        finally:
            os.close(descriptor)
        if len(data) > max_bytes:
            raise DecodeError(too_large(len(data), max_bytes))
        return data

    def open_stream(self) -> tuple[io.BufferedReader, int]:
        size = os.stat(self.uri).st_size
        return io.BufferedReader(io.FileIO(self.uri, "rb"), 1 << 20), size

    def read_range(self, offset: int, size: int) -> bytes:
        with open(self.uri, "rb", buffering=0) as handle:
            return os.pread(handle.fileno(), size, offset)


class ObjectSource(SourcePlace):
    """An object or prefix in object storage (s3://, gs://), through pyarrow and boto3."""

    remote = True

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return storage.info(self.uri).type == pafs.FileType.File

    def is_container(self) -> bool:
        import pyarrow.fs as pafs

        return storage.info(self.uri).type == pafs.FileType.Directory

    def first_names(self) -> list[str]:
        try:
            return [uri.rsplit("/", 1)[-1] for uri in next(iter(self.pages()), [])]
        except OSError:
            return []

    def pages(self) -> Iterator[list[str]]:
        """Every object under the prefix, a listing page at a time (see `storage.list_pages`)."""
        return storage.list_pages(self.uri)

    def files_under(self, extensions: tuple[str, ...]) -> list[str]:
        return sorted(uri for page in self.pages() for uri in page if uri.lower().endswith(extensions))

    def arrow(self) -> tuple[pafs.FileSystem | None, str]:
        return storage.resolve(self.uri)

    def base(self) -> str | None:
        return self.uri.rsplit("/", 1)[0]

    def read(self, max_bytes: int) -> bytes:
        filesystem, path = storage.resolve(self.uri)

        def read() -> bytes:
            with filesystem.open_input_file(path) as handle:
                size = handle.size()
                if size > max_bytes:
                    raise DecodeError(too_large(size, max_bytes))
                return handle.read(size)

        try:
            return storage.retried(read, f"reading {self.uri}")
        except FileNotFoundError:
            raise DecodeError("object not found") from None
        except OSError as exc:
            raise DecodeError(f"cannot read ({str(exc).splitlines()[0]})") from exc

    def open_stream(self) -> tuple[io.BufferedReader, int]:
        filesystem, path = storage.resolve(self.uri)
        size = filesystem.get_file_info(path).size
        return io.BufferedReader(_ArrowRaw(filesystem.open_input_stream(path)), 1 << 20), size

    def read_range(self, offset: int, size: int) -> bytes:
        filesystem, path = storage.resolve(self.uri)

        def read() -> bytes:
            with filesystem.open_input_file(path) as handle:
                return handle.read_at(size, offset)

        return storage.retried(read, f"reading {self.uri}")


class _ArrowRaw(io.RawIOBase):
    """A pyarrow input stream as a raw file, so `io.BufferedReader` can buffer and peek it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def source_place(src: str) -> SourcePlace:
    """The place a SRC string (or an input's path) names.

    Raises:
        SourceError: a scheme other than s3://, gs:// or file://.
    """
    if storage.is_remote(src):
        return ObjectSource(src)
    if "://" in src and not src.startswith("file://"):
        raise SourceError(f"{src}: unsupported scheme; SRC is a local path, s3:// or gs://")
    return LocalSource(src.removeprefix("file://"))


def any_remote(paths: Sequence[str] | pa.Array | pa.ChunkedArray) -> bool:
    """Whether any of these inputs is read over the network (vectorised over an Arrow listing)."""
    if isinstance(paths, (list, tuple)):
        return any(storage.is_remote(path) for path in paths)
    return storage.any_remote(paths)


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read ({exc.strerror or exc})"
