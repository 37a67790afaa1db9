"""What the manifest records about one image file: hashes, size, mode, bit depth, or why it is unusable.

``describe_image_bytes`` is pure (bytes in, dict out); ``describe_uris`` maps
it over many files, inline or in parallel, reading them through
components.storage (local paths or ``s3://`` URIs).

Unusable files are not errors: they get an ``exclusion_reason`` (constants of
components.labels) and an ``exclusion_detail`` saying what is wrong:

* EXCLUDE_EMPTY_FILE: zero bytes.
* EXCLUDE_NOT_DECODABLE: bytes PIL cannot identify as any image format (a text
  file named ``.png``, HTML error pages saved as images...); the detail says what
  was expected and what the bytes look like (text, HTML, PDF, ZIP...).
* EXCLUDE_TOO_LARGE: declared width x height above the pixel limit
  (components.imaging.pixel_limit): found from the header alone, never decoded.
* EXCLUDE_TRUNCATED: the file ends before its image data does (a cut-off
  download). Every image is fully decoded to find this: PIL's
  ``LOAD_TRUNCATED_IMAGES`` stays False, and a PNG must also reach its IEND chunk.
* EXCLUDE_UNSUPPORTED_MODE: the image decodes, but its PIL mode has no correct
  grayscale conversion (components.imaging.SUPPORTED_MODES); only that file is
  excluded, the drop goes on.
* EXCLUDE_UNREADABLE: anything else the decoder refuses; the detail names the
  format expected and the decoder's error.
* EXCLUDE_MISSING_FILE (describe_uri only): the file does not exist. Other
  storage errors (access denied, no such bucket...) are raised, not recorded:
  they say the run is misconfigured, not that one image is bad.

Every measure is taken of the image as displayed: its EXIF orientation applied
first (components.imaging.orient), so ``width`` and ``height`` are those a viewer
shows and a copy stored rotated hashes like the upright one (``sha256`` stays the
digest of the file's bytes).

The perceptual hash (``phash``) is a 64-bit DCT hash (pHash) of the grayscale
image the models see (components.imaging.to_grayscale_array), see
``perceptual_hash``. Compare hashes with ``hamming_distance``. ``gray_levels``
counts the distinct values of that 8-bit grayscale image: a wide image squeezed
into a few levels (a bad window, a burned-in label) shows there.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from components import dicom, imaging
from components.labels import (
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNREADABLE,
    EXCLUDE_UNSUPPORTED_MODE,
)

__all__ = [
    "MODE_BIT_DEPTH",
    "NO_FILE",
    "describe_image_bytes",
    "describe_uri",
    "describe_uris",
    "hamming_distance",
    "perceptual_hash",
]

# File columns of the manifest, and their values when the file is not read.
NO_FILE: dict[str, Any] = {
    "sha256": "",
    "phash": "",
    "width": 0,
    "height": 0,
    "mode": "",
    "bit_depth": 0,
    "gray_levels": 0,  # distinct values of the 8-bit grayscale image the models see (0 when not read)
    "exclusion_reason": "",
    "exclusion_detail": "",
}

# Bits per channel for PIL modes (PNG files use the bit depth of their header instead).
MODE_BIT_DEPTH = {
    "1": 1,
    "L": 8,
    "LA": 8,
    "P": 8,
    "PA": 8,
    "RGB": 8,
    "RGBA": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "LAB": 8,
    "HSV": 8,
    "RGBX": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I;16N": 16,
    "I": 32,
    "F": 32,
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"

_HASH_SIZE = 8
_DCT_SIZE = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


# Only the 8 lowest-frequency rows of the orthonormal 32-point DCT-II are needed.
_DCT_LOW = np.ascontiguousarray(_dct_matrix(_DCT_SIZE)[:_HASH_SIZE])


# ---------------------------------------------------------------- perceptual hash


def _box_downscale(image: Image.Image) -> Image.Image:
    """Area-average (BOX) `image` down to 32x32.

    When both sides are multiples of 32, Image.reduce gives the same averages
    faster. (Reducing by an inexact integer factor first and resizing the rest
    would be faster still, but its uneven edge blocks move hashes by several bits.)
    """
    width, height = image.size
    if width % _DCT_SIZE == 0 and height % _DCT_SIZE == 0 and (width, height) != (_DCT_SIZE, _DCT_SIZE):
        return image.reduce((width // _DCT_SIZE, height // _DCT_SIZE))
    if image.size != (_DCT_SIZE, _DCT_SIZE):
        image = image.resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX)
    return image


def _hash_input(image: Image.Image) -> np.ndarray:
    """32x32 float64 grayscale in 0..255: `image` as to_grayscale_array sees it, box-downscaled."""
    return np.asarray(_box_downscale(imaging.to_grayscale_image(image)), dtype=np.float64)


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit DCT perceptual hash (pHash) of an image, as 16 hex digits.

    The DCT hash of pHash (phash.org; Zauner, "Implementation and Benchmarking of
    Perceptual Image Hash Functions", 2010) in the form of the ImageHash library's
    ``phash``. Construction (keep it stable: manifests compare hashes across runs):

    1. grayscale as the models see it (imaging.to_grayscale_array: luma for
       colour, alpha composited over black, 16-bit windowed to 0..255 by
       imaging.intensity_window), upright (describe_image_bytes applies the EXIF
       orientation first; this function hashes the pixels it is given);
    2. area-average downscale to 32x32 (PIL's BOX filter; Image.reduce when
       both sides are multiples of 32, which averages the same blocks);
    3. orthonormal 2-D DCT-II; keep the 8x8 lowest frequencies (DC included);
    4. coefficients rounded to 6 decimals; bit = coefficient > median of the 64,
       row-major, the first bit the most significant of the first hex digit.

    Re-encoding, resizing and mild noise change a few bits (typically <= 6 of
    64; always an even number: half the bits are set). Unrelated images differ
    in about 32; chest radiographs look alike at this scale, so two different
    films differ in about 26 (rarely fewer than 16). describe_image_bytes decodes JPEGs
    with libjpeg's DCT scaling (Image.draft) to go faster, which moves the hash of
    a JPEG by a bit or two against hashing its full decode here.

    Args:
        image: a loaded PIL image of any mode to_grayscale_array accepts, any size.

    Returns:
        16 lowercase hex digits (64 bits); compare two with hamming_distance.

    Raises:
        UnsupportedModeError: the image's mode is not in imaging.SUPPORTED_MODES.
    """
    small = _hash_input(image)
    # Rounded so that floating-point noise (~1e-12, which differs between BLAS
    # builds) cannot set bits: a flat image hashes to 8000000000000000 everywhere.
    low = np.round((_DCT_LOW @ small @ _DCT_LOW.T).ravel(), 6)
    ordered = np.sort(low)
    median = (ordered[_HASH_SIZE * _HASH_SIZE // 2 - 1] + ordered[_HASH_SIZE * _HASH_SIZE // 2]) / 2
    return np.packbits(low > median).tobytes().hex()


def hamming_distance(first: str, second: str) -> int:
    """Count the bits in which two hashes differ.

    Args:
        first: a hash as hex digits (perceptual_hash's 16).
        second: another, of the same length.

    Returns:
        The Hamming distance, 0..64 for two perceptual hashes.

    Raises:
        ValueError: a hash is not hexadecimal.
    """
    return (int(first, 16) ^ int(second, 16)).bit_count()


# ---------------------------------------------------------------- headers


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


# JPEG start-of-frame markers (C4 = DHT, C8 = JPG extension, CC = DAC are not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """Walk the marker segments of a JPEG up to its first scan.

    Returns ((width, height) or None, where the header is cut off or None).
    """
    size, index, end = None, 2, len(data)
    while True:
        if index + 2 > end:
            return size, "inside its header, before any image data"
        if data[index] != 0xFF:
            return size, None  # corrupt, not cut off: the decoder will say what is wrong
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            index += 2
            continue
        if index + 4 > end:
            return size, f"inside its header (marker 0xFF{marker:02X})"
        segment_end = index + 2 + struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in _JPEG_SOF and size is None and index + 9 <= end:
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            size = (width, height)
        if segment_end > end:
            return size, f"inside its header (segment 0xFF{marker:02X} needs {segment_end:,} bytes)"
        if marker == 0xDA:  # start of scan: entropy-coded data follows, the decoder checks it
            return size, None
        index = segment_end


def _png_cut_off(data: bytes) -> str | None:
    """Where a PNG's chunk sequence runs past the end of the data, or None."""
    index, end = len(_PNG_SIGNATURE), len(data)
    while index + 8 <= end:
        length, kind = struct.unpack(">I4s", data[index : index + 8])
        chunk_end = index + 12 + length
        name = kind.decode("latin-1")
        if chunk_end > end:
            return f"inside its {name} chunk (the chunk needs {chunk_end:,} bytes)"
        if kind == b"IEND":
            return None
        index = chunk_end
    if index < end:
        return "inside the length and type of a chunk, before its IEND chunk"
    return "before its IEND chunk" if index > len(_PNG_SIGNATURE) else "right after its signature"


def _cut_off(data: bytes) -> str | None:
    """For a PNG or JPEG whose decoding failed: where the file ends too early, if it does."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_cut_off(data)
    if data.startswith(_JPEG_SOI):
        return _jpeg_header(data)[1]
    return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    png = _png_header(data)
    if png is not None:
        return png[:2]
    return _jpeg_header(data)[0] if data.startswith(_JPEG_SOI) else None


def _too_large(width: int, height: int) -> str | None:
    return imaging.pixel_limit_problem(width, height)


def _bit_depth(data: bytes, image_format: str | None, mode: str) -> int:
    """Bits per channel: a PNG's header depth (palette entries are 8-bit), else by PIL mode."""
    if image_format == "PNG":
        header = _png_header(data)
        if header is not None and header[3] != 3:  # 3 = palette: the header depth counts index bits
            return header[2]
    return MODE_BIT_DEPTH.get(mode, 8)


# ---------------------------------------------------------------- describing bytes


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _format_name(data: bytes) -> str:
    return "PNG" if data.startswith(_PNG_SIGNATURE) else "JPEG" if data.startswith(_JPEG_SOI) else ""


def _truncated(data: bytes, where: str, error: BaseException | None = None) -> _Unusable:
    cause = f" ({_error_text(error)})" if error is not None else ""
    return _Unusable(
        EXCLUDE_TRUNCATED, f"{_format_name(data) or 'image'} file of {len(data):,} bytes ends {where}{cause}"
    )


# Signatures of files that are often found where images were expected: (prefix, what it is).
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"GIF8", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
)


def _looks_like(data: bytes) -> str:
    """What some bytes that no image decoder accepts look like, for an exclusion detail."""
    for signature, what in _KNOWN_SIGNATURES:
        if data.startswith(signature):
            return what
    if data[128:132] == b"DICM":
        return "a DICOM file"
    if data[4:8] == b"ftyp":
        return f"an ISO media file ({data[8:12].decode('latin-1').strip()!r}: MP4, HEIC, AVIF...)"
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a character cut at the 4096-byte boundary
            return "binary data"
        text = head[: error.start].decode("utf-8")
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text):
        lowered = text.lstrip("\ufeff \r\n\t").lower()
        if lowered.startswith(("<!doctype html", "<html")):
            return "an HTML page"
        if lowered.startswith("<?xml") or lowered.startswith("<svg"):
            return "XML (an SVG drawing?)" if "<svg" in lowered else "an XML document"
        if lowered.startswith(("{", "[")):
            return "JSON text"
        return "text"
    return "binary data"


