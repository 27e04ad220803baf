"""What a shard task reads: its `ShardInputs`, each input as bytes, pixels or a reason.

Apart from the listings (Arrow, on the driver), so that a task reading local files imports
neither pyarrow nor the listing code: ~75 ms of each Ray worker's start, before its first shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from shards.errors import DecodeError

Input = bytes | np.ndarray | DecodeError
"""One input as a task receives it: encoded bytes, pixels (arrays in memory), or why not."""


class ShardInputs(Protocol):
    """The inputs of one shard task that listing found no problem with, in listing order."""

    def read(self, max_bytes: int) -> Iterator[Input]:
        """Each input, in order; inputs over `max_bytes` come back as a DecodeError."""
        ...
