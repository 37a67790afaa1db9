"""Deterministic image preprocessing shared by training, evaluation and serving.

Every model in this project takes raw pixels: a float32 tensor of shape
(size, size, 3) with values in 0..255. The backbone's own normalisation lives
inside the model (see components/backbones.py), so that callers never have to
know which `preprocess_input` a backbone wants.

Radiographs are grayscale; colour, alpha and palette images are converted to
8-bit grayscale, wider grayscale (16-bit, 32-bit integer, float) is windowed to
8 bits (``intensity_window``), and the single channel is repeated three times so
that ImageNet backbones accept it.

Orientation comes first: an image whose pixels are stored rotated or mirrored
with an EXIF Orientation tag (cameras, phones, some scanners) is turned upright
as every viewer shows it (``orient``, PIL's ``ImageOps.exif_transpose``) before
anything else, so hashing (components.image_info), training, evaluation,
serving and Grad-CAM all see the same upright pixels. ``decode_image_bytes`` is
the one function that turns a file's bytes into those pixels.

Decompression bombs: an image whose declared size is above ``MAX_IMAGE_PIXELS``
is refused from its header, before any pixel is decoded (``pixel_limit_problem``,
which components.image_info applies too). Importing this module changes no
global state.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image, ImageOps

from components import dicom
from components.errors import CxrError
from components.storage import read_bytes

# Modes wider than 8 bits: windowed to 0..255 by intensity_window (components.image_info hashes them the same way).
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
# 16-bit modes: windowed through a 65,536-entry lookup table (no float copy of the image).
UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Every PIL mode to_grayscale_array converts correctly. Anything else is refused with
# UnsupportedModeError (components.image_info excludes such a file, with its own reason).
SUPPORTED_MODES: tuple[str, ...] = (
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "La",  # premultiplied alpha: the colour channels are already composited over black
    "RGBa",
    "CMYK",  # PIL converts CMYK to RGB, then to luma (Adobe's inverted CMYK JPEGs are undone on load)
    "YCbCr",  # luma is its Y channel
    "LAB",  # its L* (lightness) channel; PIL has no LAB -> RGB conversion
    "HSV",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "I",
    "F",
)

# Robust window of wide images without a significant-bits field: the 0.5th and 99.5th
# percentiles, the intensity clipping of nnU-Net (Isensee et al., "nnU-Net: a
# self-configuring method for deep learning-based biomedical image segmentation",
# Nature Methods 18, 2021), computed over the pixels below the 16-bit saturation value.
WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)
# Pixels at the 16-bit maximum are burned-in labels, markers or saturation, not anatomy:
# left out of the window's percentiles (they are shown white).
SATURATED_16 = 65535

# Windows of images above this many pixels are computed on a regular 1-in-4 subsample
# (every other row and column): the same percentiles to within a level, 4x faster.
WINDOW_SAMPLE_ABOVE = 1_000_000

# EXIF Orientation values (TIFF/EXIF tag 0x0112) whose transposition swaps width and height.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112

# Decompression-bomb limit (width x height): larger declared sizes are refused before any
# pixel is decoded. Applied explicitly by pixel_limit_problem, where images are opened;
# PIL's process-wide Image.MAX_IMAGE_PIXELS is never changed (when lower, it applies).
MAX_IMAGE_PIXELS = 40_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(CxrError, ValueError):
    """An input could not be decoded as an image; the message names it."""


class UnsupportedModeError(ImageDecodeError):
    """An image decoded, but its PIL mode has no correct conversion to grayscale."""


def pixel_limit() -> int:
    """The decompression-bomb limit in force, read at every call.

    Returns:
        MAX_IMAGE_PIXELS, or PIL's ``Image.MAX_IMAGE_PIXELS`` when that is set and lower
        (so a process, or a test, that lowers PIL's limit gets it here too). In pixels.
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, pil_limit) if pil_limit else MAX_IMAGE_PIXELS


