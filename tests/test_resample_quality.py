"""Resize quality at the default settings, on a zone plate and on real photographs.

Smooth synthetic images hide aliasing; a zone plate shows it directly (every frequency up to the
input's Nyquist, so what the output cannot show must come out flat grey), and real photographs
with fine detail (foliage, fur, fabric, text; scikit-image's sample images) show what users see.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from bench.quality import OUT, PHOTOS, aliasing, encode, lanczos_reference, on_box, psnr, zone_plate
from shards.write.imaging import decode_image
from shards.write.resample import resize_array


@pytest.mark.parametrize("fmt, kwargs", [("PNG", {}), ("JPEG", {"quality": 98})])
def test_zone_plate_aliasing_is_no_more_than_pillows_bilinear(fmt, kwargs):
    """Past the output's Nyquist a zone plate must come out flat: 0.2.0's OpenCV linear resize
    left ~61 grey levels RMS of moire there, Pillow's antialiased bilinear (Ray Data's resize)
    1.4. Ours, Pillow's bicubic filter, must not leave more than the bilinear one."""
    import cv2

    plate = zone_plate()
    ours = aliasing(decode_image(encode(plate, fmt, **kwargs), OUT, "crop"))
    bilinear = aliasing(on_box(plate, Image.Resampling.BILINEAR, OUT, "crop"))
    unfiltered = aliasing(cv2.resize(np.asarray(plate), OUT[::-1], interpolation=cv2.INTER_LINEAR))
    assert unfiltered > 30  # the measure sees aliasing when there is some
    assert ours <= bilinear, (ours, bilinear)


@pytest.fixture(scope="module")
def photographs() -> dict[str, Image.Image]:
    import skimage

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    return {name: Image.open(os.path.join(folder, name)).convert("RGB") for name in PHOTOS}


@pytest.mark.parametrize("resize", ["crop", "stretch", "pad"])
def test_real_photographs_score_40_db_against_lanczos_whatever_their_format(photographs, resize):
    scores: dict[str, list[float]] = {"JPEG": [], "PNG": []}
    for image in photographs.values():
        for fmt, kwargs in (("JPEG", {"quality": 95}), ("PNG", {})):
            data = encode(image, fmt, **kwargs)
            decoded = Image.open(io.BytesIO(data)).convert("RGB")  # the reference sees the same JPEG
            scores[fmt].append(psnr(decode_image(data, OUT, resize), lanczos_reference(decoded, OUT, resize)))
    jpeg, png = np.mean(scores["JPEG"]), np.mean(scores["PNG"])
    assert jpeg >= 40 and png >= 40, (jpeg, png)
    assert min(scores["JPEG"]) >= 30 and min(scores["PNG"]) >= 30, scores
    assert abs(jpeg - png) <= 1.0, (jpeg, png)


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_the_resize_is_pillows_bicubic_on_the_exact_box(photographs, resize):
    """The filter is Pillow's BICUBIC, computed in another order (rows first) with the same
    fixed-point rounding: equal to within rounding, far closer than any two filters are."""
    for name, image in photographs.items():
        ours = decode_image(encode(image, "PNG"), OUT, resize)
        pillow = on_box(image, Image.Resampling.BICUBIC, OUT, resize)
        assert psnr(ours, pillow) >= 50, name
        assert np.abs(ours.astype(int) - pillow).max() <= 12, name


def test_a_jpeg_reduced_in_the_dct_is_placed_as_the_full_image(photographs):
    """libjpeg rounds a reduced size up (641 columns at 1/2 decode to 321, not 320.5): placing
    on the reduced image would stretch the output by up to a pixel (30 dB on this photo in pad
    mode); the placement is made on the full size and scaled down instead."""
    image = photographs["rocket.jpg"].resize((641, 427))
    data = encode(image, "JPEG", quality=95)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    for resize in ("pad", "crop", "stretch"):
        reduced = decode_image(data, OUT, resize)  # decoded at 1/2 in the DCT
        full = resize_array(np.asarray(decoded), OUT, resize)
        assert psnr(reduced, full) >= 38, resize


def test_an_image_already_at_the_output_size_keeps_its_pixels(photographs):
    image = photographs["astronaut.png"].resize(OUT[::-1])
    assert np.array_equal(decode_image(encode(image, "PNG"), OUT, "crop"), np.asarray(image))


@pytest.mark.parametrize(
    "rows_in, rows_out, start, length",
    [
        (375, 224, 0.0, 375.0),  # ImageNet's short side: 8 taps
        (224, 224, 0.0, 224.0),  # unscaled: one tap with a weight
        (100, 224, 0.0, 100.0),  # enlarged
        (600, 50, 3.5, 590.0),  # 12x: 49 taps, a remainder after the fours
        (60, 9, 0.4, 58.7),  # 6.5x on a fractional box, filters cut by both edges
        (1, 4, 0.0, 1.0),  # a single row
    ],
)
def test_a_filter_pass_is_the_rounded_clipped_sum_of_its_taps(rows_in, rows_out, start, length):
    """A pass adds its taps four input rows at a time: whatever the tap count, the result is
    the plain weighted sum, rounded and clipped (noise input, so the cubic's negative lobes clip)."""
    from shards.write import resample_kernels as kernels

    source = np.random.default_rng(rows_in).integers(0, 256, (rows_in, 40), dtype=np.uint8)
    rows, weights = kernels.weights(rows_in, rows_out, start, length)
    out = np.empty((rows_out, 33), np.uint8)
    kernels.filter_rows(source, 4, 37, rows, weights, out)
    half = 1 << (kernels.PRECISION_BITS - 1)
    total = np.einsum("jt,jtx->jx", weights.astype(np.int64), source[rows][:, :, 4:37].astype(np.int64)) + half
    assert np.array_equal(out, np.clip(total >> kernels.PRECISION_BITS, 0, 255))
