import io

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from bench.quality import psnr
from shards.errors import DecodeError
from shards.synthetic import photo_like
from shards.write.imaging import decode_image, to_storage


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(height=300, width=400, seed=0) -> Image.Image:
    return Image.fromarray(photo_like(np.random.default_rng(seed), height, width, (180, 90, 60)))


@settings(max_examples=40, deadline=None)
@given(
    src_h=st.integers(1, 300),
    src_w=st.integers(1, 300),
    out_h=st.integers(1, 96),
    out_w=st.integers(1, 96),
    resize=st.sampled_from(["stretch", "crop", "pad"]),
)
def test_every_resize_gives_the_requested_shape(src_h, src_w, out_h, out_w, resize):
    data = encode(Image.new("RGB", (src_w, src_h), (10, 200, 30)))
    out = decode_image(data, (out_h, out_w), resize)
    assert out.shape == (out_h, out_w, 3) and out.dtype == np.uint8


@pytest.mark.parametrize(
    "resize, reference",
    [
        ("crop", lambda im, size: ImageOps.fit(im, size, Image.Resampling.LANCZOS)),
        ("stretch", lambda im, size: im.resize(size, Image.Resampling.LANCZOS)),
    ],
)
def test_jpeg_draft_path_stays_close_to_a_full_lanczos_reference(resize, reference):
    source = photo(900, 1200, seed=3)
    data = encode(source, "JPEG", quality=92)
    ours = decode_image(data, (112, 160), resize)
    theirs = np.asarray(reference(Image.open(io.BytesIO(data)).convert("RGB"), (160, 112)))
    assert psnr(ours, theirs) > 30


def test_pad_letterboxes_on_black_and_keeps_aspect():
    out = decode_image(encode(Image.new("RGB", (200, 100), (250, 250, 250))), (100, 100), "pad")
    assert (out[:24] == 0).all() and (out[-24:] == 0).all()  # bars top and bottom
    assert (out[30:70] > 240).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured(orientation):
    # A wide image whose left half is red; after orientation, compare with Pillow's own transpose.
    pixels = np.zeros((60, 120, 3), np.uint8)
    pixels[:, :60] = (255, 0, 0)
    pixels[:30, 60:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).resize((40, 40), Image.Resampling.BILINEAR)
    ours = decode_image(data, (40, 40), "stretch")
    assert psnr(ours, np.asarray(expected.convert("RGB"))) > 30
    assert ours.shape == (40, 40, 3)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_every_pillow_mode_becomes_rgb(mode):
    base = photo(64, 64).convert("RGBA" if "A" in mode else "RGB")
    if mode in ("I;16", "I"):
        image = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        image = image if mode == "I;16" else image.convert("I")
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0, mode="F")
    else:
        image = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr", "I", "F", "LA") else "PNG"
    # LZW: Pillow 12.3 (the last for Python 3.10) cannot read back its own uncompressed YCbCr TIFF.
    options = {"compression": "tiff_lzw"} if fmt == "TIFF" else {}
    out = decode_image(encode(image, fmt, **options), (32, 32), "stretch")
    assert out.shape == (32, 32, 3)
    if mode in ("I;16", "I", "F", "L"):  # high bit depths map to the full 0..255 range, not clipped
        grey = np.asarray(base.convert("L").resize((32, 32), Image.Resampling.BILINEAR))
        assert psnr(out[..., 0], grey) > 30


def test_transparency_is_composited_on_black():
    image = Image.new("RGBA", (20, 20), (255, 255, 255, 0))
    image.paste((255, 255, 255, 255), (0, 0, 10, 20))
    out = decode_image(encode(image), (20, 20), "stretch")
    assert out[:, :8].min() == 255 and out[:, 12:].max() == 0
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.info["transparency"] = 0
    assert decode_image(encode(palette), (10, 10), "stretch").max() == 0


