"""Decoded RGB array -> the output size: antialiased, sub-pixel exact, the same for every decoder.

OpenCV's linear and cubic resizes sample the input at the output's pixel positions without
filtering it first, so shrinking by more than ~1.5x in an axis aliases: fine texture turns into
moiré (a fine-detail photo stretched 640x427 -> 224x224 scored 26.5 dB against a Lanczos
reference). Pillow's and tf.image's antialiased filters avoid that, but Pillow's bicubic costs
~940 us for a 375x375 -> 224x224 crop on one core of the bench machine: as much as the decode.

So the shrink is done in two SIMD steps of OpenCV: a cubic resize *up* to k times the output
(k = the shrink factor rounded up, per axis), then an exact k:1 area average down. The area
step is a box filter one output pixel wide over a cubic interpolation, which rejects what an
output pixel cannot show; both steps have fast integer paths. Crop boxes rarely start on a
whole pixel (500x375 -> crop starts at x = 62.5), and a half-pixel error alone cost 6 dB on a
detailed photo, so the box is taken from its whole-pixel start and the remaining fraction is
applied as a 4-tap cubic shift on the (small) output.

Cost for a 500x375 -> 224x224 crop on one core of the bench machine: ~215 us (cubic up 146,
area 34, shift 34), against 61 us for the aliasing linear resize it replaces and ~940 us for
Pillow's bicubic.

On real photographs at 224x224 (scikit-image's samples as JPEG q95, crop and stretch) this
scores 40.7 dB mean and 34.7 dB worst against Pillow's Lanczos on the exact box, where OpenCV's
linear resize scored 35.1/26.4 and Pillow's bilinear 35.7/28.9. On a zone plate it leaves
8.7 grey levels RMS of aliasing past the output's Nyquist (OpenCV linear: 61; OpenCV area: 7.1;
Pillow bilinear: 1.4, bicubic: 0.5). Measured and not kept (whole resize, same machine):
a scaled-cubic filter at the upsampled resolution (0.55 aliasing, 43.4 dB) cost 1,315 us; a
triangle pre-filter (1.1, 35.6 dB) 348 us; a half-band one (1.6, 38.5 dB) 404 us.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from shards.write.geometry import place

#: Shrinking an axis by more than this goes through the antialiasing steps; below it, one cubic
#: resize (its 4-tap kernel still covers 1.25 input pixels per output pixel).
ANTIALIAS_ABOVE = 1.25
_SUBPIXEL = 0.01  # shifts below 1/100 of an output pixel are left alone


@functools.cache
def _opencv() -> Any:
    import cv2

    cv2.setNumThreads(1)  # one shard task per CPU: OpenCV's own threads would oversubscribe
    return cv2


def resize_array(pixels: np.ndarray, size: tuple[int, int], resize: str) -> np.ndarray:
    """Resize a (height, width, 3) uint8 array to `size` (height, width) by `stretch`, `crop`
    or `pad` (the placement of `shards.write.geometry.place`)."""
    height, width = pixels.shape[:2]
    placement = place(width, height, size, resize)
    left, top, right, bottom = placement.source
    x, y, inner_w, inner_h = placement.target
    first_x, first_y = math.floor(left + 1e-9), math.floor(top + 1e-9)
    box_w = min(width - first_x, max(1, round(right - left)))
    box_h = min(height - first_y, max(1, round(bottom - top)))
    box = pixels[first_y : first_y + box_h, first_x : first_x + box_w]
    if box.strides[1:] != (3, 1):  # transposed by an EXIF orientation: OpenCV needs packed pixels
        box = np.ascontiguousarray(box)
    scale_x, scale_y = box_w / inner_w, box_h / inner_h
    if (box_w, box_h) == (inner_w, inner_h) and (left, top) == (first_x, first_y):
        resized = np.ascontiguousarray(box)  # already the output size: its pixels, exactly, unresampled
    else:
        resized = _shrink_or_grow(box, inner_w, inner_h, scale_x, scale_y)
    resized = _shift(resized, (left - first_x) / scale_x, (top - first_y) / scale_y)
    if (inner_w, inner_h) == (size[1], size[0]):
        return resized
    canvas = np.zeros((size[0], size[1], 3), np.uint8)
    canvas[y : y + inner_h, x : x + inner_w] = resized
    return canvas


def _shrink_or_grow(box: np.ndarray, width: int, height: int, scale_x: float, scale_y: float) -> np.ndarray:
    cv2 = _opencv()
    factor_x = math.ceil(scale_x) if scale_x > ANTIALIAS_ABOVE else 1
    factor_y = math.ceil(scale_y) if scale_y > ANTIALIAS_ABOVE else 1
    if factor_x == factor_y == 1:
        return cv2.resize(box, (width, height), interpolation=cv2.INTER_CUBIC)
    upsampled = cv2.resize(box, (width * factor_x, height * factor_y), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(upsampled, (width, height), interpolation=cv2.INTER_AREA)


def _shift(pixels: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move the content left by dx and up by dy output pixels (0 <= d < 1), cubic, one 4-tap
    pass per axis that needs it (~34 us for 224x224x3; a 2-D separable pass cost 126 us)."""
    cv2 = _opencv()
    if dx >= _SUBPIXEL:
        kernel = _shift_kernel(round(dx, 2)).reshape(1, 4)
        pixels = cv2.filter2D(pixels, -1, kernel, anchor=(1, 0), borderType=cv2.BORDER_REPLICATE)
    if dy >= _SUBPIXEL:
        kernel = _shift_kernel(round(dy, 2)).reshape(4, 1)
        pixels = cv2.filter2D(pixels, -1, kernel, anchor=(0, 1), borderType=cv2.BORDER_REPLICATE)
    return pixels


@functools.cache
def _shift_kernel(fraction: float) -> np.ndarray:
    """Keys' cubic (a = -0.5, as OpenCV and Pillow) weights of the 4 pixels around x + fraction."""
    weights = np.array([_keys(offset - fraction) for offset in (-1, 0, 1, 2)], np.float32)
    return weights / weights.sum()


def _keys(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0
