"""One writer per DEST: a lock a preprocess run holds from before it touches DEST until it commits.

Without it, two runs into one DEST (two `--overwrite`s, say) both succeed and leave one run's
manifest beside the other's shards. The lock is `DEST/.shards.lock` and names its holder (host,
pid, start), so the run that is refused can say who holds it.

- A folder: the file is locked with flock(2). The kernel releases the lock when its holder
  exits, however it exits, so a crashed run never leaves a stale lock behind. NFSv4 and Lustre
  honour flock across clients; a file system that cannot lock at all gets a warning.
- s3://: the lock object is created with a conditional PUT (If-None-Match: *), which the store
  grants to exactly one writer. The holder refreshes it every `heartbeat` seconds (If-Match its
  own ETag). A lock not refreshed for `stale` seconds, by the store's own clock, was left by a
  crashed run: it is taken over with If-Match on that stale ETag, so two takers cannot both win,
  and the crashed run, if it was only paused, finds the lock gone and does not commit.
- gs://: pyarrow's GCS file system has no conditional writes; the run goes on unlocked, with a
  warning.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from shards.errors import DestinationError
from shards.io import storage
from shards.io.location import LocalLocation

logger = logging.getLogger(__name__)

LOCK_NAME = ".shards.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
TAKEOVER_ATTEMPTS = 5
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class DestLock:
    """A held lock; `check()` before committing, `release()` when done (or use `hold_dest`)."""

    def check(self) -> None:
        """Raise DestinationError if the lock was lost (only an object-storage lock can be)."""

    def release(self) -> None:
        """Give the lock up; DEST is left without the lock file."""


@contextlib.contextmanager
def hold_dest(dest: str, *, heartbeat: float = HEARTBEAT_SECONDS, stale: float = STALE_SECONDS) -> Iterator[DestLock]:
    """Lock DEST (a folder, created if needed, or an object-storage prefix) for one run.

    Raises:
        DestinationError: another run holds DEST, or DEST cannot be created or locked.
    """
    if storage.is_remote(dest):
        lock: DestLock = _ObjectLock(dest, heartbeat, stale) if dest.startswith("s3://") else _unlocked(dest)
    else:
        lock = _FolderLock(dest)
    try:
        yield lock
    finally:
        lock.release()


def holder_record() -> dict[str, Any]:
    """Who holds a lock, from when: what a refused run prints. The token makes each holder's
    body, and so its ETag (an MD5 of the body in S3), its own: two holders writing in the same
    second would otherwise share an ETag, and If-Match could not tell them apart."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_holder(data: bytes) -> str:
    try:
        record = json.loads(data.decode())
        return f"pid {record['pid']} on {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return "a holder that left no readable record"


