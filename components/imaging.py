"""Deterministic image preprocessing shared by training, evaluation and serving.

Every model in this project takes raw pixels: a float32 tensor of shape
(size, size, 3) with values in 0..255. The backbone's own normalisation lives
inside the model (see components/backbones.py), so that callers never have to
know which `preprocess_input` a backbone wants.

Radiographs are grayscale; colour, alpha and palette images are converted to
8-bit grayscale, 16-bit grayscale is rescaled to 8 bits, and the single channel
is repeated three times so that ImageNet backbones accept it.

Decompression bombs: an image whose declared size is above ``MAX_IMAGE_PIXELS``
is refused from its header, before any pixel is decoded (``pixel_limit_problem``,
which components.image_info applies too). Importing this module changes no
global state.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from components.errors import CxrError
from components.storage import read_bytes

# Modes wider than 8 bits: min-max rescaled to 0..255 (components.image_info hashes them the same way).
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})

# Decompression-bomb limit (width x height): larger declared sizes are refused before any
# pixel is decoded. Applied explicitly by pixel_limit_problem, where images are opened;
# PIL's process-wide Image.MAX_IMAGE_PIXELS is never changed (when lower, it applies).
MAX_IMAGE_PIXELS = 40_000_000


class ImageDecodeError(CxrError, ValueError):
    """An input could not be decoded as an image; the message names it."""


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


def to_grayscale_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image to the 8-bit grayscale the models see.

    Wide modes (I;16, I, F) are min-max rescaled to 0..255; colour is converted to luma
    (ITU-R 601-2, PIL's "L"); alpha and palette images are composited over black first
    (transparent pixels become background).

    Args:
        image: a loaded PIL image of mode L, RGB, RGBA, LA, P, PA, I;16*, I or F.

    Returns:
        uint8 array of shape (height, width), values 0..255.
    """
    if image.mode in WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return ((array - low) * scale).round().astype(np.uint8)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        # Transparent pixels become black, which is what an X-ray background is.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def pil_error_text(error: BaseException) -> str:
    """PIL's error message, without the in-memory buffer it names (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "these bytes", str(error))


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an image file's bytes (PNG, JPEG or any format PIL reads) as 8-bit grayscale.

    The declared size is checked against pixel_limit() before any pixel is decoded.

    Args:
        data: the file's bytes.
        name: what to call the input in an error (its URI or file name).

    Returns:
        uint8 array of shape (height, width), as to_grayscale_array gives it.

    Raises:
        ImageDecodeError: the bytes are not a decodable image, or its declared size is above
            the pixel limit; the message starts with `name`.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = pixel_limit_problem(*image.size)  # from the header, before any pixel is decoded
            if problem is None:
                image.load()
                return to_grayscale_array(image)
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
