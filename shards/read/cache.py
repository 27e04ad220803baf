"""A node's bounded cache of the shards of a DEST in object storage, shared by its readers.

The reader memory-maps shards from local disk; for an s3:// or gs:// DEST this cache downloads
them there first and checks every file's checksum against the manifest. Every process of a node
that reads the run (its ranks, their DataLoader or grain workers, forked or spawned) shares one
folder, `CacheFolder`, so a shard is downloaded once for the node, the limit is the node's, and a
process killed mid-download leaves nothing another one trusts.

The order matters: a global shuffle touches every shard in every batch, so no cache smaller
than the dataset could serve it. Readers of a cached dataset therefore shuffle within windows
of `window` shards (see `sampling.window_order`). Each reader pins the shards of its current
window and the next `prefetch` shards of its own schedule (the shards its rank and loader
worker read, in order), downloading those in the background while the window is read. Each
reader also publishes the next shards of its schedule (`CacheFolder.publish_needs`). A pinned
shard is never evicted, nor one that another live reader of the node will read; to make room, a
reader evicts other runs' shards first, then its own run's by its schedule: shards it has passed
or will not read, then those it needs last. When that is not enough (readers of the node far
apart in the epoch), a shard needed now is still fetched, and a warning gives the figures: the
limit gives way before a shard is fetched twice or a reader stalls. A reader that stops mid-epoch
keeps its needs published until it reads another epoch or its process ends.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

from shards.errors import ConfigError, ManifestError
from shards.formats import ShardInfo
from shards.io import storage
from shards.io.fileio import FileDigest, HashingWriter
from shards.io.location import Location
from shards.read.cache_folder import CacheFolder, unlock

T = TypeVar("T")
DOWNLOAD_THREADS = 4
NEEDS_HORIZON = 256  # shards of a reader's schedule it tells the node's other readers about
COPY_CHUNK = 8 * 1024 * 1024
logger = logging.getLogger(__name__)
_caches: weakref.WeakSet[ShardCache] = weakref.WeakSet()


def default_root() -> str:
    """The node's cache folder: $SHARDS_CACHE_DIR, else one a user in the system's temp folder."""
    return os.environ.get("SHARDS_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"shards-cache-{os.getuid()}")


class ShardCache:
    """Downloads, verifies, pins and evicts the shards of one remote DEST in the node's cache.

    Attributes:
        window: shards per shuffle window that fit beside the prefetched ones.
        prefetch: shards downloaded ahead of the current window.
        limit: the bytes the node's cache folder may hold.
        peak_bytes: the most bytes this process saw the folder hold (or reserve) at once.
        downloads: shards this process downloaded.
    """

    def __init__(
        self,
        place: Location,
        shards: Sequence[ShardInfo],
        *,
        run_key: str,
        limit: int,
        folder: str | None = None,
        prefetch: int = 2,
    ) -> None:
        largest = max((s.bytes for s in shards), default=0)
        capacity = limit // largest if largest else len(shards)
        if capacity < 2:
            raise ConfigError(
                f"cache limit of {limit:,} bytes holds fewer than two shards of up to "
                f"{largest:,} bytes; raise cache_limit or write smaller shards (--shard-size)"
            )
        self.prefetch = max(0, min(prefetch, capacity - 1))
        self.window = capacity - self.prefetch
        self.limit = limit
        self.peak_bytes = 0
        self.downloads = 0
        self.on_evict: Callable[[int], object] | None = None
        self._place = place
        self._shards = list(shards)
        root = folder if folder is not None else default_root()
        # One sub-folder per run, so one node folder serves several datasets under one limit.
        name = hashlib.sha256(f"{place.root}\n{run_key}".encode()).hexdigest()[:16]
        try:
            os.makedirs(root, exist_ok=True)
            self._folder = CacheFolder(root, name, [{n: d.bytes for n, d in s.files.items()} for s in shards])
        except OSError as exc:
            raise ConfigError(
                f"cache folder {root}: {exc.strerror or exc}; give cache_dir= (or SHARDS_CACHE_DIR) a folder "
                "this process can write"
            ) from None
        self._schedule: list[int] = []
        self._reading: tuple[str, str, dict[str, list[int]]] | None = None
        self._schedule_position: dict[int, int] = {}
        self._group_bounds: list[tuple[int, int]] = []  # by schedule index: its window's [first, end)
        self._pointer = 0
        self._warned = False
        self._fresh_process_state()
        _caches.add(self)

    def _fresh_process_state(self) -> None:
        """What belongs to one process: its pins, its downloads in flight, its threads."""
        self._pins: dict[int, int] = {}  # shard -> descriptor holding a shared lock on its pin
        self._extra: OrderedDict[int, None] = OrderedDict()  # pinned for unscheduled reads
        self._ready: set[int] = set()  # pinned shards seen complete on disk
        self._loading: dict[int, concurrent.futures.Future[None]] = {}
        self._pinned_window = -1
        self._record_name = f"{os.getpid()}-{id(self)}"
        self._lock = threading.RLock()
        self._pool = concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="shards-cache")
        # This process's pins and needs end with the cache (or the process).
        self._finalizers: list[weakref.finalize] = [
            weakref.finalize(self, _unpin_all, self._pins),
            weakref.finalize(self, self._folder.withdraw_needs, self._record_name),
        ]

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker): the parent's pins stay the parent's (their
        descriptors are closed here, which leaves the parent's locks), and its threads and
        downloads in flight did not come along."""
        for finalizer in self._finalizers:
            finalizer.detach()  # the parent's: they would release its pins and withdraw its needs
        for descriptor in self._pins.values():
            os.close(descriptor)
        self._fresh_process_state()

    @property
    def folder(self) -> str:
        """This run's folder in the node's cache."""
        return self._folder.path

    def schedule(
        self,
        order: Sequence[int],
        windows: Sequence[int] | None = None,
        reading: tuple[str, str, dict[str, list[int]]] | None = None,
    ) -> None:
        """The shards this process's next read uses, in order of first use, and the shuffle
        window each belongs to (non-decreasing; default: each shard alone); starts prefetching.

        The reader needs the shards of the window it is in together (a window's samples are
        shuffled across them), and none of the windows before it again. `reading` is (pass,
        this reader's name, the schedules of the node's other readers of the pass): until one of
        those starts and publishes its own needs, its shards are kept for it."""
        with self._lock:
            self._reading = reading
            self._schedule = list(order)
            self._schedule_position = {shard: i for i, shard in enumerate(self._schedule)}
            groups = list(windows) if windows is not None else list(range(len(self._schedule)))
            self._group_bounds = []
            first = 0
            for index in range(1, len(groups) + 1):
                if index == len(groups) or groups[index] != groups[first]:
                    self._group_bounds += [(first, index)] * (index - first)
                    first = index
            self._pointer = 0
            self._pinned_window = -1
            self._advance()

    def order_key(self, shard: int) -> int:
        """Where `shard` comes in the scheduled order (unscheduled shards last), so one batch
        that spans two windows reads the earlier window's shards before moving on."""
        return self._schedule_position.get(shard, len(self._schedule))

    def open(self, shard: int, opener: Callable[[str], T]) -> T:
        """Make `shard` local (waiting for its download if needed) and call `opener(folder)`
        while it is pinned."""
        with self._lock:
            position = self._schedule_position.get(shard)
            if position is not None and position > self._pointer:
                self._pointer = position
            self._advance()
            if shard not in self._pins:  # an unscheduled read: pinned beside the window, a few at most
                self._pin(shard)
                self._extra[shard] = None
                while len(self._extra) > max(1, self.window):
                    oldest = next(iter(self._extra))
                    del self._extra[oldest]
                    if oldest not in self._protected():
                        self._unpin(oldest)
        self._make_local(shard)
        return opener(self._folder.path)

    # Pins -----------------------------------------------------------------------------------------

    def _window(self) -> tuple[int, int]:
        """The schedule's indices [first, end) of the window the read is in."""
        return self._group_bounds[self._pointer] if self._schedule else (0, 0)

    def _protected(self) -> set[int]:
        """The current window of the schedule and the prefetched shards after it."""
        first, end = self._window()
        return set(self._schedule[first : end + self.prefetch])

    def _advance(self) -> None:
        """Pin the window the pointer is in (and the prefetch after it), unpin what it left, and
        start the downloads it needs. Called with `_lock` held."""
        window = self._window()[0] if self._schedule else -1
        if window != self._pinned_window:
            self._pinned_window = window
            upcoming = self._schedule[max(window, 0) : max(window, 0) + NEEDS_HORIZON]
            self._folder.publish_needs(self._record_name, upcoming, self._reading, NEEDS_HORIZON)
            wanted = self._protected() | set(self._extra)
            for shard in [s for s in self._pins if s not in wanted]:
                self._unpin(shard)
            for shard in sorted(wanted - set(self._pins), key=self.order_key):
                self._pin(shard)
        self._prefetch_ahead()

    def _pin(self, shard: int) -> None:
        self._pins[shard] = self._folder.pin(shard)

    def _unpin(self, shard: int) -> None:
        """Let `shard` go: its pin, and this process's reader of it (its memory map would keep
        the evicted file's blocks on disk)."""
        unlock(self._pins.pop(shard))  # for every copy a fork made of it, too
        self._ready.discard(shard)
        self._extra.pop(shard, None)
        if self.on_evict is not None:
            self.on_evict(shard)

    def _prefetch_ahead(self) -> None:
        first, end = self._window()
        for shard in self._schedule[first : end + self.prefetch]:
            if shard in self._ready or shard in self._loading:
                continue
            if self._folder.is_complete(shard):
                self._ready.add(shard)
            elif self._start(shard, demanded=False) is _NO_ROOM:
                break

    # Downloads ------------------------------------------------------------------------------------

    def _make_local(self, shard: int) -> None:
        """Return once the pinned `shard` is complete on disk, downloading it here or waiting for
        the process that does; a failed download raises here."""
        while True:
            with self._lock:
                if shard in self._ready:
                    return
                pending: concurrent.futures.Future[None] | object | None = self._loading.get(shard)
                if pending is None:
                    if self._folder.is_complete(shard):
                        self._ready.add(shard)
                        return
                    pending = self._start(shard, demanded=True)
            if pending is None:  # another process downloads it
                self._folder.wait_for_claim(shard)
            elif isinstance(pending, concurrent.futures.Future):
                pending.result()

    def _start(self, shard: int, *, demanded: bool) -> concurrent.futures.Future[None] | object | None:
        """Claim and start downloading `shard`: its future; None when another process has the
        claim; `_NO_ROOM` for a prefetch the limit has no room for. Called with `_lock` held."""
        size = self._shards[shard].bytes
        with self._folder.node_lock():
            if not self._make_room(size, force=demanded):
                return _NO_ROOM
            descriptor = self._folder.claim(shard, size)
        if descriptor is None:
            return None
        future = self._loading[shard] = self._pool.submit(self._download, shard, descriptor)
        return future

    def _make_room(self, size: int, *, force: bool) -> bool:
        """Evict shards no reader pins or needs until `size` more bytes fit under the limit:
        other runs' first, then this run's by this reader's schedule (passed or unscheduled
        first, then the one it needs last). Without room, a demanded shard (`force`) is fetched
        anyway. Called under the node lock."""
        held = self._folder.held_bytes()
        if held + size > self.limit:
            first = self._window()[0]
            ours = self._folder.path

            needed = self._folder.readers_needs(exclude=self._record_name)

            def rank(victim: tuple[str, int, list[str]]) -> tuple[int, int]:
                run, shard, _ = victim
                if run != ours:
                    return (0, 0)
                position = self._schedule_position.get(shard, -1)
                return (0, 0) if position < first else (1, -position)  # then the one I need last

            # A shard another reader of the node still needs stays: evicting it would fetch it twice.
            victims = [
                v for v in self._folder.resident() if not (v[0] == ours and (v[1] in self._pins or v[1] in needed))
            ]
            for run, shard, names in sorted(victims, key=rank):
                held -= self._folder.evict(run, shard, names)
                if held + size <= self.limit:
                    break
        if held + size > self.limit:
            if not force:
                return False
            if not self._warned:
                self._warned = True
                logger.warning(
                    "the node's readers of the cache %s pin or need more than its limit of %s bytes (%s held); "
                    "a shard needed now is fetched anyway; raise cache_limit or lower shuffle_window",
                    self._folder.root,
                    f"{self.limit:,}",
                    f"{held + size:,}",
                )
        self.peak_bytes = max(self.peak_bytes, held + size)
        return True

    def _fetch(self, name: str, temp: str, algorithm: str) -> FileDigest:
        """Stream one object to local disk, hashing it on the way (no second read)."""
        with self._place.open(name) as source, open(temp, "wb") as sink:
            writer = HashingWriter(sink, algorithm)
            shutil.copyfileobj(source, writer, COPY_CHUNK)
        return writer.digest()

    def _download(self, shard: int, claim: int) -> None:
        """Fetch and verify every file of `shard` that is not in place, then rename them into
        place and end the claim together, under the node lock: the folder's count never sees a
        shard's files and its reservation at once, nor half a shard."""
        complete = False
        verified: list[tuple[str, str]] = []
        try:
            for name, expected in sorted(self._shards[shard].files.items()):
                final = self._folder.file_path(name)
                if os.path.isfile(final) and os.path.getsize(final) == expected.bytes:
                    continue  # in place, hence verified (another process finished it meanwhile)
                temp = self._folder.temp_path(shard, name)
                verified.append((temp, final))  # removed below unless renamed into place
                try:
                    found = storage.retried(
                        functools.partial(self._fetch, name, temp, expected.algorithm),
                        f"downloading {self._place.root}/{name}",
                    )
                except FileNotFoundError:
                    raise ManifestError(f"{self._place.root}/{name}: shard object is missing") from None
                if found != expected:
                    raise ManifestError(
                        f"{self._place.root}/{name}: downloaded {found.bytes} bytes whose {expected.algorithm} "
                        "differs from the manifest; the object was changed or damaged"
                    )
            fetched = bool(verified)
            with self._folder.node_lock():
                for temp, final in verified:
                    os.replace(temp, final)
                verified.clear()
                self._folder.release(shard, claim)
                claim = -1
            self.downloads += fetched
            complete = True
        finally:
            for temp, _ in verified:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temp)
            if claim >= 0:
                self._folder.release(shard, claim)
            with self._lock:
                del self._loading[shard]
                if complete and shard in self._pins:
                    self._ready.add(shard)


_NO_ROOM = object()


def _unpin_all(pins: dict[int, int]) -> None:
    for descriptor in pins.values():
        try:
            unlock(descriptor)
        except OSError:
            pass
    pins.clear()


def _reset_after_fork() -> None:
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
