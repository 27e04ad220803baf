"""The resampler's two compiled loops (numba): filter weights, and one filtering pass over rows.

Pillow computes the same bicubic filter in C, one scalar multiply-add per tap and channel on
4-byte pixels (~1,000 us for a 375x375 -> 224x224 shrink on one core of the bench machine).
Here a pass filters whole rows at once: for each output row, the input rows under the filter
are added in, weighted, into one int32 row of accumulators, four input rows to a loop that
LLVM turns into SIMD (the vertical pass of a ~400x400 -> 224x224 crop: ~45 us; the horizontal
one, on the transposed and already shorter image: ~25 us).

Compiled once per machine and cached beside this file (or in numba's user cache); a read-only
install compiles once per process instead (~0.5 s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

#: Fixed-point weights, as Pillow: 255 x (sum of |weights| <= 1.3) x 2**22 stays inside int32.
PRECISION_BITS = 22
#: Keys' cubic convolution with a = -0.5 (Pillow's and OpenCV's bicubic) reaches 2 pixels out.
SUPPORT = 2.0


def _compiled(function: Callable[..., Any]) -> Any:
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # no writable cache location: compile in memory instead
        return numba.njit(nogil=True)(function)


def _weights(in_length: int, out_length: int, start: float, length: float) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel, the input pixels under its filter and their fixed-point weights.

    The output's `out_length` pixels cover [start, start + length) of the input. Shrinking
    widens the filter by the shrink factor, so every input pixel under an output pixel counts
    (antialiasing); taps past the edge are dropped and the rest renormalised, as Pillow does.
    Returns (rows, weights), both int32 [out_length, taps]; unused taps have weight 0.
    """
    scale = length / out_length
    widen = max(scale, 1.0)
    support = SUPPORT * widen
    taps = int(math.ceil(2 * support)) + 1
    rows = np.empty((out_length, taps), np.int32)
    weights = np.zeros((out_length, taps), np.int32)
    kernel = np.empty(taps)
    one = 1 << PRECISION_BITS
    for j in range(out_length):
        centre = start + (j + 0.5) * scale
        first = int(math.floor(centre - support + 0.5))
        total = 0.0
        for t in range(taps):
            position = first + t
            x = abs((position + 0.5 - centre) / widen)
            if position < 0 or position >= in_length or x >= 2.0:
                value = 0.0
            elif x < 1.0:
                value = (1.5 * x - 2.5) * x * x + 1.0
            else:
                value = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
            kernel[t] = value
            total += value
            rows[j, t] = min(max(position, 0), in_length - 1)
        for t in range(taps):
            weights[j, t] = round(kernel[t] / total * one)
    return rows, weights


def _filter_rows(
    source: np.ndarray, first: int, last: int, rows: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:
    """out[j] = sum over taps of weights[j, t] * source[rows[j, t], first:last], rounded and
    clipped to uint8. `source` is (height, values) C-ordered uint8; `out` is (len(rows), last - first).

    The taps are added four input rows at a time, so the int32 accumulators are loaded and
    stored once per four rows instead of once per row: 20-25% faster than one row at a time on
    the passes of a ~375-pixel -> 224 shrink (8 taps), with the same result to the bit.
    """
    count, taps = weights.shape
    width = last - first
    total = np.empty(width, np.int32)
    for j in range(count):
        row_weights, row_indices = weights[j], rows[j]
        start, stop = 0, taps  # the taps with a weight: the edges of a filter round to 0
        while start < stop and row_weights[start] == 0:
            start += 1
        while stop > start and row_weights[stop - 1] == 0:
            stop -= 1
        total[:] = 1 << (PRECISION_BITS - 1)
        fours_end = start + (stop - start) // 4 * 4
        for t in range(start, fours_end, 4):
            _add_four_rows(
                total,
                row_weights[t : t + 4],
                source[row_indices[t], first:last],
                source[row_indices[t + 1], first:last],
                source[row_indices[t + 2], first:last],
                source[row_indices[t + 3], first:last],
            )
        for t in range(fours_end, stop):
            weight, row = row_weights[t], source[row_indices[t], first:last]
            for x in range(width):
                total[x] += weight * np.int32(row[x])
        target = out[j]
        for x in range(width):
            value = total[x] >> PRECISION_BITS
            target[x] = 0 if value < 0 else (255 if value > 255 else value)


@numba.njit(inline="always", nogil=True)
def _add_four_rows(
    total: np.ndarray, weights: np.ndarray, row0: np.ndarray, row1: np.ndarray, row2: np.ndarray, row3: np.ndarray
) -> None:
    """total += the four rows, weighted: one load and store of each accumulator for four taps."""
    w0, w1, w2, w3 = weights[0], weights[1], weights[2], weights[3]
    for x in range(total.size):
        total[x] += w0 * np.int32(row0[x]) + w1 * np.int32(row1[x]) + w2 * np.int32(row2[x]) + w3 * np.int32(row3[x])


weights = _compiled(_weights)
filter_rows = _compiled(_filter_rows)