class _FolderLock(DestLock):
    def __init__(self, folder: str) -> None:
        LocalLocation(folder).create()
        self._path = os.path.join(folder, LOCK_NAME)
        self._descriptor: int | None = None
        while self._descriptor is None:
            descriptor = self._open()
            if descriptor is None:
                return
            # The holder unlinks the file before it lets go: a lock won on an unlinked file is no lock.
            try:
                same = os.fstat(descriptor).st_ino == os.lstat(self._path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._descriptor = descriptor
            else:
                os.close(descriptor)
        try:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, json.dumps(holder_record()).encode(), 0)
        except OSError as exc:
            # The flock is the lock; the record only tells others who holds it. A full disk
            # leaves it empty, and the run reports the full disk where it writes for real.
            logger.info("%s: could not record the lock's holder (%s)", self._path, exc.strerror or exc)

    def _open(self) -> int | None:
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            descriptor = os.open(self._path, flags, 0o644)
        except OSError as exc:
            raise DestinationError(f"{self._path}: cannot create the DEST lock ({exc.strerror or exc})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.pread(descriptor, 4096, 0))
            os.close(descriptor)
            raise DestinationError(
                f"{os.path.dirname(self._path)}: DEST is in use by another shards run "
                f"({holder}); wait for it to finish or choose another DEST"
            ) from None
        except OSError as exc:
            os.close(descriptor)
            if exc.errno not in _NO_LOCKS:
                raise DestinationError(f"{self._path}: cannot lock DEST ({exc.strerror or exc})") from None
            logger.warning(
                "%s: the file system cannot lock files (%s); nothing stops another run "
                "from writing DEST at the same time",
                self._path,
                exc.strerror,
            )
            return None
        return descriptor

    def release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        os.close(self._descriptor)  # closing releases the flock
        self._descriptor = None


def _unlocked(dest: str) -> DestLock:
    logger.warning(
        "%s: gs:// prefixes cannot be locked (no conditional writes through pyarrow); "
        "make sure no other run writes this DEST at the same time",
        dest,
    )
    return DestLock()


class _ObjectLock(DestLock):
    def __init__(self, dest: str, heartbeat: float, stale: float) -> None:
        from botocore.exceptions import ClientError

        self._dest = dest
        bucket, _, prefix = dest.removeprefix("s3://").partition("/")
        self._bucket, self._key = bucket, f"{prefix.strip('/')}/{LOCK_NAME}".lstrip("/")
        self._client = storage.s3_client()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._record = holder_record()
        body = self._body()
        try:
            self._etag = self._client.put_object(Bucket=bucket, Key=self._key, Body=body, IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            if not _precondition_failed(exc):
                raise DestinationError(f"{dest}: cannot lock DEST ({_client_error(exc)})") from None
            self._etag = self._take_over_if_stale(body, stale)
        self._thread = threading.Thread(target=self._refresh, args=(heartbeat,), name="shards-dest-lock", daemon=True)
        self._thread.start()

    def _take_over_if_stale(self, body: bytes, stale: float) -> str:
        """Take the lock if its holder stopped refreshing it. The conditional PUT fails when the
        lock changed since we looked (its holder refreshed it, or another run took it): then we
        look again, and refuse as soon as it is fresh."""
        from botocore.exceptions import ClientError

        for _ in range(TAKEOVER_ATTEMPTS):
            try:
                current = self._client.get_object(Bucket=self._bucket, Key=self._key)
            except ClientError as exc:
                raise DestinationError(
                    f"{self._dest}: DEST is in use by another shards run, whose lock "
                    f"cannot be read ({_client_error(exc)})"
                ) from None
            holder = describe_holder(current["Body"].read())
            now = email.utils.parsedate_to_datetime(current["ResponseMetadata"]["HTTPHeaders"]["date"])
            age = (now - current["LastModified"]).total_seconds()
            if age <= stale:
                raise DestinationError(
                    f"{self._dest}: DEST is in use by another shards run ({holder}); wait "
                    "for it to finish or choose another DEST"
                )
            try:
                etag = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfMatch=current["ETag"])[
                    "ETag"
                ]
            except ClientError as exc:
                if not _precondition_failed(exc):
                    raise DestinationError(f"{self._dest}: cannot lock DEST ({_client_error(exc)})") from None
                continue  # the lock changed under us: look again
            logger.warning("%s: took over a lock not refreshed for %.0f s (%s)", self._dest, age, holder)
            return str(etag)
        raise DestinationError(
            f"{self._dest}: DEST is in use by another shards run (its lock kept changing "
            "while this run tried to take it over)"
        )

    def _refresh(self, heartbeat: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        while not self._stop.wait(heartbeat):
            try:
                self._etag = self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    IfMatch=self._etag,
                    Body=self._body(),
                )["ETag"]
            except ClientError as exc:
                if _precondition_failed(exc) or exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                    logger.error("%s: another run took over this run's DEST lock", self._dest)
                    self._lost.set()
                    return
                logger.warning("%s: refreshing the DEST lock failed (%s); trying again", self._dest, _client_error(exc))
            except BotoCoreError as exc:
                logger.warning("%s: refreshing the DEST lock failed (%s); trying again", self._dest, exc)

    def _body(self) -> bytes:
        # Each refresh changes the body, and so the ETag: a takeover racing with a refresh then
        # fails its If-Match and looks again, instead of taking a lock whose holder is alive.
        return json.dumps({**self._record, "refreshed": time.time()}).encode()

    def check(self) -> None:
        if self._lost.is_set():
            raise DestinationError(
                f"{self._dest}: another run took over DEST's lock while this run was "
                f"silent for over its stale limit; this run does not commit"
            )

    def release(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._stop.set()
        self._thread.join()
        if self._lost.is_set():
            return
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "%s: could not remove the DEST lock (%s); the next run takes it over once it is stale", self._dest, exc
            )


def _precondition_failed(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or exc.response.get(
        "ResponseMetadata", {}
    ).get("HTTPStatusCode") in (409, 412)


def _client_error(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"
