"""A finished run read back: memory-mapped shards behind one dataset, streamed in batches.

`RunReader` is the read Protocol (`shards.read.protocol`) over a run's shards; `shards.open`
hands out a `shards.dataset.ShardDataset`, which is this reader with the framework feeds
(`to_tf`, `to_keras`, `to_torch`) of the floor above added.

A reader holds a few batches, never the dataset: shards are memory-mapped (pages belong to the
OS cache), and a stream (`shards.read.stream`) gathers the next batches on a background thread
while training consumes the current one. How a stream orders and slices the data is one
`ReadSpec`; where it stands is a `ReadState`, so resuming is restoring it, checked.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from shards.errors import ConfigError
from shards.formats import get_format
from shards.formats.base import ShardReader
from shards.io.location import location
from shards.layout.index import read_run_index
from shards.layout.manifest import load_manifest
from shards.layout.shard_files import RunFiles, bind_run
from shards.options import numpy_dtype, parse_bytes
from shards.read.cache import ShardCache
from shards.read.sampling import Order, check_epoch, check_start, epoch_order, rank_batches, window_order
from shards.read.spec import ReadSpec, ReadState
from shards.read.stream import BatchStream, BufferPool, aligned_empty

DEFAULT_CACHE_LIMIT = "8GiB"


class RunReader:
    """A finished shards run, read-only: the read Protocol over its memory-mapped (or cached)
    shards. Open one with `shards.open`, which adds the framework feeds.

    Attributes:
        manifest: the validated manifest.
        shape: one sample's [H, W, C].
        dtype: the NumPy dtype of the images handed out.
        targets: the run's targets (kinds, classes); labels are handed out in their kind's form.
        classes: the class names of the first class or multi-label target.
    """

    def __init__(
        self,
        dest: str,
        *,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
        shuffle_window: int | None = None,
        verify: bool = False,
    ) -> None:
        self.dest = dest
        self._open_args = dict(
            cache_dir=cache_dir, cache_limit=cache_limit, shuffle_window=shuffle_window, verify=verify
        )
        self._place = location(dest)
        # The shard files: bound to the run in a local folder now; in object storage, the cache's
        # folder once it exists (the cache checks each download's sha256 against this manifest).
        self._files: RunFiles | None = None
        folder = self._place.local_root
        if folder is not None:
            self.manifest, self._files = bind_run(folder, lambda: load_manifest(dest), verify=verify)
        else:
            self.manifest = load_manifest(dest)
        self.shape = self.manifest.shape
        self.dtype = numpy_dtype(self.manifest.dtype)
        self.targets = self.manifest.targets
        self.classes = self.targets.classes
        self._columns: dict[str, Any] = {}
        self._format = get_format(self.manifest.format)
        self._offsets = np.cumsum([0] + [s.count for s in self.manifest.shards])
        self._readers: dict[int, ShardReader] = {}
        # The whole run as the in-memory caches hold it ("host": shard readers, "device":
        # tensors): shared by every view (split parts, run()), so a train and a validation part,
        # or a resumed epoch, load the run once.
        self._held: dict[str, Any] = {}
        self._subset: np.ndarray | None = None
        self.cache: ShardCache | None = None
        if folder is None:
            self.cache = ShardCache(
                self._place,
                self.manifest.shards,
                run_key=str(self.manifest.record.get("run_key")),
                limit=parse_bytes(cache_limit if cache_limit is not None else DEFAULT_CACHE_LIMIT, "cache_limit"),
                folder=cache_dir,
            )
            readers = self._readers  # not `self`: the cache must not keep the dataset alive
            self.cache.on_evict = lambda shard: readers.pop(shard, None)
        elif cache_dir is not None or cache_limit is not None:
            raise ConfigError(f"{dest}: cache_dir and cache_limit apply to an s3:// or gs:// DEST only")
        if shuffle_window is None and self.cache is not None:
            shuffle_window = self.cache.window
        #: shards per shuffle window; None shuffles the whole dataset at once.
        self.shuffle_window = shuffle_window

    def __len__(self) -> int:
        return self.manifest.count if self._subset is None else len(self._subset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        """Sample `index` as (image [H, W, C], targets): random access, so the dataset is a source
        for `grain.MapDataset.source(ds)` or a map-style `torch.utils.data.DataLoader`.

        Raises:
            IndexError: an index outside [-len, len).
            TypeError: an index that is not an integer.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        count = len(self)
        position = int(index) + count if index < 0 else int(index)
        if not 0 <= position < count:
            raise IndexError(f"index {index} is out of range for {count} samples")
        images, labels = self.read(np.array([position]))
        if isinstance(labels, dict):
            return images[0], {name: values[0] for name, values in labels.items()}
        return images[0], labels[0]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the run it opened and the part it is: another process (a DataLoader or
        grain worker, a Ray task) reopens it there, since memory maps and caches are per process.
        An `in_memory()` view arrives streaming the same samples."""
        return (_reopen, (type(self), self.dest, self._open_args, self._subset))

    def __copy__(self) -> RunReader:
        """A view sharing this one's manifest, readers and caches (not a reopening, as pickling is)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        return view

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.dest!r}, count={len(self)}, shape={list(self.shape)}, "
            f"dtype={self.manifest.dtype}, classes={len(self.classes)}, shards={len(self.manifest.shards)})"
        )

    def _reader(self, shard: int) -> ShardReader:
        if self.cache is not None:
            return self.cache.open(shard, lambda folder: self._open_reader(shard, folder))
        return self._open_reader(shard, self.dest)

    def _open_reader(self, shard: int, folder: str) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            info = self.manifest.shards[shard]
            if self._files is None:  # the cache's folder, first used now
                self._files = RunFiles(folder, self.manifest.shards)
            handles = self._files.open(shard, info)
            try:
                reader = self._format.open_reader(handles, info, self.shape, self.manifest.dtype, self.targets)
            finally:
                for handle in handles.values():
                    handle.close()  # a memory map keeps its own reference to the file
            self._readers[shard] = reader
        return reader

    def epoch_order(self, spec: ReadSpec, epoch: int) -> Order:
        """The order of epoch `epoch` over this dataset's positions: storage order, a global
        permutation (both computed batch by batch), or (with `spec.shuffle_window`) a
        permutation within windows of shards."""
        if not spec.shuffle or spec.shuffle_window is None:
            return epoch_order(len(self), shuffle=spec.shuffle, seed=spec.seed, epoch=epoch)
        return window_order(
            self._shard_of(np.arange(len(self))), seed=spec.seed, epoch=epoch, window=spec.shuffle_window
        )

    def schedule(
        self, order: Order, start: int = 0, spec: ReadSpec | None = None, part: tuple[int, int] | None = None
    ) -> None:
        """Tell the cache (if any) which shards this reader uses from `order[start:]`, in order of
        first use: with `spec`, only its rank's slice of each global batch (and with `part`, only
        its share of those batches), so a reader prefetches no shard that another rank reads.
        A local run has no cache, and nothing is computed."""
        if self.cache is None or start >= len(order):
            return
        if spec is None:
            used = self._first_used(np.asarray(order[start:]))
        else:
            used = self._first_used(_reader_positions(order, spec, start, part))
        # Each shard's shuffle window: its rank in the epoch's first-use order of shards, cut
        # in `shuffle_window`s (a window order reads its windows one after the other).
        everything = self._first_used(np.asarray(order))
        rank_of = np.empty(int(everything.max()) + 1 if len(everything) else 0, np.int64)
        rank_of[everything] = np.arange(len(everything))
        window = spec.shuffle_window if spec is not None and spec.shuffle and spec.shuffle_window else 1
        reading = None
        if spec is not None:
            # This reader's name in the pass, and the schedules of the node's other readers of it,
            # so that their shards are kept for them until they start (see ShardCache.schedule).
            reader = f"{spec.rank}/{part[0] if part else 0}"
            count = part[1] if part else 1
            peers = {
                f"{rank}/{index}": self._first_used(
                    _reader_positions(order, dataclasses.replace(spec, rank=rank), start, (index, count))
                ).tolist()
                for rank, index in _node_readers(spec, part)
                if f"{rank}/{index}" != reader
            }
            reading = (_pass_key(spec, start, order), reader, peers)
        self.cache.schedule(used.tolist(), (rank_of[used] // window).tolist(), reading=reading)

    def _first_used(self, positions: np.ndarray) -> np.ndarray:
        """The shards of `positions`, in order of first use."""
        shards = self._shard_of(positions)
        _, first = np.unique(shards, return_index=True)
        return shards[np.sort(first)]

    def _shard_of(self, positions: np.ndarray) -> np.ndarray:
        stored = positions if self._subset is None else self._subset[positions]
        return np.searchsorted(self._offsets, stored, side="right") - 1

    def labels(self) -> np.ndarray | dict[str, np.ndarray]:
        """Every sample's targets in dataset order, as batches hand them out, from index.parquet:
        no image is read. Only the opened run's rows, whatever was appended since.

        Raises:
            ManifestError: DEST was overwritten since it was opened (the index is another run's).
        """
        stored = self.targets.from_index(read_run_index(self.dest, self.manifest, ["label"]).column("label"))
        return self.targets.output(stored if self._subset is None else stored[self._subset])

    def columns(self, names: list[str] | tuple[str, ...], positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Extra columns (`--columns`, or `source`) of the samples at `positions` (default: all),
        from index.parquet; read once and kept, as Arrow, for later calls.

        Raises:
            ConfigError: a column the run did not carry.
            ManifestError: DEST was overwritten since it was opened (the index is another run's).
        """
        wanted = [name for name in names if name not in self._columns]
        if wanted:
            carried = self.manifest.config.extra_columns
            missing = [name for name in wanted if name not in carried and name != "source"]
            if missing:
                raise ConfigError(
                    f"{self.dest}: no column {missing[0]!r} in index.parquet (carried: {', '.join(carried) or 'none'}; "
                    "preprocess with --columns to carry more)"
                )
            table = read_run_index(self.dest, self.manifest, wanted)
            self._columns.update({name: table.column(name).combine_chunks() for name in wanted})
        if positions is None:
            positions = np.arange(len(self))
        stored = positions if self._subset is None else self._subset[positions]
        taken = pa.array(np.asarray(stored, np.int64))
        return {name: self._columns[name].take(taken).to_numpy(zero_copy_only=False) for name in names}

    def in_memory(self, budget: int | str | None = None) -> RunReader:
        """This dataset with its whole run loaded into memory once (images in their stored
        dtype); batches, orders, splits and resumes are the same as when streamed from the shards.

        Args:
            budget: the most bytes it may take (bytes or text such as "12GiB"); default: half of
                the memory available to this process.

        Raises:
            ConfigError: the run needs more than the budget (one line with both figures), checked
                before anything is loaded.
        """
        from shards.read.in_memory import check_budget, load_readers

        def load() -> dict[int, ShardReader]:
            check_budget(self, budget)
            return load_readers(self, [info.count for info in self.manifest.shards], self._reader)

        view = copy.copy(self)
        view._readers = self.held_run("host", load)
        view.cache = None  # nothing left to fetch
        return view

    def held_run(self, kind: str, load: Callable[[], Any]) -> Any:
        """The whole run as the in-memory cache `kind` ("host", "device") holds it: `load()`
        (which checks the budget first) on the first call from any view of the run, the same
        object afterwards."""
        if kind not in self._held:
            self._held[kind] = load()
        return self._held[kind]

    def split(self, fraction: float, seed: int = 0) -> tuple[RunReader, RunReader]:
        """(train, validation): a deterministic, disjoint split at read time.

        The validation part holds round(fraction * len) samples chosen by `seed`; one
        preprocessing run serves both, and the same seed gives the same split on every rank.

        Args:
            fraction: the validation share, strictly between 0 and 1.
            seed: chooses the validation samples.

        Raises:
            ValueError: `fraction` outside (0, 1).
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        count = len(self)
        chosen = np.random.default_rng([seed, 0x5B1]).permutation(count)
        held = round(fraction * count)
        return self._view(np.sort(chosen[held:])), self._view(np.sort(chosen[:held]))

    def run(self) -> RunReader:
        """The whole run this dataset is a part of (itself, unless it is a `split()` part)."""
        if self._subset is None:
            return self
        whole = copy.copy(self)
        whole._subset = None
        return whole

    def run_positions(self) -> np.ndarray | None:
        """This part's positions in its run, ascending (None: it is the whole run)."""
        return self._subset

    def _view(self, positions: np.ndarray) -> RunReader:
        view = copy.copy(self)  # shares the manifest and the open shard readers
        view._subset = positions if self._subset is None else self._subset[positions]
        return view

    def read(self, indices: np.ndarray, *, pool: BufferPool | None = None) -> tuple[np.ndarray, Any]:
        """The samples at `indices` (positions in this dataset), returned in ascending order.

        Samples of one shard are copied in one pass in storage order, which is what makes a
        shuffled read close to a plain copy; a batch is a set, so its inner order is free.

        Args:
            indices: positions in [0, len(self)), in any order.
            pool: reusable batch buffers (what `BatchStream` passes); default: a new array.

        Returns:
            (images [N, H, W, 3] in `self.dtype`, labels in the targets' form: int32 [N] class
            indices, float32 [N, classes] multi-hot, float32 [N] or [N, K] regression values, or
            a dict of these by target name), sorted by position.

        Raises:
            IndexError: a position outside the dataset.
            ManifestError: a shard that is missing, damaged, replaced or not a regular file.
        """
        indices = np.sort(np.asarray(indices, np.int64))
        if len(indices) and not (indices[0] >= 0 and indices[-1] < len(self)):
            raise IndexError(f"indices must be in [0, {len(self)})")
        if self._subset is not None:
            indices = self._subset[indices]
        shape = (len(indices), *self.shape)
        images = pool.take(shape, self.dtype) if pool is not None else aligned_empty(shape, self.dtype)
        labels = self.targets.empty(len(indices))
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        groups = list(zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(indices)].tolist()))
        if self.cache is not None:
            groups.sort(key=lambda group: self.cache.order_key(int(shard_of[group[0]])))  # type: ignore[union-attr]
        for begin, end in groups:
            shard = int(shard_of[begin])
            rows = indices[begin:end] - self._offsets[shard]
            self._reader(shard).read(rows, images[begin:end], labels[begin:end])
        return images, self.targets.output(labels)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start: int = 0,
        prefetch: int = 2,
        return_indices: bool = False,
        columns: list[str] | tuple[str, ...] = (),
    ) -> BatchStream:
        """Stream (images, labels) batches of this rank's slice of the epoch.

        Args:
            batch_size: samples per batch on this rank.
            shuffle: permute the epoch from (seed, epoch); otherwise storage order.
            seed: the shuffle seed, the same on every rank.
            epoch: the epoch number; each epoch has its own order.
            rank, world_size: this reader's slice of every global batch.
            drop_last: drop the last incomplete global batch instead of padding it.
            start: the position in the epoch's global order to resume from (see `BatchStream.state`).
            prefetch: batches gathered ahead on a background thread.
            return_indices: also yield each batch's positions in this dataset (the rows of
                index.parquet for a whole dataset), as the last item.
            columns: extra columns (`--columns`) to yield beside the images, as a third item:
                a dict of arrays by column name, aligned with the batch.

        Raises:
            ConfigError: (a ValueError) a batch size below 1, a rank outside [0, world_size),
                or a `start` outside the epoch.
        """
        spec = self.read_spec(
            batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
        )
        return self.stream(
            spec, epoch=epoch, start=start, prefetch=prefetch, return_indices=return_indices, columns=columns
        )

    def read_spec(self, batch_size: int, **fields: Any) -> ReadSpec:
        """A `ReadSpec` for this dataset: `fields` as for `batches()`, with its shuffle window."""
        return ReadSpec(batch_size, shuffle_window=self.shuffle_window, **fields)

    def stream(
        self,
        spec: ReadSpec,
        *,
        epoch: int = 0,
        start: int = 0,
        prefetch: int = 2,
        return_indices: bool = False,
        columns: list[str] | tuple[str, ...] = (),
        part: tuple[int, int] | None = None,
    ) -> BatchStream:
        """Stream epoch `epoch` as `spec` orders and slices it, from position `start`.

        `part=(index, count)` streams every `count`-th of the rank's batches from `index`, for
        one of `count` readers sharing the rank (a DataLoader's workers): together they read
        each of the rank's batches once.

        Raises:
            ConfigError: a negative `epoch`, `start` outside the epoch, a negative `prefetch`, or a
                bad `part`.
        """
        check_epoch(epoch)
        check_start(len(self), start)
        if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
            raise ConfigError(f"part must be (index, count) with 0 <= index < count, got {part}")
        if columns:
            self.columns(columns, np.empty(0, np.int64))  # refuses unknown columns now, not mid-epoch
        if prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {prefetch}")
        order = self.epoch_order(spec, epoch)
        self.schedule(order, start, spec, part)
        return BatchStream(
            self,
            spec,
            order,
            epoch=epoch,
            start=start,
            prefetch=prefetch,
            return_indices=return_indices,
            columns=tuple(columns),
            part=part,
        )

    def resume(
        self, state: ReadState | dict[str, Any], spec: ReadSpec, *, prefetch: int = 2, return_indices: bool = False
    ) -> BatchStream:
        """Continue a stream from its saved `state()` (possibly with another batch size, rank or
        world size).

        Raises:
            ConfigError: the state was taken in another order (seed, shuffle, shuffle window or
                drop_last differ), so its position would repeat and skip samples.
        """
        saved = state if isinstance(state, ReadState) else ReadState.from_json(state)
        return self.stream(
            spec, epoch=saved.epoch, start=saved.position_for(spec), prefetch=prefetch, return_indices=return_indices
        )


def _reader_positions(order: Order, spec: ReadSpec, start: int, part: tuple[int, int] | None) -> np.ndarray:
    """The positions one reader (a rank, or one `part` of its batches) reads, in order."""
    batches = rank_batches(order, spec, start=start)
    picked = range(len(batches)) if part is None else range(part[0], len(batches), part[1])
    return np.concatenate([batches[i] for i in picked]) if len(picked) else np.empty(0, np.int64)


def _node_readers(spec: ReadSpec, part: tuple[int, int] | None) -> list[tuple[int, int]]:
    """(rank, part) of every reader of this node in this pass, as far as it can be known: the
    rank's loader workers (`part`), and with LOCAL_WORLD_SIZE (set by torchrun and Ray Train)
    the node's other ranks, which launchers number consecutively."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    size = int(local) if local.isdigit() and int(local) > 0 else 1
    if spec.world_size % size:
        size = 1
    first = spec.rank // size * size
    parts = part[1] if part else 1
    return [(rank, index) for rank in range(first, first + size) for index in range(parts)]


def _pass_key(spec: ReadSpec, start: int, order: Order) -> str:
    """What makes two readers' schedules parts of one pass over the run: the slicing and the
    epoch's order (its first positions stand for it: they differ with the seed and the epoch)."""
    fields = (spec.batch_size, spec.world_size, spec.drop_last, start, len(order))
    digest = hashlib.sha256(repr(fields).encode())
    digest.update(np.asarray(order[:64], np.int64).tobytes())
    return digest.hexdigest()[:16]


def _reopen(kind: type[RunReader], dest: str, open_args: dict[str, Any], subset: np.ndarray | None) -> RunReader:
    dataset = kind(dest, **open_args)
    return dataset if subset is None else dataset._view(subset)
