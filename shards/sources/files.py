"""Reading whole input files, local or in object storage, without trusting them.

Only regular files are read: a FIFO would block the reader for ever and /dev/zero would feed
it for ever, so files are opened as DEST's own are (`shards.io.fileio.open_regular`:
non-blocking, the type checked on the descriptor), except that symlinks are followed. No read is
unbounded: a file over `max_bytes` is refused from its size, and a read stops one byte past the
limit whatever the size said. Every failure is a DecodeError with a reason: the input becomes a
reject and the run goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import itertools
import os
from collections.abc import Iterator, Sequence

from shards.errors import DecodeError
from shards.io import storage
from shards.io.fileio import NotRegularFileError, open_regular_descriptor, read_descriptor
from shards.sources.inputs import Input

READ_THREADS = 4
READ_AHEAD = 16
LOCAL_BATCH = 4  # READ_AHEAD // LOCAL_BATCH batches in flight keep all READ_THREADS busy


def read_file(source: str, max_bytes: int) -> bytes:
    """The bytes of one input file or object, at most `max_bytes` of them.

    Raises:
        DecodeError: missing, unreadable, not a regular file, or over `max_bytes`.
    """
    if storage.is_remote(source):
        return _read_object(source, max_bytes)
    try:
        descriptor, size = open_regular_descriptor(source, follow_symlinks=True)
    except FileNotFoundError:
        raise DecodeError("broken symlink" if os.path.islink(source) else "file not found") from None
    except NotRegularFileError as exc:
        raise DecodeError("is a folder, not a file" if os.path.isdir(source) else str(exc.strerror)) from None
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


def too_large(size: int, max_bytes: int) -> str:
    """The reason for refusing an input by its size."""
    return f"{size:,} bytes, over the --max-input-bytes limit of {max_bytes:,}"


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read ({exc.strerror or exc})"


def _read_object(uri: str, max_bytes: int) -> bytes:
    filesystem, path = storage.resolve(uri)

    def read() -> bytes:
        with filesystem.open_input_file(path) as handle:
            size = handle.size()
            if size > max_bytes:
                raise DecodeError(too_large(size, max_bytes))
            return handle.read(size)

    try:
        return storage.retried(read, f"reading {uri}")
    except FileNotFoundError:
        raise DecodeError("object not found") from None
    except OSError as exc:
        raise DecodeError(f"cannot read ({str(exc).splitlines()[0]})") from exc


@dataclasses.dataclass(frozen=True)
class FileInputs:
    """Whole files or objects, read on a few threads a bounded window ahead of the decoder."""

    paths: Sequence[str]

    def read(self, max_bytes: int) -> Iterator[Input]:
        """Each input's bytes (or why it cannot be read), in order, so disk or network latency
        overlaps decoding.

        At most READ_AHEAD encoded files are in flight (plus the batch being handed out). File
        reads release the GIL, but each hand-off between threads costs CPU, so a thread reads
        local files LOCAL_BATCH at a time; object-storage requests, whose latency dwarfs that
        cost, go one by one. On the bench machine a cached ImageNet-sized file costs ~29 us of
        CPU read this way (~9 us of it the read itself): reading on the decoding thread instead
        saved too little (10-20 us an image, within noise) to give up the overlap that cold
        disks and network file systems need.
        """
        paths = self.paths
        batch = 1 if any(storage.is_remote(path) for path in paths) else LOCAL_BATCH
        batches = (paths[start : start + batch] for start in range(0, len(paths), batch))
        with concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="shards-read") as pool:
            window = collections.deque(
                pool.submit(_read_batch, first, max_bytes) for first in itertools.islice(batches, READ_AHEAD // batch)
            )
            while window:
                datas = window.popleft().result()
                window.extend(pool.submit(_read_batch, later, max_bytes) for later in itertools.islice(batches, 1))
                yield from datas


def _read_batch(paths: Sequence[str], max_bytes: int) -> list[Input]:
    results: list[Input] = []
    for path in paths:
        try:
            results.append(read_file(path, max_bytes))
        except DecodeError as exc:
            results.append(exc)
    return results
