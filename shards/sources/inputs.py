"""What a shard task reads: its `ShardInputs`, each input as bytes, pixels or a reason.

Apart from the listings (Arrow, on the driver), so that a task reading local files imports
neither pyarrow nor the listing code: ~75 ms of each Ray worker's start, before its first shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from shards.errors import DecodeError

Input = bytes | np.ndarray | DecodeError
"""One input as a task receives it: encoded bytes, pixels (arrays in memory), or why not."""


class ShardInputs(Protocol):
    """The inputs of one shard task that listing found no problem with, in listing order."""

    def read(self, max_bytes: int) -> Iterator[Input]:
        """Each input, in order; inputs over `max_bytes` come back as a DecodeError."""
        ...


class ChainedInputs:
    """The inputs of several parts of a listing, one after the other (a shard that spans two
    tar archives listed as separate parts)."""

    def __init__(self, parts: tuple[ShardInputs, ...]) -> None:
        self.parts = parts

    def read(self, max_bytes: int) -> Iterator[Input]:
        for part in self.parts:
            yield from part.read(max_bytes)


class Names(Sequence[str]):
    """Input names packed as UTF-8 bytes and end offsets: what a shard task is handed of its
    inputs' names. A list of Python strings costs the driver ~100 bytes a name while the task is
    built and pickled; this costs the bytes and 8 more, and pickles as two buffers."""

    def __init__(self, data: bytes, ends: np.ndarray) -> None:
        self._data, self._ends = data, np.asarray(ends, np.int64)

    @classmethod
    def of(cls, names: Sequence[str]) -> Names:
        encoded = [name.encode("utf-8", "surrogateescape") for name in names]
        return cls(b"".join(encoded), np.cumsum([len(e) for e in encoded], dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Names]) -> Names:
        ends, shift = [], 0
        for part in parts:
            ends.append(part._ends + shift)
            shift += len(part._data)
        return cls(b"".join(part._data for part in parts), np.concatenate(ends) if ends else np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        begin = int(self._ends[index - 1]) if index else 0
        return self._data[begin : int(self._ends[index])].decode("utf-8", "surrogateescape")

    def select(self, keep: Sequence[bool]) -> Names:
        """The names where `keep` is true, in order."""
        if all(keep):
            return self
        return Names.of([name for name, kept in zip(self, keep) if kept])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]
