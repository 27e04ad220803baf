"""Streaming one rank's batches: a bounded background prefetch, reused batch buffers, and a state
to resume from.

A stream reads what its `ReadSpec` slices out of each epoch's global order. A background thread
gathers up to `prefetch` batches ahead into buffers from a small pool; the pool hands a buffer
out again only once nothing can still see it (see `BufferPool`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from shards.errors import ConfigError
from shards.read.sampling import Order, batch_count, position_after, rank_batches
from shards.read.spec import ReadSpec, ReadState

if TYPE_CHECKING:
    from shards.read.protocol import RandomAccessSource

_DONE = object()
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary.

    TensorFlow takes over a NumPy buffer without copying only when it is 64-byte aligned; large
    blocks from malloc are 16-byte aligned, which made every batch entering `to_tf()` a copy
    (8x slower through tf.data.Dataset.from_generator on the benchmark machine).
    """
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


class BatchStream(Iterator[tuple[Any, ...]]):
    """An iterator of (images, labels) batches (then the extra columns and positions asked for)
    with a bounded background prefetch and a
    resumable state. Made by `ShardDataset.batches()`, `.stream()` or `.resume()`."""

    def __init__(
        self,
        dataset: RandomAccessSource,
        spec: ReadSpec,
        order: Order,
        *,
        epoch: int,
        start: int,
        prefetch: int,
        return_indices: bool = False,
        columns: tuple[str, ...] = (),
        part: tuple[int, int] | None = None,
    ) -> None:
        self._dataset, self.spec, self.epoch, self._start = dataset, spec, epoch, start
        self._return_indices, self._columns = return_indices, columns
        self._length = batch_count(len(dataset), spec, start=start)
        self._consumed = 0
        self._plan: Iterator[np.ndarray] = iter(rank_batches(order, spec, start=start))
        self._part = part
        if part is not None:  # every `count`-th batch from `index`: one of `count` readers of the rank
            index, count = part
            self._plan = itertools.islice(self._plan, index, None, count)
            self._length = len(range(index, self._length, count))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._pool = BufferPool(limit=prefetch + 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefetch = prefetch

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[Any, ...]:
        if self._prefetch == 0:
            indices = next(self._plan, None)
            item: Any = _DONE if indices is None else _gather(self._dataset, indices, self._pool)
        else:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_produce,
                    args=(self._dataset, self._plan, self._queue, self._stop, self._pool),
                    name="shards-prefetch",
                    daemon=True,
                )
                self._thread.start()
            item = self._queue.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._consumed += 1
        images, labels, indices = item
        batch: tuple[Any, ...] = (images, labels)
        if self._columns:
            batch += (self._dataset.columns(self._columns, indices),)
        return batch + (indices,) if self._return_indices else batch

    def read_state(self) -> ReadState:
        """Where this stream stands, as a typed value (see `ShardDataset.resume`).

        Raises:
            ConfigError: the stream is one part of a rank's batches (`part`), which has no
                position of its own in the epoch's order.
        """
        if self._part is not None:
            raise ConfigError("a stream of one part of a rank's batches has no resumable state; resume the rank's")
        position = position_after(len(self._dataset), self.spec, self._consumed, start=self._start)
        return ReadState(self.spec, self.epoch, position, self._consumed)

    def state(self) -> dict[str, Any]:
        """Where this stream stands, as JSON: the spec's fields, `epoch`, `position` and
        `batches`. Pass it to `ShardDataset.resume` (which checks that the order is the same),
        or `position` as `start` with the same epoch and order."""
        return self.read_state().to_json()

    def close(self) -> None:
        """Stop the prefetch thread and drop what it gathered."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


def _produce(
    dataset: RandomAccessSource,
    plan: Iterator[np.ndarray],
    out: queue.Queue[Any],
    stop: threading.Event,
    pool: BufferPool,
) -> None:
    """The prefetch thread. It holds no reference to its BatchStream, so dropping the stream
    stops the thread instead of keeping both alive."""
    try:
        for indices in plan:
            if stop.is_set():
                return
            _put(out, stop, _gather(dataset, indices, pool))
        _put(out, stop, _DONE)
    except BaseException as exc:
        _put(out, stop, exc)


def _gather(dataset: RandomAccessSource, indices: np.ndarray, pool: BufferPool) -> tuple[np.ndarray, Any, np.ndarray]:
    indices = np.sort(indices)
    images, labels = dataset.read(indices, pool=pool)
    return images, labels, indices


def _put(out: queue.Queue[Any], stop: threading.Event, item: Any) -> None:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _Lease:
    """The owner of one handed-out batch's memory.

    The batch is made from this object (`np.asarray` of its array interface), so the batch, every
    view of it and every TensorFlow tensor that aliases one of them keeps the lease alive through
    their chain of bases. When the last of them is gone, the lease is freed and its finalizer
    returns the buffer to the pool: reuse rests on the objects' lifetimes, not on reading a
    reference count (which CPython 3.14's borrowed stack references can make read lower).
    """

    __slots__ = ("__array_interface__", "__weakref__", "_raw")

    def __init__(self, raw: np.ndarray, offset: int, size: int) -> None:
        self._raw = raw
        self.__array_interface__ = {
            "data": (raw.ctypes.data + offset, False),
            "shape": (size,),
            "typestr": "|u1",
            "version": 3,
        }


class BufferPool:
    """Batch buffers that are handed out again once nothing can still see them.

    Streaming then keeps rewriting the same few buffers instead of faulting in fresh pages for
    every batch (the difference between 0.7x and 0.9x of a plain copy on the benchmark machine).
    Each batch is handed out through a `_Lease`; a buffer comes back only when its lease is
    freed, so a consumer that keeps a batch, a slice of one, or a tensor made from one never sees
    it change. At most `limit` buffers are tracked; beyond that, batches get fresh memory.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tracked = 0
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        with self._lock:
            found = next((i for i, b in enumerate(self._free) if len(b) == size + ALIGNMENT), None)
            raw = self._free.pop(found) if found is not None else None
            tracked = raw is not None or self._tracked < self._limit
            if raw is None and tracked:
                self._tracked += 1
        if raw is None:
            raw = np.empty(size + ALIGNMENT, np.uint8)
        lease = _Lease(raw, -raw.ctypes.data % ALIGNMENT, size)
        if tracked:
            weakref.finalize(lease, self._give_back, raw)
        return np.asarray(lease).view(dtype).reshape(shape)

    def _give_back(self, raw: np.ndarray) -> None:
        with self._lock:
            self._free.append(raw)
