"""Atomic, checksummed file writes: a file is either complete under its name or absent.

Every write goes to a hidden temporary name in the same folder, is hashed while it is written
(no second read), flushed to disk, and renamed over the final name. A crash at any moment leaves
at most a stray temporary file, which `--resume` and `--overwrite` clean up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from shards.errors import ConfigError
from shards.io import checksum

TEMP_PREFIX = ".tmp-"
_HASH_CHUNK = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """What a written file's bytes were: its size and checksum (`algorithm:hex`)."""

    bytes: int
    checksum: str

    @property
    def algorithm(self) -> str:
        return checksum.algorithm_of(self.checksum)


class HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through it."""

    def __init__(self, raw: BinaryIO, algorithm: str = checksum.DEFAULT) -> None:
        self._raw = raw
        self._algorithm = algorithm
        self._hash = checksum.new_hasher(algorithm)
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def writable(self) -> bool:
        return True

    def digest(self) -> FileDigest:
        return FileDigest(self.bytes, checksum.label(self._algorithm, self._hash))


def temporary_name(path: str) -> str:
    """A hidden, unique temporary path beside `path`, in the same folder (so rename is atomic)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def commit_temporary(temp: str, path: str, *, durable: bool = True) -> None:
    """Give a finished temporary file its final name, flushed to disk first when `durable`
    (a file staged only to be uploaded elsewhere need not reach this disk)."""
    if durable:
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temp, path)
    if durable:
        _fsync_folder(os.path.dirname(path))


def discard_temporary(temp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(temp)


@contextlib.contextmanager
def temporary_path(path: str, *, durable: bool = True) -> Iterator[str]:
    """Yield a temporary path; on success it is committed as `path`, on failure removed."""
    temp = temporary_name(path)
    try:
        yield temp
        commit_temporary(temp, path, durable=durable)
    except BaseException:
        discard_temporary(temp)
        raise


def check_output(path: str, flag: str, *, overwrite: bool) -> None:
    """Refuse to replace a file a user made before (a trained model, predictions, a preview)
    unless `overwrite`: preprocess protects DEST, and an output file is protected the same way.

    Raises:
        ConfigError: `path` exists and `overwrite` is False, or it is a folder.
    """
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; name a file")
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_write(path: str, *, durable: bool = True) -> Iterator[HashingWriter]:
    """Write `path` atomically; the yielded writer's `digest()` describes what was written."""
    with temporary_path(path, durable=durable) as temp, open(temp, "wb") as raw:
        writer = HashingWriter(raw)
        yield writer
        raw.flush()


def write_bytes_atomically(path: str, data: bytes) -> FileDigest:
    """Write small files (manifest, index, rejects) atomically."""
    with atomic_write(path) as writer:
        writer.write(data)
    return writer.digest()


def digest_file(path: str, algorithm: str = checksum.DEFAULT) -> FileDigest:
    """Hash a regular file on disk, in chunks, for verification and resume."""
    with open_regular(path) as handle:
        return digest_stream(handle, algorithm)


def digest_stream(handle: BinaryIO, algorithm: str = checksum.DEFAULT) -> FileDigest:
    """Hash what a readable binary stream holds (a local file or an object-storage stream)."""
    digest = checksum.new_hasher(algorithm)
    size = 0
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return FileDigest(size, checksum.label(algorithm, digest))


class NotRegularFileError(OSError):
    """A path that must be a regular file is a FIFO, socket, device, folder or symlink."""


def open_regular(path: str, *, follow_symlinks: bool = False) -> BinaryIO:
    """Open `path` for reading only if it is a regular file; through a symlink only when
    `follow_symlinks` (inputs may be symlinked; DEST's own files never are).

    The checks are made on the opened descriptor, so a file swapped for a FIFO between a check
    and the open cannot block the caller: O_NONBLOCK makes opening a FIFO return at once, and
    O_NOFOLLOW refuses a symlink (which could point outside DEST, or at /dev/zero). A followed
    symlink to /dev/zero is refused by the descriptor's type.

    Raises:
        FileNotFoundError: nothing is there.
        NotRegularFileError: something other than a regular file is there.
    """
    descriptor, _ = open_regular_descriptor(path, follow_symlinks=follow_symlinks)
    try:
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def open_regular_descriptor(path: str, *, follow_symlinks: bool = False) -> tuple[int, int]:
    """`open_regular` as a raw descriptor and the file's size: what reading a whole input needs
    (`read_descriptor`), without the ~5 us a Python file object adds to each ~9 us read of an
    ImageNet-sized file. Regular files ignore O_NONBLOCK, so the descriptor reads as a blocking
    one; the caller closes it.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        refused = (errno.ENXIO, errno.EISDIR) if follow_symlinks else (errno.ELOOP, errno.ENXIO, errno.EISDIR)
        if exc.errno in refused and os.path.lexists(path):
            raise NotRegularFileError(exc.errno, _kind(path, follow_symlinks=follow_symlinks), path) from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFileError(errno.EINVAL, _kind(path, status.st_mode), path)
        return descriptor, status.st_size
    except BaseException:
        os.close(descriptor)
        raise


def read_descriptor(descriptor: int, size: int, limit: int) -> bytes:
    """The bytes of an open file from its position to its end, but at most `limit`.

    Reads are sized by the file's `size` (plus one, so a file that kept its size ends in the
    second, empty read), never by `limit`: `read(limit)` allocates `limit` bytes before it
    reads, and with the default 256 MiB input limit that cost ~30 us of every ~9 us read of an
    ImageNet-sized file on the bench machine, ~100 us on the reading threads, where the
    allocations contend.
    """
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = os.read(descriptor, min(limit - total, max(size + 1 - total, 1 << 16)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _kind(path: str, mode: int | None = None, *, follow_symlinks: bool = False) -> str:
    if mode is None:
        try:
            mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
        except OSError:
            return "not a regular file"
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return f"not a regular file ({name})"
    return "not a regular file"


def regular_size(path: str) -> int | None:
    """The size of a regular file at `path` (symlinks not followed); None when absent.

    Raises:
        NotRegularFileError: something other than a regular file is there.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(status.st_mode):
        raise NotRegularFileError(errno.EINVAL, _kind(path, status.st_mode), path)
    return status.st_size


def remove_temporaries(folder: str) -> int:
    """Delete temporary files a crashed run left behind; returns how many."""
    removed = 0
    for entry in os.scandir(folder):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)
            removed += 1
    return removed


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        handle = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
