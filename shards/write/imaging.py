"""Encoded bytes -> an oriented RGB array of the output size, or a DecodeError with a reason.

Decoding follows what a careful user does by hand: refuse decompression bombs before any pixel
is decoded, let libjpeg downscale in the DCT domain (`Image.draft`) when the target is much
smaller than the source, honour EXIF orientation, bring every Pillow mode to RGB (alpha
composited on black), and resize with the antialiased resampler both decode paths share
(`shards.write.resample`).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from shards.errors import DecodeError
from shards.options import numpy_storage_dtype
from shards.write import jpeg_turbo
from shards.write.geometry import exif_orientation, needed_size, shown_size
from shards.write.resample import resize_array

# Pillow's own default bomb limit (~89.5 Mpx, a 0.25 GiB RGB buffer): large enough for any camera,
# small enough that two workers decoding at once stay well inside a worker's memory budget.
MAX_PIXELS = 89_478_485
BACKGROUND = (0, 0, 0)

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(
    data: bytes,
    size: tuple[int, int],
    resize: str = "crop",
    *,
    max_pixels: int = MAX_PIXELS,
    fast: bool = True,
) -> np.ndarray:
    """Decode one encoded image into a (height, width, 3) uint8 array of `size`.

    JPEGs take the libjpeg-turbo + OpenCV path (`shards.write.jpeg_turbo`) when it can handle them
    exactly; everything else, and every failure, goes through Pillow.

    Args:
        data: the file's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF: whatever Pillow reads).
        size: the output (height, width).
        resize: `stretch`, `crop` or `pad` (see `PreprocessOptions`).
        max_pixels: inputs with more pixels are refused as decompression bombs.
        fast: allow the libjpeg-turbo path (False forces Pillow, for comparisons).

    Raises:
        DecodeError: the bytes are not a readable image, or exceed `max_pixels`.
    """
    if not data:
        raise DecodeError("empty file")
    if fast:
        pixels = jpeg_turbo.decode_jpeg(data, size, resize, max_pixels)
        if pixels is not None:
            return pixels
    return _decode_with_pillow(data, size, resize, max_pixels)


def _decode_with_pillow(data: bytes, size: tuple[int, int], resize: str, max_pixels: int) -> np.ndarray:
    """The careful path: every format and mode Pillow reads, and the reasons for refusals."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"decompression bomb: {width}x{height} is {width * height / 1e6:.0f} Mpx, "
                    f"over the {max_pixels / 1e6:.0f} Mpx limit"
                )
            orientation = exif_orientation(image)
            reduction = 1
            if image.format == "JPEG":
                drafted = image.draft(None, needed_size(width, height, orientation, size, resize))
                if drafted is not None:  # the DCT-domain reduction libjpeg will decode at
                    reduction = round(width / drafted[1][2])
            image.load()
            if orientation in _TRANSPOSE:
                image = image.transpose(_TRANSPOSE[orientation])
            full_size = shown_size(width, height, orientation)
            return resize_array(np.asarray(_to_rgb(image)), size, resize, full_size=full_size, reduction=reduction)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not an image Pillow can read (unknown or corrupt header)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason:
            raise DecodeError(f"truncated image ({reason})") from exc
        raise DecodeError(f"corrupt image ({reason})") from exc
    except MemoryError as exc:
        raise DecodeError("image too large to decode in memory") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB; transparency is composited on `BACKGROUND`."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image), mode)).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer and float greyscale to 0..255 without clipping the range."""
    values = array.astype(np.float64)
    if mode == "F":
        finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and np.max(finite) <= 1.0 else 1.0
        values = finite * scale
    elif mode in _SIXTEEN_BIT_MODES or np.max(values, initial=0) > 255:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_storage(rgb: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a uint8 RGB array to the on-disk representation of `dtype`.

    Float dtypes are scaled to [0, 1]; bfloat16 is returned as its uint16 bit pattern (see
    `shards.options.numpy_storage_dtype`).
    """
    if dtype == "uint8":
        return rgb
    scaled = np.divide(rgb, np.float32(255.0), dtype=np.float32)
    if dtype == "bfloat16":
        import ml_dtypes

        return scaled.astype(ml_dtypes.bfloat16).view(np.uint16)
    return scaled.astype(numpy_storage_dtype(dtype))