def pixel_limit_problem(width: int, height: int) -> str | None:
    """Check a declared image size against pixel_limit(), before decoding.

    Args:
        width: declared width in pixels (from the file's header).
        height: declared height in pixels.

    Returns:
        A sentence saying the size is above the limit (a possible decompression bomb), or None
        when the image may be decoded.
    """
    limit = pixel_limit()
    if width * height > limit:
        return (
            f"declared size {width}x{height} = {width * height:,} pixels is above the "
            f"{limit:,}-pixel limit (possible decompression bomb); not decoded"
        )
    return None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation value of an opened image (1 when it has none or an invalid one).

    Args:
        image: an opened PIL image (a PNG is loaded by PIL to find its EXIF chunk).

    Returns:
        1..8 as the EXIF/TIFF specification defines them: 1 upright, 3 rotated 180 degrees,
        6 and 8 rotated a quarter turn, 2, 4, 5 and 7 mirrored.
    """
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (a corrupt EXIF block: shown as stored, like most viewers)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The (width, height) a viewer shows for an image stored as width x height with an EXIF orientation.

    Args:
        width: stored width in pixels.
        height: stored height in pixels.
        orientation: EXIF Orientation value, 1..8 (exif_orientation).

    Returns:
        (width, height) in pixels, swapped for orientations 5..8 (quarter turns).
    """
    return (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)


def orient(image: Image.Image) -> Image.Image:
    """Turn a loaded image upright as viewers show it: its EXIF Orientation applied (PIL's exif_transpose).

    Args:
        image: a loaded PIL image of any mode.

    Returns:
        `image` itself when it has no orientation to apply (no copy), else a transposed copy.
    """
    if exif_orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def png_significant_bits(data: bytes) -> int | None:
    """The significant bits of a grayscale PNG's samples, from its sBIT chunk (Pillow does not expose it).

    A 16-bit PNG written from 10-, 12- or 14-bit detector data may say so with an sBIT chunk
    (PNG specification, 11.3.4.4); intensity_window then scales by that range instead of guessing.

    Args:
        data: the file's bytes.

    Returns:
        The gray channel's significant bits (1..16) of a grayscale PNG (colour type 0 or 4) that
        has a valid sBIT chunk before its image data; None otherwise (other formats included).
    """
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    depth, colour = data[24], data[25]
    if colour not in (0, 4):
        return None
    index, end = len(_PNG_SIGNATURE), len(data)
    while index + 8 <= end:
        length, kind = struct.unpack(">I4s", data[index : index + 8])
        if kind in (b"IDAT", b"IEND"):  # sBIT must precede the image data
            return None
        if kind == b"sBIT" and length >= 1 and index + 9 <= end:
            bits = data[index + 8]
            return bits if 1 <= bits <= depth else None
        index += 12 + length
    return None


