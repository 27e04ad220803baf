"""One node's cache folder: the files and locks through which every reader process on a node
shares one copy of each shard.

A DataLoader's workers, the ranks of a node, grain workers and tf.data readers are separate
processes, started by fork or spawn, and any of them may be killed at any moment. So nothing here
lives in a process's memory; everything is a file, and every claim is a `flock`, which the kernel
drops when its holder dies:

- `<root>/.lock`: held (exclusive) for the moment a process counts the folder and makes room, so
  two processes never both decide that the same free bytes are theirs.
- `<run>/.claim-<shard>`: an exclusive lock on it is the right to download the shard; its text
  is the bytes reserved. A waiting reader takes a shared lock, which it gets once the download
  ended, well or not. A claim whose holder died is free to be taken again.
- `<run>/.pin-<shard>`: every process reading a shard, or about to, holds a shared lock on it.
  Eviction takes it exclusively without waiting, so a pinned shard is never evicted.
- `<run>/.shards.json`: which files make up which shard, so a reader of another run can evict
  this one's shards when the node's limit needs the room.
- `<run>/<shard files>`: complete files, renamed into place only after their digest matched the
  manifest; a download in progress writes `.tmp-<shard>-<name>` beside them, which no reader
  trusts and the next claimant overwrites.

A lock file is unlinked only by a process holding it exclusively; a process that locks one
checks that its descriptor is still the file of that name, and opens it again otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence

from shards.io.fileio import TEMP_PREFIX

LOCK = ".lock"
SHARD_FILES = ".shards.json"
CLAIM_PREFIX = ".claim-"
PIN_PREFIX = ".pin-"
NEEDS_PREFIX = ".needs-"


def unlock(descriptor: int) -> None:
    """Drop a lock and close its descriptor. The unlock comes first: a process forked while the
    lock was held keeps a copy of the descriptor, and closing ours alone would leave the lock
    held until that child exits."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _lock_named(path: str, operation: int) -> int | None:
    """A descriptor of `path` (created if absent) locked with `operation`, checked to still be
    the file of that name; None when a non-blocking lock is held elsewhere."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, operation)
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        unlock(descriptor)  # unlinked between our open and our lock: take the new one


class CacheFolder:
    """One run's sub-folder of a node's cache root, and the root's node-wide accounting.

    Args:
        root: the node's cache folder (shared by every run read on the node).
        name: this run's sub-folder.
        shard_files: each shard's file names and their bytes, in shard order.
    """

    def __init__(self, root: str, name: str, shard_files: Sequence[dict[str, int]]) -> None:
        self.root = root
        self.path = os.path.join(root, name)
        self.shard_files = [dict(files) for files in shard_files]
        os.makedirs(self.path, exist_ok=True)
        record = os.path.join(self.path, SHARD_FILES)
        if not os.path.exists(record):
            temp = f"{record}.{os.getpid()}"
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump([sorted(files) for files in self.shard_files], handle)
            os.replace(temp, record)

    def file_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    def temp_path(self, shard: int, name: str) -> str:
        return os.path.join(self.path, f"{TEMP_PREFIX}{shard}-{name}")

    def is_complete(self, shard: int) -> bool:
        """Whether every file of `shard` is in place (each was verified before its rename)."""
        for name, size in self.shard_files[shard].items():
            try:
                if os.stat(self.file_path(name)).st_size != size:
                    return False
            except FileNotFoundError:
                return False
        return True

    @contextlib.contextmanager
    def node_lock(self) -> Iterator[None]:
        """The node-wide lock under which the folder is counted and room is made."""
        descriptor = os.open(os.path.join(self.root, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            unlock(descriptor)

    # Pins ---------------------------------------------------------------------------------------

    def pin(self, shard: int) -> int:
        """A shared lock that keeps `shard` from being evicted until the descriptor is closed (waits
        only while an eviction of it is under way)."""
        descriptor = _lock_named(os.path.join(self.path, f"{PIN_PREFIX}{shard}"), fcntl.LOCK_SH)
        assert descriptor is not None  # a blocking lock
        return descriptor

    # Claims -------------------------------------------------------------------------------------

    def claim(self, shard: int, reserve: int) -> int | None:
        """The right to download `shard` (a descriptor to pass to `release`), or None when a live
        process holds it. Call under `node_lock`, after making room for `reserve` bytes."""
        descriptor = _lock_named(self._claim_path(shard), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if descriptor is not None:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(reserve).encode(), 0)
        return descriptor

    def release(self, shard: int, descriptor: int) -> None:
        """End a claim (the download finished or failed): its waiters wake and look again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._claim_path(shard))
        unlock(descriptor)

    def wait_for_claim(self, shard: int) -> None:
        """Return once no process downloads `shard` (at once if none does)."""
        try:
            descriptor = os.open(self._claim_path(shard), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
        finally:
            unlock(descriptor)

    def _claim_path(self, shard: int) -> str:
        return os.path.join(self.path, f"{CLAIM_PREFIX}{shard}")

    # Readers' needs -------------------------------------------------------------------------------

    def publish_needs(
        self,
        reader: str,
        upcoming: Sequence[int],
        reading: tuple[str, str, dict[str, list[int]]] | None = None,
        horizon: int = 256,
    ) -> None:
        """Tell the node's other readers which shards `reader` (pid-id) reads next, in order, so
        none of them evicts a shard it still needs. `reading` is (pass, this reader's name in it,
        the other readers' of the node's schedules): kept for them until they start."""
        record: dict[str, object] = {"shards": list(upcoming)}
        if reading is not None:
            key, name, peers = reading
            record.update({"pass": key, "reader": name, "peers": {p: s[:horizon] for p, s in peers.items()}})
        path = os.path.join(self.path, f"{NEEDS_PREFIX}{reader}")
        temp = f"{path}.tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(temp, path)

    def withdraw_needs(self, reader: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.path, f"{NEEDS_PREFIX}{reader}"))

    def readers_needs(self, exclude: str) -> set[int]:
        """Every shard a reader of this run on the node still needs, but for `exclude`'s own:
        the upcoming shards of each live reader, and the schedules live readers published for
        readers of their pass that have not started yet. A record whose process ended is kept
        while its pass is read (it says that reader started), then removed."""
        records = []
        for entry in os.scandir(self.path):
            if not entry.name.startswith(NEEDS_PREFIX) or entry.name.endswith(".tmp"):
                continue
            try:
                with open(entry.path, encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, ValueError):
                continue
            owner = entry.name.removeprefix(NEEDS_PREFIX)
            records.append((entry.path, owner, _alive(int(owner.split("-", 1)[0])), record))
        live_passes = {r.get("pass") for _, _, alive, r in records if alive}
        started = {(r.get("pass"), r.get("reader")) for _, _, _, r in records}
        needed: set[int] = set()
        for path, owner, alive, record in records:
            if not alive:
                if record.get("pass") not in live_passes:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                continue
            if owner != exclude:
                needed.update(int(shard) for shard in record.get("shards", []))
            for peer, shards in record.get("peers", {}).items():
                if (record.get("pass"), peer) not in started:
                    needed.update(int(shard) for shard in shards)
        return needed

    # The node's accounting ----------------------------------------------------------------------

    def held_bytes(self) -> int:
        """Bytes of complete shard files in every run of the root, plus the bytes reserved by
        downloads in progress. Call under `node_lock`."""
        total = 0
        for run in _runs(self.root):
            for entry in os.scandir(run):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if not entry.name.startswith("."):
                    total += entry.stat(follow_symlinks=False).st_size
                elif entry.name.startswith(CLAIM_PREFIX):
                    total += _live_reservation(entry.path)
        return total

    def resident(self) -> list[tuple[str, int, list[str]]]:
        """(run folder, shard, file names) of every shard with a file on disk in the root."""
        found = []
        for run in _runs(self.root):
            try:
                with open(os.path.join(run, SHARD_FILES), encoding="utf-8") as handle:
                    files = json.load(handle)
            except (OSError, ValueError):
                continue
            present = {entry.name for entry in os.scandir(run) if not entry.name.startswith(".")}
            for shard, names in enumerate(files):
                if present.intersection(names):
                    found.append((run, shard, names))
        return found

    def evict(self, run: str, shard: int, names: list[str]) -> int:
        """Remove a shard's files if no process pins it; the bytes freed (0: it is pinned)."""
        pin_path = os.path.join(run, f"{PIN_PREFIX}{shard}")
        descriptor = _lock_named(pin_path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if descriptor is None:
            return 0
        freed = 0
        try:
            for name in names:
                path = os.path.join(run, name)
                with contextlib.suppress(FileNotFoundError):
                    freed += os.stat(path).st_size
                    os.remove(path)
            os.unlink(pin_path)
        finally:
            unlock(descriptor)
        return freed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs(root: str) -> list[str]:
    return [entry.path for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]


def _live_reservation(path: str) -> int:
    """The bytes a claim reserves while its holder lives (0 once it died or released it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a download in progress
            text = os.pread(descriptor, 32, 0)
            return int(text) if text.strip().isdigit() else 0
        return 0
    finally:
        unlock(descriptor)
