"""Decoded RGB array -> the output size: antialiased, sub-pixel exact, the same for every decoder.

OpenCV's linear and cubic resizes sample the input at the output's pixel positions without
filtering it first, so shrinking by more than ~1.5x in an axis aliases: fine texture turns into
moiré (a fine-detail photo stretched 640x427 -> 224x224 scored 26.5 dB against a Lanczos
reference). This is Pillow's `Image.resize(..., BICUBIC, box=...)`: Keys' cubic (a = -0.5)
widened by the shrink factor, so every input pixel under an output pixel is filtered in, and
centred on the exact (fractional) box of the crop, pad or stretch placement.

Pillow computes it with one scalar multiply-add per tap and channel; here each axis is one pass
of `resample_kernels.filter_rows` over whole rows (SIMD), the second on the image transposed by
OpenCV. Measured on one core of the bench machine, ImageNet-like JPEGs decoded to ~400x400 ->
224x224 crops: ~112 us an image (~128 us before the passes added four taps at a time), against
~330 us for 0.3.0's first resampler (OpenCV cubic up to k times the output, then a k:1 area
average) and ~1,030 us for Pillow's bicubic.

Quality, scikit-image's real photographs at 224x224 (crop and stretch) against Pillow's Lanczos
on the exact box: 45.0 dB mean, 37.9 worst (the first resampler: 41.1 / 34.8). On a zone plate it
leaves 0.54 grey levels RMS of aliasing past the output's Nyquist (the first resampler: 8.7;
Pillow's bilinear, what Ray Data uses: 1.4; OpenCV linear without filtering: 61).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from shards.write.geometry import place


@functools.cache
def _opencv() -> Any:
    import cv2

    cv2.setNumThreads(1)  # one shard task per CPU: OpenCV's own threads would oversubscribe
    return cv2


@functools.cache
def _kernels() -> Any:
    from shards.write import resample_kernels  # numba: compiled (or loaded) on first use

    return resample_kernels


@functools.lru_cache(maxsize=256)
def _weights(in_length: int, out_length: int, start: float, length: float) -> tuple[np.ndarray, np.ndarray]:
    """`resample_kernels.weights`, remembered: photographs of a collection come in a few sizes
    (ImageNet's are mostly 500x375 or 375x500), and a crop's filters then depend on the size
    alone. ~7 us a call saved (two a resize); 256 filters of a 224-pixel output take ~4 MB.
    The arrays are shared between calls and never written to."""
    return _kernels().weights(in_length, out_length, start, length)


def resize_array(
    pixels: np.ndarray,
    size: tuple[int, int],
    resize: str,
    *,
    full_size: tuple[int, int] | None = None,
    reduction: int = 1,
) -> np.ndarray:
    """Resize a (height, width, 3) uint8 array to `size` (height, width) by `stretch`, `crop`
    or `pad` (the placement of `shards.write.geometry.place`).

    A JPEG decoder may hand over the image reduced `reduction`-fold in the DCT domain from its
    `full_size` (width, height, as shown): the placement is then made on the full size and
    scaled down, because the reduced size is rounded up (427 rows at 1/2 decode to 214, not
    213.5), and placing on it would shift and stretch the output by up to a pixel.
    """
    height, width = pixels.shape[:2]
    full_width, full_height = full_size or (width, height)
    placement = place(full_width, full_height, size, resize)
    left, top, right, bottom = (edge / reduction for edge in placement.source)
    right, bottom = min(right, width), min(bottom, height)
    x, y, inner_w, inner_h = placement.target
    if (right - left, bottom - top) == (inner_w, inner_h) and left == int(left) and top == int(top):
        # already the output size on whole pixels: its pixels, exactly, unresampled
        resized = np.ascontiguousarray(pixels[int(top) : int(bottom), int(left) : int(right)])
    else:
        resized = _bicubic(np.ascontiguousarray(pixels), (left, top, right, bottom), inner_w, inner_h)
    if (inner_w, inner_h) == (size[1], size[0]):
        return resized
    canvas = np.zeros((size[0], size[1], 3), np.uint8)
    canvas[y : y + inner_h, x : x + inner_w] = resized
    return canvas


def _bicubic(pixels: np.ndarray, box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """The `box` (left, top, right, bottom) of C-ordered `pixels` resized to (width, height):
    rows first, over the columns the horizontal filter will read, then columns, transposed."""
    kernels, cv2 = _kernels(), _opencv()
    rows_in, columns_in = pixels.shape[:2]
    left, top, right, bottom = box
    reach = int(kernels.SUPPORT * max((right - left) / width, 1.0)) + 2  # the filter's half-width, and some
    first = max(0, int(left) - reach)
    last = min(columns_in, int(np.ceil(right)) + reach)
    rows, weights = _weights(rows_in, height, float(top), float(bottom - top))
    tall = np.empty((height, (last - first) * 3), np.uint8)
    kernels.filter_rows(pixels.reshape(rows_in, columns_in * 3), first * 3, last * 3, rows, weights, tall)
    turned = cv2.transpose(tall.reshape(height, last - first, 3)).reshape(last - first, height * 3)
    columns, weights = _weights(last - first, width, float(left - first), float(right - left))
    wide = np.empty((width, height * 3), np.uint8)
    kernels.filter_rows(turned, 0, height * 3, columns, weights, wide)
    return cv2.transpose(wide.reshape(width, height, 3))


def warm_up() -> None:
    """Compile the resampler's loops now, or load them from numba's cache (measured in one
    process: 3.1 s to compile on a busy 2-core machine, 0.85 s to import numba and load): an
    embedded run does it on a thread while Ray starts, so its shard tasks load the cached code
    instead of each compiling it at once. A failure here is left for the tasks to meet and
    report. The caller imports Ray first: this imports OpenCV, whose loader puts back a copy of
    sys.path taken before, and would drop what Ray adds to sys.path if Ray imported meanwhile."""
    try:
        resize_array(np.zeros((48, 64, 3), np.uint8), (24, 24), "crop")
    except Exception:
        return
