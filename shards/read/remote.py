"""Reading shards that live on another node: a Ray streaming generator brings the batches over.

When a trainer's node cannot read DEST (the shards sit on another node's local disk), a
generator task pinned to the node that holds them reads batches there and yields them one
object at a time. Ray's generator back-pressure bounds the objects in flight, so memory stays
at a few batches on both sides. `RemoteRunReader` is a `BatchSource` of the read Protocol
(`len`, `shape`, `dtype`, `classes`, `targets`, `split`, `batches`, `stream`), so the trainer
consumes either through the same generator interface; `shards.dataset.RemoteShardDataset` adds
`to_tf` and the other feeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from shards.options import numpy_dtype
from shards.read.dataset import RunReader
from shards.read.spec import ReadSpec

DEFAULT_IN_FLIGHT = 4


def _open(dest: str, split: tuple[float, int, int] | None) -> Any:
    dataset = RunReader(dest)
    if split is not None:
        fraction, seed, part = split
        dataset = dataset.split(fraction, seed)[part]
    return dataset


def _describe(dest: str, split: tuple[float, int, int] | None) -> dict[str, Any]:
    dataset = _open(dest, split)
    return {"count": len(dataset), "shape": dataset.shape, "dtype": dataset.manifest.dtype, "targets": dataset.targets}


def _stream(
    dest: str, split: tuple[float, int, int] | None, spec: ReadSpec, options: dict[str, Any]
) -> Iterator[tuple[np.ndarray, ...]]:
    stream = _open(dest, split).stream(spec, **options)
    try:
        for batch in stream:  # noqa: UP028 - not `yield from`: Ray drives generators with send()
            yield batch
    finally:
        stream.close()


class RemoteRunReader:
    """A shards dataset read on node `node_id` and streamed to this process through Ray."""

    def __init__(
        self,
        dest: str,
        node_id: str,
        *,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        _split: tuple[float, int, int] | None = None,
    ) -> None:
        import ray

        self.dest, self.node_id, self.max_in_flight, self._split = dest, node_id, max_in_flight, _split
        describe = ray.remote(_describe).options(num_cpus=0, scheduling_strategy=self._pinned())
        info = ray.get(describe.remote(dest, _split))
        self._count = info["count"]
        self.shape = tuple(info["shape"])
        self.dtype = numpy_dtype(info["dtype"])
        self.targets = info["targets"]
        self.classes = self.targets.classes

    def _pinned(self) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(self.node_id, soft=False)

    def __len__(self) -> int:
        return self._count

    def split(self, fraction: float, seed: int = 0) -> tuple[RemoteRunReader, RemoteRunReader]:
        """The same disjoint split as `ShardDataset.split`, computed where the shards are."""
        if self._split is not None:
            raise ValueError("a split of a remote dataset cannot be split again")
        return tuple(
            type(self)(self.dest, self.node_id, max_in_flight=self.max_in_flight, _split=(fraction, seed, part))
            for part in (0, 1)
        )  # type: ignore[return-value]

    def read_spec(self, batch_size: int, **fields: Any) -> ReadSpec:
        """A `ReadSpec` for this dataset (shards on a node's disk shuffle whole)."""
        return ReadSpec(batch_size, **fields)

    def batches(
        self, batch_size: int, *, epoch: int = 0, start: int = 0, return_indices: bool = False, **fields: Any
    ) -> RemoteBatchStream:
        """Like `ShardDataset.batches`, with at most `max_in_flight` batches between the nodes."""
        fields.pop("prefetch", None)  # the generator's back-pressure is the prefetch here
        spec = self.read_spec(batch_size, **fields)
        return self.stream(spec, epoch=epoch, start=start, return_indices=return_indices)

    def stream(
        self,
        spec: ReadSpec,
        *,
        epoch: int = 0,
        start: int = 0,
        prefetch: int = 0,
        return_indices: bool = False,
        columns: tuple[str, ...] = (),
        part: tuple[int, int] | None = None,
    ) -> RemoteBatchStream:
        """Like `ShardDataset.stream`, read on the node that holds the shards."""
        import ray

        task = ray.remote(_stream).options(
            num_cpus=0, scheduling_strategy=self._pinned(), _generator_backpressure_num_objects=self.max_in_flight
        )
        options: dict[str, Any] = {"epoch": epoch, "start": start, "prefetch": prefetch}
        options.update(return_indices=return_indices, columns=tuple(columns), part=part)
        return RemoteBatchStream(task.remote(self.dest, self._split, spec, options))


class RemoteBatchStream(Iterator[tuple[np.ndarray, ...]]):
    """Iterates a streaming generator's objects; closing it cancels the remote task."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator

    def __iter__(self) -> RemoteBatchStream:
        return self

    def __next__(self) -> tuple[np.ndarray, ...]:
        import ray

        return ray.get(next(self._generator))

    def close(self) -> None:
        import ray

        ray.cancel(self._generator)