def _window_sample(image: Image.Image) -> np.ndarray:
    """The pixels a wide image's window is computed on: all, or every other row and column above WINDOW_SAMPLE_ABOVE."""
    width, height = image.size
    if width * height > WINDOW_SAMPLE_ABOVE:
        image = image.resize(((width + 1) // 2, (height + 1) // 2), Image.Resampling.NEAREST)
    return np.asarray(image)


def _uint16_window(array: np.ndarray) -> tuple[float, float]:
    """(low, high) percentiles of 16-bit pixels, from their histogram, saturated pixels left out."""
    counts = np.bincount(array.ravel(), minlength=SATURATED_16 + 1)
    if counts[:SATURATED_16].any():
        counts[SATURATED_16] = 0
    cumulative = np.cumsum(counts)
    total = cumulative[-1]
    low_rank, high_rank = (total * percent / 100.0 for percent in WINDOW_PERCENTILES)
    low = int(np.searchsorted(cumulative, max(low_rank, 1)))
    high = int(np.searchsorted(cumulative, max(high_rank, 1)))
    if high <= low:  # (nearly) flat: the full range of values present, if any
        present = np.flatnonzero(counts)
        low, high = int(present[0]), int(present[-1])
    return float(low), float(high)


def _value_window(array: np.ndarray) -> tuple[float, float]:
    """(low, high) percentiles of 32-bit integer or float pixels (non-finite values left out)."""
    values = array[np.isfinite(array)] if array.dtype.kind == "f" else array.ravel()
    if values.size == 0:
        return 0.0, 0.0
    if array.dtype.kind != "f" and values.max() == SATURATED_16 and (values < SATURATED_16).any():
        values = values[values < SATURATED_16]
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return low, high


def intensity_window(array: np.ndarray, significant_bits: int | None = None) -> tuple[float, float]:
    """The intensity range of a wide grayscale image that becomes 0..255 (what a viewer's default window does).

    * With significant bits b (a PNG's sBIT): 0 .. 2**b - 1 when the image's pixels (those
      below 16-bit saturation) fit in b bits (a 12-bit detector stored as is); 0 .. 65535 when
      they do not (samples scaled to 16 bits, as the PNG specification asks of encoders).
    * Otherwise: the WINDOW_PERCENTILES (0.5 %, 99.5 %) of the pixels below 16-bit saturation,
      so that a small burned-in label at 65535 or a few hot pixels do not squeeze the anatomy
      into a few gray levels (min-max rescaling did: 12-bit anatomy got about 13 of 256 levels).

    Args:
        array: pixels of shape (height, width): uint16, int32 or float32 (PIL's I;16*, I or F);
            to_grayscale_image passes every other row and column of images above
            WINDOW_SAMPLE_ABOVE pixels (the same percentiles to within a level, 4x faster).
        significant_bits: the significant bits of the samples (png_significant_bits), or None.

    Returns:
        (low, high) in the units of `array`; low maps to 0 and high to 255, values outside are
        clipped. low == high for a flat image.
    """
    integer = array.dtype.kind in "ui"
    if significant_bits is not None and integer and array.size:
        top = 2**significant_bits - 1
        below = array[array < SATURATED_16] if array.max() == SATURATED_16 else array
        fits = below.size == 0 or int(below.max()) <= top
        return 0.0, float(top if fits else SATURATED_16)
    if array.dtype == np.uint16 or (array.dtype.kind == "u" and array.dtype.itemsize == 2):
        return _uint16_window(array)
    return _value_window(array)


def _windowed(image: Image.Image, significant_bits: int | None) -> Image.Image:
    """A wide image (I;16*, I or F) windowed by intensity_window to an "L" image."""
    low, high = intensity_window(_window_sample(image), significant_bits)
    scale = 255.0 / (high - low) if high > low else 0.0
    if image.mode in UINT16_MODES:
        # PIL maps an "I" image through a 65,536-entry table to "L": no float copy of a full-size radiograph.
        table = np.clip(np.round((np.arange(SATURATED_16 + 1, dtype=np.float64) - low) * scale), 0, 255)
        return image.convert("I").point(table.astype(np.uint8).tolist(), "L")
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=low, posinf=high, neginf=low)
    gray = np.ascontiguousarray(np.clip(np.round((values - low) * scale), 0, 255).astype(np.uint8))
    return Image.frombuffer("L", image.size, gray, "raw", "L", 0, 1)


def to_grayscale_image(image: Image.Image, significant_bits: int | None = None) -> Image.Image:
    """Convert a PIL image to the 8-bit grayscale the models see, as a PIL "L" image.

    The conversion of to_grayscale_array (which see), without the copy into numpy: for callers
    that go on with PIL (components.image_info hashes and counts it).

    Args:
        image: a loaded PIL image of a mode in SUPPORTED_MODES.
        significant_bits: a wide image's significant bits (png_significant_bits), or None.

    Returns:
        A PIL image of mode "L", the size of `image`; `image` itself when it is already "L".

    Raises:
        UnsupportedModeError: the mode is not in SUPPORTED_MODES (the message names it).
    """
    mode = image.mode
    if mode not in SUPPORTED_MODES:
        raise UnsupportedModeError(
            f"PIL mode {mode!r} has no grayscale conversion here; expected one of {list(SUPPORTED_MODES)}"
        )
    if mode == "L":
        return image
    if mode in WIDE_MODES:
        return _windowed(image, significant_bits)
    if mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        # Transparent pixels become black, which is what an X-ray background is.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    elif mode in ("LAB", "La"):  # L* lightness; premultiplied gray (already over black)
        image = image.getchannel("L")
    elif mode == "RGBa":
        image = Image.merge("RGB", image.split()[:3])
    return image.convert("L")


def to_grayscale_array(image: Image.Image, significant_bits: int | None = None) -> np.ndarray:
    """Convert a PIL image to the 8-bit grayscale the models see.

    Wide modes (I;16*, I, F) are windowed to 0..255 by intensity_window (values outside the
    window clipped); colour is converted to luma (ITU-R 601-2, PIL's "L"; CMYK, YCbCr and HSV
    through PIL's conversions, LAB by its L* channel); alpha and palette images are composited
    over black first (transparent pixels become background). Orientation is not applied here
    (see orient): callers pass images already upright.

    Args:
        image: a loaded PIL image of a mode in SUPPORTED_MODES.
        significant_bits: a wide image's significant bits (png_significant_bits), or None.

    Returns:
        uint8 array of shape (height, width), values 0..255.

    Raises:
        UnsupportedModeError: the mode is not in SUPPORTED_MODES (the message names it).
    """
    return np.asarray(to_grayscale_image(image, significant_bits), dtype=np.uint8)


def pil_error_text(error: BaseException) -> str:
    """PIL's error message, without the in-memory buffer it names (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "these bytes", str(error))


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an image file's bytes (PNG, JPEG or any format PIL reads) as upright 8-bit grayscale.

    The one decoding path of training, evaluation, serving and Grad-CAM: the declared size is
    checked against pixel_limit() before any pixel is decoded, then the EXIF orientation is
    applied (orient), then the pixels become 8-bit grayscale (to_grayscale_array, with a
    PNG's significant bits).

    Args:
        data: the file's bytes.
        name: what to call the input in an error (its URI or file name).

    Returns:
        uint8 array of shape (height, width) as displayed (after orientation), values 0..255.

    Raises:
        ImageDecodeError: the bytes are not a decodable image, its mode has no grayscale
            conversion, or its declared size is above the pixel limit; the message starts with `name`.
    """
    if dicom.is_dicom(data):  # by content, any name: components.dicom windows it as viewers do
        try:
            return dicom.decode_dicom(data, pixel_limit())
        except dicom.DicomError as error:
            raise ImageDecodeError(f"{name}: cannot decode DICOM ({error})") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = pixel_limit_problem(*image.size)  # from the header, before any pixel is decoded
            if problem is None:
                image.load()
                return to_grayscale_array(orient(image), png_significant_bits(data))
    except UnsupportedModeError as error:
        raise UnsupportedModeError(f"{name}: cannot use image ({error})") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{name}: cannot decode image ({pil_error_text(error)})") from error
    raise ImageDecodeError(f"{name}: cannot decode image ({problem})")


def resize_grayscale(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to a square, bilinear, aspect ratio not kept (as in the paper).

    Args:
        gray: uint8 array of shape (height, width).
        size: side of the result in pixels.

    Returns:
        uint8 array of shape (size, size); `gray` itself when it already has that shape.
    """
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_model_input(gray: np.ndarray, size: int) -> np.ndarray:
    """Turn a grayscale image into what every model here takes: raw pixels, 3 channels.

    Args:
        gray: uint8 array of shape (height, width).
        size: the backbone's input side in pixels.

    Returns:
        float32 array of shape (size, size, 3), values 0..255 (the channel repeated three times;
        normalisation is inside the model).
    """
    resized = resize_grayscale(gray, size).astype(np.float32)
    return np.repeat(resized[:, :, None], 3, axis=2)


def load_images(uris: list[str], size: int) -> np.ndarray:
    """Read, decode and resize image files into one grayscale stack.

    Args:
        uris: local paths or ``s3://`` URIs.
        size: side of every image in the stack, in pixels.

    Returns:
        uint8 array of shape (len(uris), size, size), in the order of `uris`.

    Raises:
        MissingFileError: a file does not exist.
        StorageError: a file cannot be read.
        ImageDecodeError: a file is not a decodable image, or is above the pixel limit.
    """
    out = np.empty((len(uris), size, size), dtype=np.uint8)
    for index, uri in enumerate(uris):
        out[index] = resize_grayscale(decode_image_bytes(read_bytes(uri), name=uri), size)
    return out


def encode_png(gray: np.ndarray) -> bytes:
    """Encode a grayscale image as PNG (for clients, tests and the served model's input example).

    Args:
        gray: uint8 array of shape (height, width).

    Returns:
        The PNG file's bytes (8-bit grayscale).
    """
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()