def _unidentified(data: bytes) -> _Unusable:
    """Why PIL identified no format: a PNG/JPEG cut off in its header, a corrupt header, or not an image."""
    kind = _format_name(data)
    if not kind:
        return _Unusable(
            EXCLUDE_NOT_DECODABLE,
            f"not an image format PIL knows: expected an image file (PNG, JPEG or another format PIL reads); "
            f"found {_looks_like(data)} "
            f"({len(data):,} bytes starting {data[:16]!r})",
        )
    if where := _cut_off(data):
        return _truncated(data, where)
    # Image.open hides the plugin's error: ask the plugin itself for the detail.
    plugin = PngImagePlugin.PngImageFile if kind == "PNG" else JpegImagePlugin.JpegImageFile
    try:
        plugin(io.BytesIO(data)).close()
    except Exception as error:  # noqa: BLE001  (plugins raise SyntaxError, ValueError, OSError...)
        return _Unusable(EXCLUDE_UNREADABLE, f"{kind} signature but a corrupt header ({_error_text(error)})")
    return _Unusable(EXCLUDE_UNREADABLE, f"{kind} signature but PIL cannot identify the file")


def _describe(data: bytes) -> dict[str, Any]:
    declared = _declared_size(data)
    if declared is not None and (problem := _too_large(*declared)):
        raise _Unusable(EXCLUDE_TOO_LARGE, problem)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as error:  # formats whose header we do not parse ourselves
        raise _Unusable(EXCLUDE_TOO_LARGE, f"{error} Not decoded.") from None
    except Exception as error:
        if where := _cut_off(data):
            raise _truncated(data, where, error) from None
        raise
    with image:
        width, height, mode, image_format = image.width, image.height, image.mode, image.format
        if problem := _too_large(width, height):
            raise _Unusable(EXCLUDE_TOO_LARGE, problem)
        if mode not in imaging.SUPPORTED_MODES:
            raise _Unusable(
                EXCLUDE_UNSUPPORTED_MODE,
                f"{image_format or 'image'} file decoded by PIL in mode {mode!r}, which has no grayscale "
                f"conversion; expected one of {list(imaging.SUPPORTED_MODES)}",
            )
        if image_format == "JPEG" and mode in ("L", "RGB"):
            # libjpeg's DCT scaling: decodes at 1/2..1/8 size (all the data is still
            # read, so truncation is still found), grayscale straight from Y.
            image.draft("L", (2 * _DCT_SIZE, 2 * _DCT_SIZE))
        try:
            image.load()  # a full decode: the only way to find truncated data
        except Exception as error:
            if isinstance(error, OSError) and "truncated" in str(error):
                raise _truncated(data, _cut_off(data) or "before its image data does", error) from None
            if where := _cut_off(data):
                raise _truncated(data, where, error) from None
            raise
        if image_format == "PNG" and data.rfind(b"IEND") < 0:
            # PIL stops reading once it has the pixels: a file cut after them loads fine.
            raise _truncated(data, "before its IEND chunk, after the image data")
        orientation = imaging.exif_orientation(image)
        width, height = imaging.displayed_size(width, height, orientation)
        upright = imaging.orient(image)
        gray = imaging.to_grayscale_image(upright, imaging.png_significant_bits(data))
        phash = perceptual_hash(gray)
        gray_levels = sum(1 for count in gray.histogram() if count)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": phash,
        "width": width,
        "height": height,
        "mode": mode,
        "bit_depth": _bit_depth(data, image_format, mode),
        "gray_levels": gray_levels,
        "exclusion_reason": "",
        "exclusion_detail": "",
    }