def test_hostile_inputs_are_decode_errors_with_reasons():
    data = encode(photo(), "JPEG", quality=90)
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(b"", (8, 8))
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 3], (8, 8))
    with pytest.raises(DecodeError, match="not an image"):
        decode_image(b"GIF89a but no more" + bytes(range(256)), (8, 8))
    with pytest.raises(DecodeError, match="decompression bomb: 12000x12000"):
        decode_image(encode(Image.new("L", (12000, 12000))), (8, 8))
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(encode(Image.new("L", (100, 100))), (8, 8), max_pixels=5000)


def test_storage_casts_scale_floats_to_unit_range():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    assert to_storage(rgb, "uint8") is rgb
    assert np.allclose(to_storage(rgb, "float32"), [0, 128 / 255, 1])
    assert to_storage(rgb, "float16").dtype == np.float16
    bits = to_storage(rgb, "bfloat16")
    assert bits.dtype == np.uint16
    assert np.allclose(bits.view(ml_dtypes.bfloat16).astype(np.float32), [0, 128 / 255, 1], atol=4e-3)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_fast_jpeg_path_matches_the_careful_pillow_path(orientation, resize):
    from shards.write import jpeg_turbo

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo(480, 640, seed=orientation), "JPEG", quality=90, exif=exif.tobytes())
    assert jpeg_turbo.decode_jpeg(data, (96, 128), resize, 10**8) is not None  # the fast path took it
    fast = decode_image(data, (96, 128), resize)
    careful = decode_image(data, (96, 128), resize, fast=False)
    assert fast.shape == careful.shape == (96, 128, 3)
    assert psnr(fast, careful) > 33


@pytest.mark.parametrize("mode, progressive", [("L", False), ("RGB", True)])
def test_fast_path_handles_grey_and_progressive_jpegs(mode, progressive):
    data = encode(photo(300, 500).convert(mode), "JPEG", quality=88, progressive=progressive)
    assert psnr(decode_image(data, (64, 64), "crop"), decode_image(data, (64, 64), "crop", fast=False)) > 33


def test_fast_path_declines_what_it_cannot_do_exactly():
    from shards.write import jpeg_turbo

    cmyk = encode(photo().convert("CMYK"), "JPEG", quality=90)
    assert jpeg_turbo.decode_jpeg(cmyk, (32, 32), "crop", 10**8) is None
    assert decode_image(cmyk, (32, 32)).shape == (32, 32, 3)  # Pillow handles it
    truncated = encode(photo(), "JPEG")[:500]
    assert jpeg_turbo.decode_jpeg(truncated, (32, 32), "crop", 10**8) is None
    assert jpeg_turbo.decode_jpeg(encode(photo(), "PNG"), (32, 32), "crop", 10**8) is None
    big = encode(Image.new("L", (3000, 2000)), "JPEG")
    assert jpeg_turbo.decode_jpeg(big, (32, 32), "crop", 10**6) is None
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(big, (32, 32), max_pixels=10**6)


@pytest.mark.parametrize("padding", [0, 70_000, 200_000])
def test_fast_path_finds_exif_behind_large_header_segments(padding):
    """The orientation is found by walking the header segments, however large the ones before it
    (ICC profiles, XMP, thumbnails); a file whose segments do not chain up is searched instead."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo(240, 320), "JPEG", quality=90, exif=exif.tobytes())
    filler = b""
    for offset in range(0, padding, 60_000):  # APPn segments hold at most 65,533 bytes each
        chunk = min(60_000, padding - offset)
        filler += b"\xff\xe2" + (chunk + 2).to_bytes(2, "big") + bytes(chunk)
    padded = data[:2] + filler + data[2:]
    from shards.write import jpeg_turbo

    assert jpeg_turbo.decode_jpeg(padded, (60, 80), "crop", 10**8) is not None  # the fast path took it
    careful = decode_image(padded, (60, 80), "crop", fast=False)
    assert psnr(decode_image(padded, (60, 80), "crop"), careful) > 33
    assert psnr(decode_image(padded, (60, 80), "crop"), decode_image(data, (60, 80), "crop")) > 60
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    broken_chain = data[:after_app0] + b"\x00" + data[after_app0:]  # a stray byte where a marker should be
    assert jpeg_turbo._has_exif(broken_chain)
    assert psnr(decode_image(broken_chain, (60, 80), "crop"), careful) > 33
