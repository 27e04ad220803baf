"""One shard's work, as a Ray task runs it: read, decode, resize, cast, write, receipt.

Nothing here depends on Ray, so it can be called and tested directly. The task returns only the
small receipt; image bytes never travel through the object store.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np

from shards.errors import DecodeError
from shards.formats import ShardInfo, get_format
from shards.io import storage
from shards.io.location import location
from shards.layout.manifest import Receipt, Reject, write_receipt
from shards.options import PreprocessOptions
from shards.write.imaging import decode_image, to_storage
from shards.write.sources import read_source

logger = logging.getLogger(__name__)

READ_THREADS = 4
READ_AHEAD = 16
LOCAL_BATCH = 4  # READ_AHEAD // LOCAL_BATCH batches in flight keep all READ_THREADS busy


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard's work, as the driver hands it to a Ray task.

    Attributes:
        dest: the DEST folder or object-storage prefix.
        shard: the shard's name.
        positions: each input's position in the listing (recorded with rejects).
        sources: each input's path or URI, aligned with `positions`.
        labels: each input's label, aligned with `positions`.
        options: the run's options.
        run_key: identifies the run the receipt belongs to.
    """

    dest: str
    shard: str
    positions: np.ndarray
    sources: Sequence[str]
    labels: np.ndarray
    options: PreprocessOptions
    run_key: str


def write_shard(task: ShardTask, node: str = "") -> Receipt:
    """Write the task's shard and leave its receipt in DEST/.parts.

    Args:
        task: what to write.
        node: where the shard ran (recorded for the user, not for the data).
    """
    started = time.time()
    place = location(task.dest)
    with place.staging() as (folder, durable):
        info, rejects = _write_files(folder, task, durable=durable)
        place.publish(folder, info.files)
    receipt = Receipt(task.run_key, info, rejects, node, started, time.time())
    write_receipt(task.dest, receipt)
    return receipt


def _write_files(folder: str, task: ShardTask, *, durable: bool) -> tuple[ShardInfo, list[Reject]]:
    options, sources = task.options, task.sources
    rejects: list[Reject] = []
    with get_format(options.format).open_writer(folder, task.shard, len(sources), options, durable=durable) as writer:
        for i, data in enumerate(_read_ahead(sources)):
            try:
                if isinstance(data, DecodeError):
                    raise data
                rgb = decode_image(data, options.size, options.resize)
            except DecodeError as exc:
                rejects.append(Reject(int(task.positions[i]), sources[i], str(exc)))
                logger.info("rejected %s: %s", sources[i], exc)
                continue
            writer.write(to_storage(rgb, options.dtype), int(task.labels[i]))
        return writer.close(), rejects


def _read_ahead(sources: Sequence[str]) -> Iterator[bytes | DecodeError]:
    """Each input's bytes (or why it cannot be read), in order, read on a few threads a bounded
    window ahead of the decoder, so disk or network latency overlaps decoding.

    At most READ_AHEAD encoded files are in flight (plus the batch being handed out). File
    reads release the GIL, but each hand-off between threads costs CPU: on the bench machine, one
    hand-off per cached local file cost ~100 us, three times the read itself. So a thread reads
    local files LOCAL_BATCH at a time; object-storage requests, whose latency dwarfs that cost,
    go one by one. On a cold page cache the threads keep READ_THREADS reads in flight.
    """
    batch = 1 if any(storage.is_remote(source) for source in sources) else LOCAL_BATCH
    batches = (sources[start : start + batch] for start in range(0, len(sources), batch))
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="shards-read") as pool:
        window = collections.deque(
            pool.submit(_read_batch, first) for first in itertools.islice(batches, READ_AHEAD // batch)
        )
        while window:
            datas = window.popleft().result()
            window.extend(pool.submit(_read_batch, later) for later in itertools.islice(batches, 1))
            yield from datas


def _read_batch(sources: Sequence[str]) -> list[bytes | DecodeError]:
    return [_read_or_error(source) for source in sources]


def _read_or_error(source: str) -> bytes | DecodeError:
    try:
        return read_source(source)
    except DecodeError as exc:
        return exc