def _measured(gray: np.ndarray) -> dict[str, Any]:
    """The columns measured on a decoded 8-bit image (uint8, (height, width)): DICOM files (components.dicom)."""
    return {"phash": perceptual_hash(Image.fromarray(gray)), "gray_levels": int(np.unique(gray).size)}


def describe_image_bytes(data: bytes) -> dict[str, Any]:
    """The manifest's file columns for one image file's bytes; unusable files are described, not raised.

    Every image is fully decoded (truncation is found only so), except one whose declared
    size is above the pixel limit (components.imaging.pixel_limit), refused from its header.

    Args:
        data: the file's bytes (PNG, JPEG or any format PIL reads).

    Returns:
        A dict with the keys of NO_FILE: ``sha256`` (hex, of the bytes), ``phash``
        (perceptual_hash of the upright grayscale image), ``width`` and ``height`` (pixels, as
        displayed: after the EXIF orientation), ``mode`` (PIL's), ``bit_depth`` (bits per channel),
        ``gray_levels`` (distinct values of the 8-bit grayscale image, 1..256; JPEGs are counted
        on libjpeg's reduced-size decode), ``exclusion_reason`` ("" or an EXCLUDE_* constant of components.labels) and
        ``exclusion_detail`` (what is wrong). An unusable file has NO_FILE's values and a reason.

    Raises:
        RuntimeError: PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set in this process
            (truncated files would pass as valid).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
            "would decode as valid ones; whatever set it must not run while a manifest is built"
        )
    if not data:
        return {**NO_FILE, "exclusion_reason": EXCLUDE_EMPTY_FILE, "exclusion_detail": "empty file (0 bytes)"}
    if dicom.is_dicom(data):  # by content, any name: windowed to 8 bits by components.dicom, then measured
        return {**NO_FILE, **dicom.describe_dicom(data, imaging.pixel_limit(), _measured)}
    try:
        return _describe(data)
    except _Unusable as unusable:
        return {**NO_FILE, "exclusion_reason": unusable.reason, "exclusion_detail": unusable.detail}
    # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error,
    # ValueError...); any of them means the file is unusable.
    except Exception as error:  # noqa: BLE001
        kind = _format_name(data) or "image"
        detail = f"expected decodable {kind} data; the decoder failed with {_error_text(error)}"
        return {**NO_FILE, "exclusion_reason": EXCLUDE_UNREADABLE, "exclusion_detail": detail}


# ---------------------------------------------------------------- describing files


def describe_uri(uri: str) -> dict[str, Any]:
    """Read one file and describe it (module level so that process pools can pickle it).

    Args:
        uri: a local path or ``s3://`` URI.

    Returns:
        describe_image_bytes of its bytes; EXCLUDE_MISSING_FILE as the reason when it does not exist.

    Raises:
        StorageError: the file exists but cannot be read (access denied, no such bucket...):
            the run is misconfigured, not the image bad.
    """
    from components.storage import MissingFileError, read_bytes

    try:
        data = read_bytes(uri)
    except MissingFileError as error:
        return {**NO_FILE, "exclusion_reason": EXCLUDE_MISSING_FILE, "exclusion_detail": str(error)}
    return describe_image_bytes(data)


EXECUTORS = ("auto", "process", "thread")
_CHUNK_SIZE = 64


def _chunk_size(count: int, workers: int) -> int:
    """Up to 64 files per task, smaller when there are few files so every worker gets some."""
    return max(1, min(_CHUNK_SIZE, math.ceil(count / (4 * workers))))


def _parallel(uris: list[str], workers: int, executor: str) -> Iterator[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    from components.workers import process_pool

    if executor == "thread":
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe_uri")
        results: Iterable[dict[str, Any]] = pool.map(describe_uri, uris)
    else:
        chunk = _chunk_size(len(uris), workers)
        workers = min(workers, math.ceil(len(uris) / chunk))
        pool = process_pool(workers, preload=[__name__])
        results = pool.map(describe_uri, uris, chunksize=chunk)
    try:
        yield from results
    finally:
        # On an error (a StorageError from a worker, Ctrl-C) drop the queued work.
        pool.shutdown(wait=True, cancel_futures=True)


def describe_uris(
    uris: Sequence[str], workers: int = 1, progress: bool = False, executor: str = "auto"
) -> list[dict[str, Any]]:
    """Describe many files (describe_uri each), inline or in parallel.

    Args:
        uris: local paths or ``s3://`` URIs.
        workers: 1 reads inline; 0 means one per available core; more runs a pool of that size.
        progress: show a tqdm bar on stderr.
        executor: "process" (a process pool fed in chunks of up to 64 files: decoding and
            hashing are CPU-bound), "thread" (a thread pool: S3 reads are network-bound and
            boto3 clients are made lazily in each process), or "auto": threads when any URI
            is s3://, processes otherwise.

    Returns:
        One describe_image_bytes dict per URI, in the order of `uris`.

    Raises:
        ValueError: `executor` is not one of EXECUTORS.
        StorageError: a file exists but cannot be read (access denied, no such bucket); it
            stops the run and the queued work is dropped.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
    uris = [str(uri) for uri in uris]
    from components.workers import resolve_workers

    workers = min(resolve_workers(workers), len(uris))
    if executor == "auto":
        from components.storage import is_s3_uri

        executor = "thread" if any(is_s3_uri(uri) for uri in uris) else "process"
    results: Iterable[dict[str, Any]] = map(describe_uri, uris) if workers <= 1 else _parallel(uris, workers, executor)
    from tqdm import tqdm

    with tqdm(
        results,
        total=len(uris),
        desc="reading images",
        unit="img",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        return list(bar)
