"""What the manifest records about one image file: hashes, size, mode, bit depth, or why it is unusable.

``describe_image_bytes`` is pure (bytes in, dict out); ``describe_uris`` maps
it over many files in parallel, reading them through components.storage.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from components import imaging  # noqa: F401  (sets PIL's decompression-bomb limit)
from components.labels import EXCLUDE_MISSING_FILE, EXCLUDE_UNREADABLE

# File columns of the manifest, and their values when the file is not read.
NO_FILE: dict[str, Any] = {
    "sha256": "",
    "phash": "",
    "width": 0,
    "height": 0,
    "mode": "",
    "bit_depth": 0,
    "exclusion_reason": "",
    "exclusion_detail": "",
}

# Bits per channel for PIL modes.
MODE_BIT_DEPTH = {"1": 1, "L": 8, "LA": 8, "P": 8, "PA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8,
                  "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}

_HASH_SIZE = 8
_DCT_SIZE = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_DCT_SIZE)


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (pHash) as 16 hex digits.

    Same construction as imagehash.phash: 32x32 grayscale, 2-D DCT, the 8x8
    lowest frequencies compared with their median. Re-encoding, resizing and
    mild noise change a few bits; different radiographs differ in many.
    """
    small = imaging.to_grayscale_array(image)
    small = np.asarray(Image.fromarray(small).resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ small @ _DCT.T)[:_HASH_SIZE, :_HASH_SIZE]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def hamming_distance(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()


def describe_image_bytes(data: bytes) -> dict[str, Any]:
    """The manifest's file columns for these bytes; exclusion_reason says why they are unusable."""
    if not data:
        return {**NO_FILE, "exclusion_reason": EXCLUDE_UNREADABLE, "exclusion_detail": "empty file (0 bytes)"}
    try:
        with Image.open(io.BytesIO(data)) as image:
            # A full decode: PIL's verify() does not catch a truncated JPEG.
            image.load()
            width, height, mode = image.width, image.height, image.mode
            phash = perceptual_hash(image)
    # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error,
    # DecompressionBombError...); any of them means the file is unusable.
    except Exception as error:  # noqa: BLE001
        return {**NO_FILE, "exclusion_reason": EXCLUDE_UNREADABLE, "exclusion_detail": f"{type(error).__name__}: {error}"}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": phash,
        "width": width,
        "height": height,
        "mode": mode,
        "bit_depth": MODE_BIT_DEPTH.get(mode, 8),
        "exclusion_reason": "",
        "exclusion_detail": "",
    }


def describe_uri(uri: str) -> dict[str, Any]:
    from components.storage import MissingFileError, read_bytes

    try:
        data = read_bytes(uri)
    except MissingFileError as error:
        return {**NO_FILE, "exclusion_reason": EXCLUDE_MISSING_FILE, "exclusion_detail": str(error)}
    return describe_image_bytes(data)


def describe_uris(uris: Sequence[str], workers: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """describe_uri for each URI, in order."""
    return [describe_uri(uri) for uri in uris]
