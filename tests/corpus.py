"""A corpus with one file of each kind users' cameras, scanners and scrapes produce, good and bad."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from shards.synthetic import photo_like


def _photo(height=90, width=120, seed=0) -> Image.Image:
    return Image.fromarray(photo_like(np.random.default_rng(seed), height, width, (170, 100, 60)))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny compressed row: a classic bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def build_corpus(root: str) -> tuple[dict[str, bool], dict[str, str]]:
    """Write the corpus into `root/mixed/`; returns (name -> accepted?, name -> reason words for rejects)."""
    folder = os.path.join(root, "mixed")
    os.makedirs(folder, exist_ok=True)
    photo = _photo()
    files: dict[str, bytes] = {}
    for mode in ["1", "L", "RGB", "CMYK", "YCbCr"]:
        tiff = mode in ("CMYK", "YCbCr")
        # LZW: Pillow 12.3 (the last for Python 3.10) cannot read back its own uncompressed YCbCr TIFF.
        files[f"mode_{mode}.{'tif' if tiff else 'png'}"] = _save(
            photo.convert(mode), "TIFF" if tiff else "PNG", **({"compression": "tiff_lzw"} if tiff else {})
        )
    files["mode_LA.png"] = _save(photo.convert("LA"), "PNG")
    files["mode_RGBA.png"] = _save(photo.convert("RGBA"), "PNG")
    palette = photo.convert("P")
    files["mode_P_transparent.png"] = _save(palette, "PNG", transparency=0)
    grey16 = np.asarray(photo.convert("L")).astype(np.uint16) * 257
    files["mode_I16.png"] = _save(Image.fromarray(grey16), "PNG")
    files["mode_I.tif"] = _save(Image.fromarray(grey16).convert("I"), "TIFF")
    files["mode_F.tif"] = _save(Image.fromarray(np.asarray(photo.convert("L"), np.float32) / 255, mode="F"), "TIFF")
    files["mode_CMYK.jpg"] = _save(photo.convert("CMYK"), "JPEG", quality=90)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files[f"exif_{orientation}.jpg"] = _save(photo, "JPEG", quality=90, exif=exif.tobytes())
    files["progressive.jpg"] = _save(_photo(400, 600, 2), "JPEG", quality=85, progressive=True)
    files["plain.webp"] = _save(photo, "WEBP", quality=80)
    frames = [photo.convert("P"), _photo(seed=5).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    files["animated.gif"] = buffer.getvalue()
    files["plain.bmp"] = _save(photo, "BMP")
    files["UPPER CASE.JPEG"] = _save(photo, "JPEG")
    files["trailing_bytes.jpg"] = _save(photo, "JPEG") + b"\x00garbage after the end of image" * 10
    files["png_named.jpg"] = _save(photo, "PNG")  # wrong extension: content decides
    files["fotografía ñandú 写真.jpg"] = _save(photo, "JPEG")
    accepted = dict.fromkeys(files, True)

    jpeg = _save(_photo(200, 300, 3), "JPEG", quality=90)
    bad = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "empty.png": (b"", "empty file"),
        "random.jpg": (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
        "bomb.png": (_save(Image.new("L", (12000, 12000)), "PNG"), "decompression bomb"),
        "absurd_dimensions.png": (_png_header_only(1, 2**30), "decompression bomb"),
        "text.gif": (b"GIF89a" + b"no image here", "image"),
    }
    for name, (data, _) in bad.items():
        files[name] = data
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    os.symlink(os.path.join(folder, "does-not-exist.jpg"), os.path.join(folder, "broken_link.jpg"))
    reasons = {name: words for name, (_, words) in bad.items()}
    reasons["broken_link.jpg"] = "broken symlink"
    locked = os.path.join(folder, "locked.jpg")
    with open(locked, "wb") as handle:
        handle.write(jpeg)
    os.chmod(locked, 0)
    # Root reads any file whatever its mode; anyone else is refused it.
    if os.geteuid() == 0:
        accepted["locked.jpg"] = True
    else:
        reasons["locked.jpg"] = "permission denied"
    accepted.update(dict.fromkeys(reasons, False))
    return accepted, reasons


def listed(listing) -> tuple[list[str], list]:
    """Every listed input's name and first target, in listing order, however the listing is held
    (in memory, or in parts on disk): what index.parquet would show of them."""
    rows = listing.index_rows(np.arange(len(listing)))
    return rows.sources.to_pylist(), rows.labels.to_pylist()
