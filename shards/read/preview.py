"""A contact sheet of samples rendered from the shards: exactly what training will see.

Tiles are the stored samples at their stored size (floats mapped back to 0..255), each with its
class name underneath, so resize mode, orientation and colour can be checked at a glance.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shards.read.dataset import RunReader
from shards.targets import describe

CAPTION_HEIGHT = 14
GAP = 2
BACKGROUND = (32, 32, 32)


@dataclasses.dataclass(frozen=True)
class ContactSheet:
    """Where each sample landed: `indices[k]` is drawn at `origins[k]` (x, y) of `image`."""

    image: Image.Image
    indices: list[int]
    origins: list[tuple[int, int]]


def choose_samples(dataset: RunReader, count: int, *, per_class: bool = False, seed: int = 0) -> list[int]:
    """`count` random sample positions, or up to `count` of each class with `per_class`."""
    rng = np.random.default_rng(seed)
    target = dataset.targets.items[0]
    if not per_class or not dataset.classes or dataset.targets.multi or target.kind == "regression":
        return sorted(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False).tolist())
    labels = dataset.labels()
    chosen: list[int] = []
    for label in range(len(dataset.classes)):
        members = np.flatnonzero(labels == label if target.kind == "class" else labels[:, label] > 0)  # type: ignore[index]
        chosen += sorted(rng.choice(members, size=min(count, len(members)), replace=False).tolist())
    return chosen


def to_display(images: np.ndarray) -> np.ndarray:
    """Stored samples as uint8 RGB: floats (and bfloat16) in [0, 1] are scaled back to 0..255."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def render_contact_sheet(dataset: RunReader, indices: list[int], *, columns: int | None = None) -> ContactSheet:
    """Draw the samples at `indices` in a grid, row by row, each captioned with its targets
    (class names, a multi-label sample's classes joined by +, regression values)."""
    height, width, _ = dataset.shape
    columns = columns or max(1, math.ceil(math.sqrt(len(indices))))
    rows = max(1, math.ceil(len(indices) / columns))
    cell_w, cell_h = width + GAP, height + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (columns * cell_w + GAP, rows * cell_h + GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    origins = []
    for start in range(0, len(indices), 256):
        block = np.asarray(indices[start : start + 256])
        images, labels = dataset.read(block)  # in ascending position order
        images = to_display(images)
        for offset, row in enumerate(np.argsort(np.argsort(block, kind="stable"), kind="stable")):
            k = start + offset
            x, y = GAP + (k % columns) * cell_w, GAP + (k // columns) * cell_h
            sheet.paste(Image.fromarray(images[row]), (x, y))
            value = {name: part[row] for name, part in labels.items()} if isinstance(labels, dict) else labels[row]
            caption = describe(dataset.targets, value)
            draw.text((x + 1, y + height + 1), caption[: max(1, width // 6)], fill=(230, 230, 230), font=font)
            origins.append((x, y))
    return ContactSheet(sheet, list(indices), origins)
