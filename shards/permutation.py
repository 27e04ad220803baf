"""Pseudo-random permutations of [0, n) that are computed, never stored.

A shuffled plan or epoch over a billion samples cannot hold a permutation array (8 GB a process
at int64). `Permutation` is a keyed bijection instead: a Feistel network over the smallest even
power of two that covers n, walked in cycles until the image falls inside [0, n). Any slice or
batch of positions is mapped on demand in O(len(batch)), the same on every process and for
every world size, since it depends on (n, key) alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ROUNDS = 6  # Luby-Rackoff: 4 rounds of a good round function already make a strong permutation
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit reaches every output bit."""
    values = (values ^ (values >> np.uint64(30))) * _M1
    values = (values ^ (values >> np.uint64(27))) * _M2
    return values ^ (values >> np.uint64(31))


class Permutation:
    """A bijection of [0, count) keyed by integers (a seed and an epoch, say).

    `perm[i]` is the position at place i of the permuted order; it takes an integer, a slice
    or an integer array, and returns int64. `shuffle=False` gives storage order (0, 1, ...).
    `np.asarray(perm)` materialises the whole order, for tests and small counts.
    """

    def __init__(self, count: int, key: Sequence[int] = (), *, shuffle: bool = True) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.count, self.shuffle = int(count), bool(shuffle) and count > 1
        bits = max(2, (self.count - 1).bit_length())
        self._half = np.uint64((bits + 1) // 2)
        self._mask = np.uint64((1 << int(self._half)) - 1)
        state = np.random.SeedSequence([int(k) for k in key] or [0]).generate_state(ROUNDS, np.uint64)
        self._keys = [np.uint64(k) for k in state]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.take(np.arange(*index.indices(self.count), dtype=np.int64))
        if isinstance(index, (int, np.integer)):
            position = int(index) + self.count if index < 0 else int(index)
            if not 0 <= position < self.count:
                raise IndexError(index)
            return int(self.take(np.array([position]))[0])
        return self.take(np.asarray(index))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        order = self.take(np.arange(self.count, dtype=np.int64))
        return order if dtype is None else order.astype(dtype)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The permuted positions at places `positions` (each in [0, count))."""
        positions = np.asarray(positions, np.int64)
        if not self.shuffle:
            return positions.copy()
        if positions.size and (positions.min() < 0 or positions.max() >= self.count):
            raise IndexError(f"positions must be in [0, {self.count})")
        out = self._encrypt(positions.astype(np.uint64))
        outside = out >= np.uint64(self.count)
        while outside.any():  # cycle walking: the domain is under 4x count, so ~2 steps at most on average
            out[outside] = self._encrypt(out[outside])
            outside = out >= np.uint64(self.count)
        return out.astype(np.int64)

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        """The places at which `positions` stand: `perm.inverse(perm.take(p)) == p`."""
        positions = np.asarray(positions, np.int64)
        if not self.shuffle:
            return positions.copy()
        if positions.size and (positions.min() < 0 or positions.max() >= self.count):
            raise IndexError(f"positions must be in [0, {self.count})")
        out = self._decrypt(positions.astype(np.uint64))
        outside = out >= np.uint64(self.count)
        while outside.any():
            out[outside] = self._decrypt(out[outside])
            outside = out >= np.uint64(self.count)
        return out.astype(np.int64)

    def _decrypt(self, values: np.ndarray) -> np.ndarray:
        left, right = values >> self._half, values & self._mask
        for key in reversed(self._keys):
            left, right = right ^ (_mix(left ^ key) & self._mask), left
        return (left << self._half) | right

    def _encrypt(self, values: np.ndarray) -> np.ndarray:
        left, right = values >> self._half, values & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << self._half) | right
