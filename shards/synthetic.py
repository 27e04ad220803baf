"""Real image files made on the spot, for the demo, the tests and the benchmarks.

Nothing is downloaded: each image is smooth, photo-like content (gradients, soft blobs, texture
and sensor noise) encoded by Pillow as a real JPEG/PNG/WebP file. Each class has its own colour
cast, so a small model can learn the classes, and content varies enough that resize quality and
decode speed measured on it mean something.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLASS_TINTS = [
    (200, 60, 50),
    (60, 170, 70),
    (50, 80, 200),
    (210, 190, 60),
    (150, 70, 180),
    (60, 180, 190),
    (230, 130, 40),
    (120, 120, 120),
]


def photo_like(rng: np.random.Generator, height: int, width: int, tint: Sequence[int]) -> np.ndarray:
    """An (height, width, 3) uint8 image with the statistics of a blurry photograph.

    Every term but the noise is separable, so it is made from a row and a column (a 1 Mpx image
    takes ~0.1 s instead of 0.3 s); the random draws are the same, in the same order."""
    y = np.arange(height, dtype=np.float32)[:, None] / max(height - 1, 1)
    x = np.arange(width, dtype=np.float32)[None, :] / max(width - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    base = np.asarray(tint, np.float32)
    image = (0.55 + 0.45 * ramp)[..., None] * base
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0, 1, 2)
        spread = np.float32(2 * rng.uniform(0.05, 0.3) ** 2)
        blob = np.exp(-((y - np.float32(cy)) ** 2) / spread) * np.exp(-((x - np.float32(cx)) ** 2) / spread)
        image += blob[..., None] * rng.uniform(-90, 90, 3).astype(np.float32)
    frequency = np.float32(rng.uniform(8, 40))
    phase = np.float32(rng.uniform())
    image += (12 * np.sin(frequency * (x + phase) * np.float32(np.pi)) * np.cos(frequency * y * np.float32(np.pi)))[
        ..., None
    ]
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


#: The longest side made at full size; larger images are upscaled from a quarter size.
RENDER_FULL = 800


def _render(rng: np.random.Generator, height: int, width: int, tint: Sequence[int]) -> np.ndarray:
    """Images over RENDER_FULL px are rendered at a quarter size, upscaled and given full-size
    sensor noise: several times cheaper to make, and as costly to decode (the noise is what
    the entropy coder pays for)."""
    if max(height, width) <= RENDER_FULL:
        return photo_like(rng, height, width, tint)
    small = Image.fromarray(photo_like(rng, height // 4, width // 4, tint))
    large = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noise = rng.integers(-6, 7, large.shape, dtype=np.int16)
    return np.clip(large + noise, 0, 255).astype(np.uint8)


def make_image_folder(
    root: str,
    count: int,
    *,
    classes: int = 4,
    sizes: tuple[int, int] = (300, 640),
    formats: Sequence[str] = ("jpeg",),
    quality: tuple[int, int] = (75, 95),
    seed: int = 0,
    first_index: int = 0,
) -> list[str]:
    """Write `count` images into `root/class_<k>/` folders; returns their paths.

    Args:
        root: the folder to fill (created if needed).
        count: how many images in all, spread round-robin over the classes.
        classes: the number of class folders (0 writes a flat folder with no labels).
        sizes: the range of the longer side in pixels; aspect ratios vary from 3:4 to 16:9.
        formats: Pillow format names to cycle through (jpeg, png, webp).
        quality: the range of JPEG/WebP quality.
        seed: makes the set reproducible.
        first_index: numbers files from here, so several processes can fill one folder.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(first_index, first_index + count):
        label = i % classes if classes else 0
        folder = os.path.join(root, f"class_{label}") if classes else root
        os.makedirs(folder, exist_ok=True)
        longer = int(rng.integers(sizes[0], sizes[1] + 1))
        aspect = rng.uniform(0.75, 1.78)
        width, height = (
            (longer, max(8, int(longer / aspect))) if rng.random() < 0.7 else (max(8, int(longer / aspect)), longer)
        )
        pixels = _render(rng, height, width, CLASS_TINTS[label % len(CLASS_TINTS)])
        kind = formats[i % len(formats)].lower()
        extension = {"jpeg": "jpg"}.get(kind, kind)
        path = os.path.join(folder, f"img_{i:06d}.{extension}")
        save_kwargs = {"quality": int(rng.integers(quality[0], quality[1] + 1))} if kind in ("jpeg", "webp") else {}
        Image.fromarray(pixels).save(path, format=kind.upper(), **save_kwargs)
        paths.append(path)
    return paths
