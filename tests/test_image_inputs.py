"""Images as hospitals and archives send them (issue 13): EXIF orientation, high bit depth, odd modes, decoder details.

Every input is generated here with PIL and numpy; the expected values are the right ones (what a
viewer shows, the anatomy's contrast kept), not what the code happened to do before.
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components import imaging
from components.image_info import describe_image_bytes, describe_uris, hamming_distance
from components.imaging import (
    SUPPORTED_MODES,
    ImageDecodeError,
    UnsupportedModeError,
    decode_image_bytes,
    intensity_window,
    load_images,
    png_significant_bits,
    to_grayscale_array,
)
from components.labels import (
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_UNREADABLE,
    EXCLUDE_UNSUPPORTED_MODE,
    FILE_PROBLEM_REASONS,
    NON_COVID,
)
from components.manifest import EXCLUSION_PRECEDENCE, MANIFEST_COLUMNS
from components.validation import ValidationConfig, validate_manifest
from components.validation.tables import near_duplicate_table
from tests.factories import encode, manifest_row, manifest_table, png_chunk

# The near-duplicate threshold the pipeline uses (pHash bits): a copy stored rotated must fall within it.
NEAR = ValidationConfig().near_duplicate_max_distance
# Largest per-pixel difference between two JPEG encodings of the same picture at quality 95.
JPEG_TOLERANCE = 12


def upright_picture(width: int = 192, height: int = 256) -> np.ndarray:
    """A portrait, asymmetric picture (no rotation or mirror of it looks like itself): uint8 (height, width)."""
    y, x = np.mgrid[0:height, 0:width]
    picture = 30 + 0.6 * x + 0.3 * y + 25 * np.sin(y / 11.0) + 90 * (((x - 60) ** 2 + (y - 70) ** 2) < 30**2)
    picture[180:230, 120:170] -= 60  # a dark block low on the right
    return np.clip(picture, 0, 255).astype(np.uint8)


# How a camera stores the pixels of an upright picture for each EXIF orientation: the inverse
# of the transposition a viewer applies (EXIF 2.32, tag 0x0112).
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_with_orientation(picture: np.ndarray, orientation: int, image_format: str = "JPEG") -> bytes:
    """The file a camera writes for `picture` with EXIF Orientation `orientation`: pixels transposed, tag set."""
    image = Image.fromarray(picture)
    if STORED_AS[orientation] is not None:
        image = image.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if image_format == "JPEG" else {}
    return encode(image, image_format, exif=exif.tobytes(), **options)


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_in_describe(orientation):
    picture = upright_picture()
    upright = describe_image_bytes(encode(picture, "JPEG", quality=95))
    row = describe_image_bytes(stored_with_orientation(picture, orientation))

    assert row["exclusion_reason"] == ""
    assert (row["width"], row["height"]) == (192, 256)  # as displayed, whatever the storage
    assert hamming_distance(row["phash"], upright["phash"]) <= NEAR


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_when_decoding(orientation):
    picture = upright_picture()
    gray = decode_image_bytes(stored_with_orientation(picture, orientation))

    assert gray.shape == picture.shape
    assert np.abs(gray.astype(int) - picture).max() <= JPEG_TOLERANCE


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_of_a_png_is_exact(orientation):
    picture = upright_picture()
    data = stored_with_orientation(picture, orientation, "PNG")

    np.testing.assert_array_equal(decode_image_bytes(data), picture)
    assert describe_image_bytes(data)["phash"] == describe_image_bytes(encode(picture))["phash"]


def test_sha256_stays_the_digest_of_the_bytes():
    import hashlib

    data = stored_with_orientation(upright_picture(), 6)
    assert describe_image_bytes(data)["sha256"] == hashlib.sha256(data).hexdigest()


def test_training_and_serving_see_the_rotated_copy_upright(tmp_path):
    from components.serving import decode_batch

    picture = upright_picture()
    upright_file = tmp_path / "upright.jpg"
    upright_file.write_bytes(encode(picture, "JPEG", quality=95))
    rotated_file = tmp_path / "rotated.jpg"
    rotated_file.write_bytes(stored_with_orientation(picture, 6))

    trained = load_images([str(upright_file), str(rotated_file)], 64).astype(int)
    assert np.abs(trained[0] - trained[1]).max() <= JPEG_TOLERANCE

    cells = pd.Series([base64.b64encode(path.read_bytes()).decode() for path in (upright_file, rotated_file)])
    served = decode_batch(cells, 64)
    assert served.shape == (2, 64, 64, 3)
    assert np.abs(served[0] - served[1]).max() <= JPEG_TOLERANCE
    assert np.abs(served[1, :, :, 0] - trained[1]).max() == 0  # serving and training decode alike


def test_rotated_copy_is_a_near_duplicate_pair_for_validation(tmp_path):
    picture = upright_picture()
    paths = []
    for name, data in (("a.jpg", encode(picture, "JPEG", quality=95)), ("b.jpg", stored_with_orientation(picture, 8))):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    described = describe_uris(paths)
    rows = [manifest_row(path, NON_COVID, **info) for path, info in zip(paths, described, strict=True)]

    pairs = near_duplicate_table(manifest_table(rows), NEAR)

    assert list(zip(pairs["uri_a"], pairs["uri_b"], strict=True)) == [(paths[0], paths[1])]
    assert (rows[1]["width"], rows[1]["height"]) == (rows[0]["width"], rows[0]["height"])


# ---------------------------------------------------------------- high bit depth


def anatomy(bits: int, width: int = 400, height: int = 400) -> np.ndarray:
    """Smooth 'anatomy' spanning about 5 %..95 % of a `bits`-bit range: uint16 (height, width)."""
    y, x = np.mgrid[0:height, 0:width]
    top = 2**bits - 1
    shape = 0.5 + 0.25 * np.sin(x / 23.0) + 0.25 * np.cos(y / 31.0)  # 0..1
    return np.round(top * (0.05 + 0.9 * shape)).astype(np.uint16)


def with_label(pixels: np.ndarray, value: int = 65535) -> np.ndarray:
    """A small burned-in label (10 x 40 px, 0.25 % of a 400 x 400 image) at `value`, top left."""
    labelled = pixels.copy()
    labelled[8:18, 8:48] = value
    return labelled


def anatomy_levels(gray: np.ndarray) -> int:
    """Distinct 8-bit levels of the anatomy (the label's rows left out)."""
    return len(np.unique(gray[30:, :]))


def with_sbit(png: bytes, bits: int) -> bytes:
    """A PNG with an sBIT chunk of `bits` inserted right after IHDR (PIL writes none)."""
    ihdr_end = 8 + 12 + 13
    return png[:ihdr_end] + png_chunk(b"sBIT", bytes([bits])) + png[ihdr_end:]


def test_twelve_bit_anatomy_under_a_burned_in_label_keeps_its_contrast():
    data = encode(Image.fromarray(with_label(anatomy(12))))
    gray = decode_image_bytes(data)

    # min-max rescaling gave the anatomy about 13 of the 256 levels; a robust window gives most of them.
    assert anatomy_levels(gray) >= 200
    assert gray[10, 10] == 255  # the label stays white
    assert describe_image_bytes(data)["gray_levels"] >= 200


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_other_depths_keep_their_contrast(bits):
    gray = decode_image_bytes(encode(Image.fromarray(with_label(anatomy(bits)))))
    assert anatomy_levels(gray) >= 200


@pytest.mark.parametrize(("mode", "dtype"), [("I;16", "<u2"), ("I;16B", ">u2")])
def test_sixteen_bit_tiff_keeps_its_contrast(mode, dtype):
    pixels = with_label(anatomy(12))
    data = encode(Image.frombytes(mode, (400, 400), pixels.astype(dtype).tobytes()), "TIFF")
    row = describe_image_bytes(data)

    assert row["mode"] == mode
    assert row["exclusion_reason"] == ""
    assert anatomy_levels(decode_image_bytes(data)) >= 200


def test_thirty_two_bit_integer_and_float_tiffs_keep_their_contrast():
    pixels = with_label(anatomy(12)).astype(np.int32)
    for image in (Image.fromarray(pixels, mode="I"), Image.fromarray(pixels.astype(np.float32), mode="F")):
        data = encode(image, "TIFF")
        assert describe_image_bytes(data)["mode"] == image.mode
        assert anatomy_levels(decode_image_bytes(data)) >= 200, image.mode


def test_significant_bits_of_a_png_set_the_window():
    pixels = with_label(anatomy(12))
    data = with_sbit(encode(Image.fromarray(pixels)), 12)

    assert png_significant_bits(data) == 12
    expected = np.clip(np.round(pixels.astype(np.float64) * 255 / 4095), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_image_bytes(data), expected)


def test_significant_bits_with_samples_scaled_to_sixteen_bits():
    # The PNG specification asks encoders to scale 12-bit samples up to 16 bits (left shift).
    pixels = anatomy(12) << 4
    data = with_sbit(encode(Image.fromarray(pixels)), 12)

    expected = np.round(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(decode_image_bytes(data), expected)


def test_significant_bits_absent_or_not_grayscale():
    assert png_significant_bits(encode(Image.fromarray(anatomy(12)))) is None
    assert png_significant_bits(b"\xff\xd8\xff\xe0 a JPEG") is None
    rgb = encode(Image.new("RGB", (4, 4)))
    assert png_significant_bits(with_sbit(rgb, 5)) is None


def test_window_ignores_saturated_pixels_and_outliers():
    pixels = with_label(anatomy(12))
    low, high = intensity_window(pixels)
    assert 0 < low < 400
    assert 3500 < high < 4095


def test_flat_wide_image_is_black_not_an_error():
    gray = decode_image_bytes(encode(Image.fromarray(np.full((64, 64), 3000, dtype=np.uint16))))
    assert gray.max() == 0


def test_eight_bit_images_are_not_windowed():
    picture = (upright_picture() // 4).astype(np.uint8)  # 0..63: a dark image stays dark
    np.testing.assert_array_equal(decode_image_bytes(encode(picture)), picture)


# ---------------------------------------------------------------- modes


def colour_picture() -> np.ndarray:
    """An RGB picture with strong colours: uint8 (128, 128, 3)."""
    y, x = np.mgrid[0:128, 0:128]
    return np.stack([2 * x, 2 * y, 255 - x - y // 2], axis=2).clip(0, 255).astype(np.uint8)


def test_cmyk_jpeg_gives_the_luma_of_its_rgb():
    rgb = Image.fromarray(colour_picture())
    expected = np.asarray(rgb.convert("L"), dtype=int)
    data = encode(rgb.convert("CMYK"), "JPEG", quality=95)
    row = describe_image_bytes(data)

    assert row["mode"] == "CMYK"
    assert row["exclusion_reason"] == ""
    assert np.abs(decode_image_bytes(data).astype(int) - expected).max() <= JPEG_TOLERANCE


@pytest.mark.parametrize("mode", ["YCbCr", "CMYK", "LAB", "RGBX"])
def test_colour_tiffs_decode_to_grayscale(mode):
    gray = upright_picture()
    image = Image.fromarray(gray).convert("RGB")
    neutral = Image.new("L", image.size, 128)  # a* = b* = 0: no colour
    image = image.convert(mode) if mode != "LAB" else Image.merge("LAB", (Image.fromarray(gray), neutral, neutral))
    data = encode(image, "TIFF")

    assert describe_image_bytes(data)["exclusion_reason"] == ""
    assert np.abs(decode_image_bytes(data).astype(int) - gray).max() <= 2


def test_one_bit_image_is_black_and_white():
    bits = upright_picture() > 128
    gray = decode_image_bytes(encode(Image.fromarray(bits)))
    np.testing.assert_array_equal(gray, np.where(bits, 255, 0).astype(np.uint8))


def test_premultiplied_alpha_is_its_colour_over_black():
    image = Image.new("La", (4, 4), (90, 128))
    assert to_grayscale_array(image).max() == 90


def test_every_supported_mode_converts():
    for mode in SUPPORTED_MODES:
        assert to_grayscale_array(Image.new(mode, (8, 6))).shape == (6, 8), mode


def test_a_mode_without_conversion_is_refused_with_its_name(monkeypatch):
    # Every mode of Pillow 13 converts; a mode a later Pillow adds is refused until it is taught here.
    monkeypatch.setattr(imaging, "SUPPORTED_MODES", tuple(m for m in SUPPORTED_MODES if m != "HSV"))
    with pytest.raises(UnsupportedModeError, match="'HSV'"):
        to_grayscale_array(Image.new("RGB", (4, 4)).convert("HSV"))
    assert issubclass(UnsupportedModeError, ImageDecodeError)


def test_an_unusable_mode_is_one_excluded_row_and_the_drop_goes_on(tmp_path, monkeypatch):
    # A deployment whose decoder could not convert CMYK: only that file is excluded.
    monkeypatch.setattr(imaging, "SUPPORTED_MODES", tuple(m for m in SUPPORTED_MODES if m != "CMYK"))
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(encode(Image.fromarray(colour_picture()).convert("CMYK"), "JPEG"))
    fine = tmp_path / "fine.png"
    fine.write_bytes(encode(upright_picture()))
    rows = describe_uris([str(cmyk), str(fine)])

    assert rows[0]["exclusion_reason"] == EXCLUDE_UNSUPPORTED_MODE
    assert "'CMYK'" in rows[0]["exclusion_detail"]
    assert "expected one of" in rows[0]["exclusion_detail"]
    assert rows[1]["exclusion_reason"] == ""
    with pytest.raises(UnsupportedModeError, match="cmyk.jpg: cannot use image"):
        decode_image_bytes(cmyk.read_bytes(), name=str(cmyk))


def test_unsupported_mode_is_a_file_problem_after_too_large():
    assert EXCLUDE_UNSUPPORTED_MODE in FILE_PROBLEM_REASONS
    assert EXCLUDE_UNSUPPORTED_MODE in EXCLUSION_PRECEDENCE
    assert EXCLUSION_PRECEDENCE.index(EXCLUDE_UNSUPPORTED_MODE) < EXCLUSION_PRECEDENCE.index(EXCLUDE_UNREADABLE)


def test_default_validation_lets_a_cmyk_image_through(tmp_path):
    rows = [
        manifest_row(f"/d/{label[:3]}{i}.png", label, "src_a" if i % 2 else "src_b", mode="CMYK" if i == 0 else "L")
        for label in ("non-COVID", "COVID-19")
        for i in range(6)
    ]
    report = validate_manifest(manifest_table(rows), "binary", tmp_path / "docs", ValidationConfig(), data_docs=False)

    assert next(r for r in report.results if r.name == "mode_allowed").success


# ---------------------------------------------------------------- gray levels


def test_gray_levels_is_a_manifest_column():
    assert "gray_levels" in MANIFEST_COLUMNS


def test_gray_levels_counts_the_levels_the_models_see():
    posterised = (upright_picture() // 32 * 32).astype(np.uint8)  # 8 levels
    assert describe_image_bytes(encode(posterised))["gray_levels"] == len(np.unique(posterised))


def test_few_gray_levels_is_a_warning_not_a_block(tmp_path):
    rows = [
        manifest_row(f"/d/{label[:3]}{i}.png", label, "src_a" if i % 2 else "src_b", gray_levels=13 if i == 0 else 240)
        for label in ("non-COVID", "COVID-19")
        for i in range(6)
    ]
    report = validate_manifest(manifest_table(rows), "binary", tmp_path / "docs", ValidationConfig(), data_docs=False)
    result = next(r for r in report.results if r.name == "enough_gray_levels")

    assert not result.success
    assert not result.blocking
    assert report.success
    assert "/d/non0.png (13 levels)" in result.details

    relaxed = ValidationConfig(min_gray_levels=8)
    again = validate_manifest(manifest_table(rows), "binary", tmp_path / "docs2", relaxed, data_docs=False)
    assert next(r for r in again.results if r.name == "enough_gray_levels").success


# ---------------------------------------------------------------- decoder details


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"patient list\nname,age\n", "found text"),
        (b"<!DOCTYPE html><html><body>403</body></html>", "found an HTML page"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "found a PDF document"),
        (b"PK\x03\x04" + bytes(40), "found a ZIP archive"),
        (bytes([0, 1, 2, 250, 251, 252]) * 20, "found binary data"),
    ],
)
def test_not_an_image_says_what_was_expected_and_found(data, found):
    row = describe_image_bytes(data)
    assert row["exclusion_reason"] == EXCLUDE_NOT_DECODABLE
    assert "expected an image file" in row["exclusion_detail"]
    assert found in row["exclusion_detail"]


def test_unreadable_image_names_the_format_expected():
    png = encode(upright_picture())
    idat = png.index(b"IDAT")
    corrupt = bytearray(png)
    corrupt[idat + 4 : idat + 20] = bytes(16)  # zlib header and first bytes zeroed, CRC left wrong
    row = describe_image_bytes(bytes(corrupt))

    assert row["exclusion_reason"] == EXCLUDE_UNREADABLE
    assert row["exclusion_detail"].startswith("expected decodable PNG data; the decoder failed with ")
