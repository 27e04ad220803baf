"""Opening a shard's files for reading: regular files inside DEST only, bound to one run.

A dataset opens its shards lazily, long after it read the manifest. If another run replaced DEST
in between (`--overwrite`), a file under the same name may hold that run's samples, even with
the same size. So when a local dataset opens, it records the inode of every shard file from one
listing of DEST, taken between two looks at the manifest that agree. A shard file opened later
must still be that inode and have the size the manifest gives (and, with `verify`, its checksum).
A reader therefore keeps reading the run it opened (files it has mapped stay readable after
they are unlinked) or fails with one line; it never mixes two runs.

Only regular files are opened, never through a symlink: a FIFO would block the reader for ever,
and a symlink could point outside DEST.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from shards.errors import ManifestError
from shards.formats import ShardInfo
from shards.io.fileio import NotRegularFileError, digest_stream, open_regular
from shards.layout.manifest import MANIFEST, Manifest

BIND_ATTEMPTS = 3


class RunFiles:
    """The shard files of one run in a folder, as they were when the run was opened.

    Args:
        folder: where the shard files are.
        shards: the manifest's shards.
        inodes: each shard's files' inodes, in sorted file-name order (0: absent); None skips
            the binding (a cache folder whose files were checked by hash when downloaded).
        verify: hash every file when it is first opened and compare with the manifest.
    """

    def __init__(
        self, folder: str, shards: list[ShardInfo], inodes: list[tuple[int, ...]] | None = None, *, verify: bool = False
    ) -> None:
        self.folder = folder
        self.verify = verify
        # Flat, with each shard's first entry: 8 bytes a file, for runs of a million shards.
        self._inodes = None if inodes is None else np.array([i for row in inodes for i in row], np.uint64)
        self._first = np.cumsum([0] + [len(info.files) for info in shards])

    def open(self, shard: int, info: ShardInfo) -> dict[str, BinaryIO]:
        """Each file of `info`, opened and checked; the caller closes them.

        Raises:
            ManifestError: a file is missing, not a regular file, replaced since the run was
                opened, of the wrong size, or (with `verify`) of the wrong checksum.
        """
        handles: dict[str, BinaryIO] = {}
        try:
            for column, name in enumerate(sorted(info.files)):
                path = os.path.join(self.folder, name)
                handles[name] = handle = _open_shard_file(path)
                status = os.fstat(handle.fileno())
                if self._inodes is not None and status.st_ino != int(self._inodes[self._first[shard] + column]):
                    raise ManifestError(
                        f"{path}: replaced since {self.folder} was opened (another run "
                        "wrote DEST); open the dataset again"
                    )
                expected = info.files[name]
                if status.st_size != expected.bytes:
                    raise ManifestError(
                        f"{path}: is {status.st_size:,} bytes, the manifest says "
                        f"{expected.bytes:,} (damaged or replaced; run `shards verify`)"
                    )
                if self.verify:
                    if digest_stream(handle, expected.algorithm) != expected:
                        raise ManifestError(
                            f"{path}: checksum mismatch ({expected.algorithm} differs from the manifest)"
                        )
                    handle.seek(0)
            return handles
        except BaseException:
            for handle in handles.values():
                handle.close()
            raise


def bind_run(folder: str, load: Callable[[], Manifest], *, verify: bool = False) -> tuple[Manifest, RunFiles]:
    """Load a run's manifest with `load` and record its shard files' inodes, consistently.

    The listing counts only if manifest.json is the same file before and after it: a run that
    commits (or an `--overwrite` that removes the manifest) in between makes us look again.

    Raises:
        ManifestError: the manifest kept changing, or `load`'s own errors.
    """
    manifest_path = os.path.join(folder, MANIFEST)
    for _ in range(BIND_ATTEMPTS):
        before = _identity(manifest_path)
        manifest = load()
        with os.scandir(folder) as entries:
            found = {entry.name: entry.inode() for entry in entries if entry.is_file(follow_symlinks=False)}
        if before is not None and before == _identity(manifest_path):
            inodes = [tuple(found.get(name, 0) for name in sorted(info.files)) for info in manifest.shards]
            return manifest, RunFiles(folder, manifest.shards, inodes, verify=verify)
    raise ManifestError(
        f"{folder}: DEST kept changing while it was opened (a run is writing it); open it once that run has finished"
    )


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def _open_shard_file(path: str) -> BinaryIO:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: shard file is missing") from None
    except NotRegularFileError as exc:
        raise ManifestError(f"{path}: {exc.strerror}; shards reads only regular files inside DEST") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open shard file ({exc.strerror or exc})") from None
