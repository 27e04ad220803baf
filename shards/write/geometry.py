"""Where each resize mode takes its pixels from and puts them: pure arithmetic, shared by decoders.

Both decode paths (Pillow, and libjpeg-turbo + OpenCV) use these boxes, so they crop, pad and
stretch identically.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# DCT-domain downscaling stops while the decoded image still has this many times the pixels the
# output needs per axis. libjpeg's scaled IDCT drops each 8x8 block's upper coefficients, which
# folds some of what lies past its new Nyquist back below it; with 2.5x to spare, what folds into
# the output's band comes from past 4x the output's Nyquist, where photographs hold little. At
# 224 px: a JPEG zone plate 1024 -> 224 is decoded in full and leaves 0.54 grey levels of
# aliasing (at 1.5x or 2x it was decoded at 1/2 and left 5.3; Pillow's draft + bilinear leaves
# 6.0); scikit-image's photos as JPEG q95 score within 0.3 dB of the same photos as PNG in every
# mode (1.3 dB behind in pad mode at 1.25x). The price is on camera-sized photos, decoded at 1/4
# instead of 1/8: 16.2 ms an image against 14.5 (Huffman decoding dominates both), and the
# bench's 400 4000x3000 photos preprocess at 82-101 img/s against 108-110 at 1.5x (still over 3x
# a bare full-decode pool). ImageNet's ~500x375 decode in full at any margin.
DECODE_MARGIN = 2.5
# EXIF orientations 5-8 swap width and height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Take `source` (left, top, right, bottom; floats) from the input and resize it into the
    `target` (left, top, width, height) rectangle of the output; the rest is background."""

    source: tuple[float, float, float, float]
    target: tuple[int, int, int, int]


EXIF_ORIENTATION = 0x0112


def place(width: int, height: int, size: tuple[int, int], resize: str) -> Placement:
    """The placement of a (width, height) image into an output of `size` (height, width)."""
    target_h, target_w = size
    if resize == "stretch":
        return Placement((0.0, 0.0, float(width), float(height)), (0, 0, target_w, target_h))
    if resize == "crop":
        scale = max(target_w / width, target_h / height)
        box_w, box_h = min(width, target_w / scale), min(height, target_h / scale)
        left, top = (width - box_w) / 2, (height - box_h) / 2
        return Placement((left, top, left + box_w, top + box_h), (0, 0, target_w, target_h))
    if resize == "pad":
        scale = min(target_w / width, target_h / height)
        inner_w = min(target_w, max(1, round(width * scale)))
        inner_h = min(target_h, max(1, round(height * scale)))
        left, top = (target_w - inner_w) // 2, (target_h - inner_h) // 2
        return Placement((0.0, 0.0, float(width), float(height)), (left, top, inner_w, inner_h))
    raise ValueError(f"resize must be stretch, crop or pad, got {resize!r}")


def needed_size(width: int, height: int, orientation: int, size: tuple[int, int], resize: str) -> tuple[int, int]:
    """The smallest stored (width, height) a decoder may scale down to before the final resize.

    JPEG decoders can downscale by 1/2, 1/4 or 1/8 in the DCT domain, almost for free; this is
    how far they may go without losing pixels the output needs, with DECODE_MARGIN to spare.
    """
    swapped = orientation in TRANSPOSING_ORIENTATIONS
    shown_w, shown_h = shown_size(width, height, orientation)
    target_h, target_w = size
    if resize == "stretch":
        need_w, need_h = target_w, target_h
    else:
        pick = max if resize == "crop" else min
        scale = pick(target_w / shown_w, target_h / shown_h)
        need_w, need_h = math.ceil(shown_w * scale), math.ceil(shown_h * scale)
    need_w, need_h = math.ceil(need_w * DECODE_MARGIN), math.ceil(need_h * DECODE_MARGIN)
    return (need_h, need_w) if swapped else (need_w, need_h)


def shown_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The (width, height) a stored image shows once its EXIF orientation is applied."""
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def exif_orientation(image: Any) -> int:
    """The EXIF orientation (1-8) of an opened Pillow image; 1 when absent or unreadable.

    Both decode paths orient by this one reading, so they agree on every file."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block orients nothing; the pixels may still decode
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
