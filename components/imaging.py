"""Deterministic image preprocessing shared by training, evaluation and serving.

Every model in this project takes raw pixels: a float32 tensor of shape
(size, size, 3) with values in 0..255. The backbone's own normalisation lives
inside the model (see components/backbones.py), so that callers never have to
know which `preprocess_input` a backbone wants.

Radiographs are grayscale; colour, alpha and palette images are converted to
8-bit grayscale, 16-bit grayscale is rescaled to 8 bits, and the single channel
is repeated three times so that ImageNet backbones accept it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Refuse absurd declared sizes before decoding (decompression bombs).
Image.MAX_IMAGE_PIXELS = 40_000_000


# Modes wider than 8 bits: min-max rescaled to 0..255 (components.image_info hashes them the same way).
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


class ImageDecodeError(ValueError):
    """An input could not be decoded as an image; the message names it."""


def to_grayscale_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL image (L, RGB, RGBA, P, I;16, I, F) to uint8 grayscale HxW."""
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


def load_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 grayscale; raise ImageDecodeError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_grayscale_array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path}: cannot decode image ({error})") from error


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG bytes as uint8 grayscale; raise ImageDecodeError on bad data."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_grayscale_array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{name}: cannot decode image ({error})") from error


def resize_grayscale(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 HxW image to size x size (bilinear, aspect not kept, as in the paper)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_model_input(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxW grayscale -> float32 (size, size, 3) raw pixels in 0..255."""
    resized = resize_grayscale(gray, size).astype(np.float32)
    return np.repeat(resized[:, :, None], 3, axis=2)


def batch_to_model_input(grays: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, size, size, 3); the batch form of to_model_input."""
    out = np.empty((len(grays), size, size, 3), dtype=np.float32)
    for index, gray in enumerate(grays):
        out[index] = to_model_input(gray, size)
    return out


def load_images(uris: list[str], size: int) -> np.ndarray:
    """Load local files or s3:// objects as a uint8 (N, size, size) grayscale stack."""
    from components.storage import read_bytes

    out = np.empty((len(uris), size, size), dtype=np.uint8)
    for index, uri in enumerate(uris):
        out[index] = resize_grayscale(decode_image_bytes(read_bytes(uri), name=uri), size)
    return out


def encode_png(gray: np.ndarray) -> bytes:
    """uint8 HxW -> PNG bytes (used by clients, tests and input examples)."""
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()
