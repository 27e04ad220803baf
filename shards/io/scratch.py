"""The scratch folder, TMPDIR: where a run's listing spills its parts and Ray keeps its session.

Python's `tempfile` quietly falls back to /tmp when TMPDIR cannot be written, but Ray does not:
a read-only TMPDIR got through the listing and then failed Ray's start with a 34-line
traceback, after DEST was claimed. A full one ended the listing's regroup in a 44-line one. So
the folder is checked before anything else, and running out of it mid-listing is said in one
line that names it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator

from shards.errors import ShardsError

#: What running out of, or being refused, the scratch folder looks like.
SCRATCH_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def scratch_folder() -> str:
    """The folder TMPDIR names (as Ray reads it), else the system's temporary folder."""
    return os.environ.get("TMPDIR") or tempfile.gettempdir()


def check_scratch() -> None:
    """Refuse a scratch folder that cannot be written, before a run starts anything.

    Raises:
        ShardsError: one line naming the folder and why.
    """
    folder = scratch_folder()
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0")
            probe.flush()
    except OSError as exc:
        raise scratch_error(exc, folder) from None


def scratch_error(exc: OSError, folder: str | None = None) -> ShardsError:
    """`exc`, met while writing to the scratch folder, as one line a user can act on."""
    folder = folder or scratch_folder()
    cause = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot be written"
    return ShardsError(
        f"TMPDIR {folder} {cause} ({exc.strerror or exc}): a run's listing and Ray keep their working "
        "files there; free some space or set TMPDIR to another folder"
    )


@contextlib.contextmanager
def spilling() -> Iterator[None]:
    """Writes to temporary files of the scratch folder: running out of room, or being refused
    it, is the one-line `scratch_error` (not the traceback, nor an error about SRC).

    Raises:
        ShardsError: the scratch folder is full or cannot be written.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in SCRATCH_ERRORS:
            raise
        raise scratch_error(exc) from None
