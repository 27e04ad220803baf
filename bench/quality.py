"""How image quality is measured, by the quality tests and by the bench's quality section alike.

A zone plate shows aliasing directly, and real photographs with fine detail (scikit-image's
sample images, shipped in its wheel) show what users see; the reference is Pillow's Lanczos on
the exact box shards' geometry takes, from the fully decoded image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shards.write.geometry import place


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


OUT = (224, 224)
# scikit-image's bundled sample photographs (shipped in its wheel; no download).
PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "camera.png",
    "text.png",
    "page.png",
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def on_box(image: Image.Image, resample: Image.Resampling, size: tuple[int, int], resize: str) -> np.ndarray:
    """Pillow's own resize with `resample` on the exact box shards' geometry takes."""
    placement = place(*image.size, size, resize)
    left, top, width, height = placement.target
    canvas = Image.new("RGB", (size[1], size[0]))
    canvas.paste(image.resize((width, height), resample, box=placement.source), (left, top))
    return np.asarray(canvas)


def lanczos_reference(image: Image.Image, size: tuple[int, int], resize: str) -> np.ndarray:
    """Pillow's Lanczos on the exact box shards' geometry takes, from the fully decoded image."""
    return on_box(image, Image.Resampling.LANCZOS, size, resize)


def zone_plate(side: int = 1024) -> Image.Image:
    """cos(pi r^2 / side): the local frequency grows linearly to the Nyquist limit at r = side / 2."""
    y, x = np.mgrid[:side, :side] - (side - 1) / 2
    values = 127.5 + 127.5 * np.cos(np.pi * (x * x + y * y) / side)
    return Image.fromarray(np.round(values).astype(np.uint8)).convert("RGB")


def aliasing(output: np.ndarray) -> float:
    """RMS deviation from flat grey where the plate's frequency is past the output's Nyquist.

    A 1024 -> 224 shrink puts the output's Nyquist at r = 112 input px, 24.5 output px; between
    45 and 105 output px from the centre (inside the input's own Nyquist circle) an ideal
    resampler leaves a flat field; whatever pattern is there is aliasing.
    """
    y, x = np.mgrid[: output.shape[0], : output.shape[1]] - (output.shape[0] - 1) / 2
    radius = np.hypot(x, y)
    grey = output[..., 0].astype(np.float64)[(radius > 45) & (radius < 105)]
    return float(np.sqrt(np.mean((grey - grey.mean()) ** 2)))
