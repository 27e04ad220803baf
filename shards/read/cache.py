"""A bounded local cache of the shards of a DEST in object storage.

The reader memory-maps shards from local disk; for an s3:// or gs:// DEST this cache downloads
them there first, checks every file's checksum against the manifest, keeps at most `limit` bytes
and evicts the least recently used shards that the current read order does not need soon.

The order matters: a global shuffle touches every shard in every batch, so no cache smaller
than the dataset could serve it. Readers of a cached dataset therefore shuffle within windows
of `window` shards (see `sampling.window_order`), and the cache holds the current window plus
the next `prefetch` shards of the order, downloading those in the background while the current
window is read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from shards.errors import ConfigError, ManifestError
from shards.formats import ShardInfo
from shards.io import storage
from shards.io.fileio import TEMP_PREFIX, FileDigest, HashingWriter
from shards.io.location import Location

T = TypeVar("T")
DOWNLOAD_THREADS = 4
COPY_CHUNK = 8 * 1024 * 1024


class ShardCache:
    """Downloads, verifies, keeps and evicts shards of one remote DEST in a local folder.

    Attributes:
        window: shards per shuffle window that fit beside the prefetched ones.
        prefetch: shards downloaded ahead of the current window.
        peak_bytes: the most bytes the folder held (or had reserved for downloads) at once.
        downloads: shards downloaded so far.
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
        self._folder = self._make_folder(folder, place.root, run_key)
        self._resident: collections.OrderedDict[int, int] = collections.OrderedDict()  # LRU: shard -> bytes
        self._loading: dict[int, concurrent.futures.Future[None]] = {}
        self._reserved = 0
        self._schedule: list[int] = []
        self._schedule_position: dict[int, int] = {}
        self._pointer = 0
        self._lock = threading.RLock()
        self._pool = concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="shards-cache")
        self._adopt_existing()

    def _make_folder(self, folder: str | None, root: str, run_key: str) -> str:
        if folder is None:
            made = tempfile.mkdtemp(prefix="shards-cache-", dir=os.environ.get("SHARDS_CACHE_DIR"))
            weakref.finalize(self, shutil.rmtree, made, True)
            return made
        # One sub-folder per run, so one cache folder can serve several datasets.
        named = os.path.join(folder, hashlib.sha256(f"{root}\n{run_key}".encode()).hexdigest()[:16])
        os.makedirs(named, exist_ok=True)
        return named

    def _adopt_existing(self) -> None:
        """Shards a previous reader left in a named folder count as cached (their files were only
        renamed into place after their digests matched); the rest of the folder is cleared."""
        wanted = {
            name: (index, digest.bytes) for index, s in enumerate(self._shards) for name, digest in s.files.items()
        }
        for entry in os.scandir(self._folder):
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name not in wanted or entry.stat().st_size != wanted[entry.name][1]:
                os.remove(entry.path)
        for index, shard in enumerate(self._shards):
            if all(os.path.isfile(os.path.join(self._folder, n)) for n in shard.files):
                self._resident[index] = shard.bytes
        with self._lock:
            self._make_room(0, protected=set(), force=True)

    @property
    def held_bytes(self) -> int:
        """Bytes on disk plus bytes reserved for downloads in flight."""
        return sum(self._resident.values()) + self._reserved

    def schedule(self, order: Sequence[int]) -> None:
        """The shards a new read will use, in order of first use; starts prefetching."""
        with self._lock:
            self._schedule = list(order)
            self._schedule_position = {shard: i for i, shard in enumerate(self._schedule)}
            self._pointer = 0
            self._prefetch_ahead()

    def order_key(self, shard: int) -> int:
        """Where `shard` comes in the scheduled order (unscheduled shards last), so one batch
        that spans two windows reads the earlier window's shards before moving on."""
        return self._schedule_position.get(shard, len(self._schedule))

    def open(self, shard: int, opener: Callable[[str], T]) -> T:
        """Make `shard` local (waiting for its download if needed) and call `opener(folder)` while
        it cannot be evicted."""
        while True:
            pending = self._request(shard)
            if pending is not None:
                pending.result()
            with self._lock:
                if shard in self._resident:
                    self._resident.move_to_end(shard)
                    return opener(self._folder)

    def _request(self, shard: int) -> concurrent.futures.Future[None] | None:
        with self._lock:
            position = self._schedule_position.get(shard)
            if position is not None and position > self._pointer:
                self._pointer = position
            pending = None
            if shard not in self._resident:
                pending = self._loading.get(shard) or self._start(shard, demanded=True)
            self._prefetch_ahead()
            return pending

    def _protected(self) -> set[int]:
        """The current window of the schedule and the prefetched shards after it."""
        if not self._schedule:
            return set()
        first = self._pointer // self.window * self.window
        return set(self._schedule[first : first + self.window + self.prefetch])

    def _prefetch_ahead(self) -> None:
        protected = self._protected()
        for shard in self._schedule[self._pointer // self.window * self.window :]:
            if shard not in protected:
                break
            if (
                shard not in self._resident
                and shard not in self._loading
                and self._start(shard, demanded=False) is None
            ):
                break

    def _start(self, shard: int, *, demanded: bool) -> concurrent.futures.Future[None] | None:
        size = self._shards[shard].bytes
        if not self._make_room(size, protected=self._protected() | {shard}, force=demanded):
            return None
        self._reserved += size
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        future = self._loading[shard] = self._pool.submit(self._download, shard)
        return future

    def _make_room(self, size: int, *, protected: set[int], force: bool) -> bool:
        """Evict least recently used shards until `size` more bytes fit; shards in `protected`
        go only when `force` (a shard needed now always gets its room)."""
        for allowed in (False, True) if force else (False,):
            for shard in list(self._resident):
                if self.held_bytes + size <= self.limit:
                    return True
                if allowed or shard not in protected:
                    self._evict(shard)
        return self.held_bytes + size <= self.limit or force

    def _evict(self, shard: int) -> None:
        del self._resident[shard]
        for name in self._shards[shard].files:
            try:
                os.remove(os.path.join(self._folder, name))
            except FileNotFoundError:
                pass
        if self.on_evict is not None:
            self.on_evict(shard)

    def _fetch(self, name: str, temp: str, algorithm: str) -> FileDigest:
        """Stream one object to local disk, hashing it on the way (no second read)."""
        with self._place.open(name) as source, open(temp, "wb") as sink:
            writer = HashingWriter(sink, algorithm)
            shutil.copyfileobj(source, writer, COPY_CHUNK)
        return writer.digest()

    def _download(self, shard: int) -> None:
        info = self._shards[shard]
        complete = False
        try:
            for name, expected in sorted(info.files.items()):
                temp = os.path.join(self._folder, f"{TEMP_PREFIX}{shard}-{name}")
                try:
                    found = storage.retried(
                        functools.partial(self._fetch, name, temp, expected.algorithm),
                        f"downloading {self._place.root}/{name}",
                    )
                except FileNotFoundError:
                    raise ManifestError(f"{self._place.root}/{name}: shard object is missing") from None
                if found != expected:
                    os.remove(temp)
                    raise ManifestError(
                        f"{self._place.root}/{name}: downloaded {found.bytes} bytes whose {expected.algorithm} "
                        "differs from the manifest; the object was changed or damaged"
                    )
                os.replace(temp, os.path.join(self._folder, name))
            complete = True
        finally:
            with self._lock:
                self._reserved -= info.bytes
                del self._loading[shard]
                if complete:
                    self._resident[shard] = info.bytes
                    self.downloads += 1
