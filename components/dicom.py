"""DICOM files as radiology viewers show them: detection, the tags we keep, and pixels windowed to 8 bits.

Hospitals export radiographs as DICOM (Part 10 files: a 128-byte preamble, then
``DICM``). This module turns one file's bytes into what the rest of the project
works with, the 8-bit grayscale image the models see, through the display
pipeline of DICOM PS3.3 C.11 / PS3.4 N.2, with pydicom (``pydicom.pixels``):

1. Pixel data decoded by pydicom; compressed transfer syntaxes through its
   plugins: RLE Lossless natively, JPEG baseline / extended / lossless through
   pylibjpeg-libjpeg (or Pillow), JPEG 2000 through pylibjpeg-openjpeg. A
   transfer syntax with no decoder installed (JPEG-LS without pyjpegls) is an
   unreadable file whose detail names the syntax and what is missing.
2. Modality LUT: Rescale Slope / Intercept, or a Modality LUT Sequence
   (``apply_modality_lut``): stored values become modality units.
3. VOI LUT: a VOI LUT Sequence, else Window Center / Width with its VOI LUT
   Function (LINEAR, LINEAR_EXACT, SIGMOID), the first of several windows
   (``apply_voi_lut``); the output range of the LUT or window is mapped
   linearly onto 0..255. A file with neither gets a robust window: the
   ROBUST_WINDOW_PERCENTILES of its modality values (0.5 and 99.5 %), so that a
   burned-in label at full scale or a few dead pixels do not squeeze the anatomy
   into a few gray levels, as a min-max rescale would.
4. MONOCHROME1 (higher values darker) is inverted to MONOCHROME2, so bone is
   bright as in every other input. Colour photometric interpretations (RGB,
   YBR_*, PALETTE COLOR: secondary captures) are converted to RGB by pydicom,
   then to luma with PIL's weights (ITU-R 601-2), as PNG/JPEG colour inputs are.

Files the models cannot use are refused with a DicomError carrying an
exclusion reason (components.labels) and a detail: non-image objects
(structured reports, presentation states, key objects, encapsulated PDF...,
found from the SOP Class UID) EXCLUDE_DICOM_NOT_IMAGE; multi-frame images
(NumberOfFrames > 1) EXCLUDE_MULTI_FRAME; image objects without Pixel Data
EXCLUDE_NO_PIXEL_DATA; a modality that is not projection radiography (CT, MR,
US...) EXCLUDE_NOT_XRAY; a size above the pixel limit EXCLUDE_TOO_LARGE (from
Rows and Columns, before any pixel is decoded); anything pydicom cannot parse or
decode EXCLUDE_UNREADABLE.

Privacy: only the tags of DicomTags are read (patient id, view, age, sex and
technical tags). Names, birth dates, addresses, institutions, physicians,
accession numbers and other dates are never read into anything this module
returns, raises or logs; pydicom converts an element only when it is
accessed, so not even its validation warnings can print them.

This module imports neither components.imaging nor components.image_info (both
dispatch DICOM bytes here): the pixel limit and the measurements of the 8-bit
image are passed in.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np
from pydantic import BaseModel, ConfigDict
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from components.errors import CxrError
from components.labels import (
    EXCLUDE_DICOM_NOT_IMAGE,
    EXCLUDE_MULTI_FRAME,
    EXCLUDE_NO_PIXEL_DATA,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNREADABLE,
)

__all__ = [
    "DICOM_MAGIC_OFFSET",
    "NON_IMAGE_SOP_CLASS_PREFIXES",
    "ROBUST_WINDOW_PERCENTILES",
    "XRAY_MODALITIES",
    "DicomError",
    "DicomTags",
    "age_in_years",
    "decode_dicom",
    "declared_size",
    "describe_dicom",
    "dicom_tags",
    "header_tags",
    "is_dicom",
    "read_dataset",
    "to_uint8",
    "usability_problem",
]

# A DICOM Part 10 file: a 128-byte preamble (any bytes), then the magic "DICM" (PS3.10 7.1).
DICOM_MAGIC_OFFSET = 128
_MAGIC = b"DICM"

# Percentiles of the modality values used as the window when a file carries no VOI LUT and no
# window: 0.5 and 99.5 %, the usual robust display range (ITK-SNAP's and 3D Slicer's automatic
# window levels use the same kind of percentile clip), wide enough to keep the whole anatomy of a
# radiograph, narrow enough to ignore a burned-in label at full scale and dead pixels.
ROBUST_WINDOW_PERCENTILES = (0.5, 99.5)

# Modalities accepted as projection radiographs: Computed Radiography, Digital Radiography, DR (a
# vendor spelling of DX), Radiographic imaging (RG), Other (OT: secondary captures, digitised films)
# and a blank modality (not confirmable, accepted as other sources accept a blank modality).
XRAY_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", ""})

# SOP classes that are not images (found from the SOP Class UID, PS3.4 Annex B.5).
NON_IMAGE_SOP_CLASS_PREFIXES: Mapping[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report or key object selection",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document (PDF, CDA, STL...)",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform",
    "1.2.840.10008.5.1.4.1.1.66": "raw data, a registration, a segmentation or a surface",
    "1.2.840.10008.5.1.4.1.1.67": "a real-world value map",
    "1.2.840.10008.5.1.4.1.1.481.": "a radiotherapy object",
    "1.2.840.10008.1.3.10": "a media directory (DICOMDIR)",
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Their tags (7FE0,0010), (7FE0,0008), (7FE0,0009) as little-endian bytes: how a header read sees them next.
_PIXEL_TAGS_LITTLE_ENDIAN = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's "L" conversion

# The tags read for DicomTags (header reads parse only these, plus the file meta).
HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientID",
    "ViewPosition",
    "PatientAge",
    "PatientSex",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsStored",
    "PhotometricInterpretation",
    *_PIXEL_KEYWORDS,
)
HEADER_DEFER_BYTES = 1024


class DicomError(CxrError, ValueError):
    """A DICOM file the models cannot use.

    Args:
        reason: Its exclusion reason (an EXCLUDE_* constant of components.labels).
        detail: What is wrong, for the manifest's exclusion_detail and error messages.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class DicomTags(BaseModel):
    """The tags of one DICOM file this project keeps; no identifying tag is among them.

    patient_id is the Patient ID as given (components.privacy pseudonymises it when the run
    config says so); view is ViewPosition (PA, AP, LL...; "" when absent); age_years is
    PatientAge in years (None when absent or unparsable); sex is PatientSex (M, F, O or "").
    """

    model_config = ConfigDict(frozen=True)

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    patient_id: str = ""
    view: str = ""
    age_years: float | None = None
    sex: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 1
    bits_stored: int = 0
    photometric: str = ""
    has_pixels: bool = False


def is_dicom(data: bytes) -> bool:
    """Whether bytes are a DICOM Part 10 file: ``DICM`` at byte 128, whatever the file's name.

    Args:
        data: A file's bytes (its first 132 are enough).

    Returns:
        True when ``data[128:132] == b"DICM"``.
    """
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(_MAGIC)] == _MAGIC


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def read_dataset(source: bytes | BinaryIO, header_only: bool = False) -> Dataset:
    """Parse a DICOM Part 10 file.

    Args:
        source: The file's bytes, or a binary file object positioned at its start.
        header_only: Parse only the tags of DicomTags (not the pixel data): for reading metadata.

    Returns:
        The pydicom Dataset (elements are converted lazily, when accessed).

    Raises:
        DicomError: Not a DICOM Part 10 file, or one pydicom cannot parse (EXCLUDE_UNREADABLE, or
            EXCLUDE_TRUNCATED when it ends inside an element).
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        if header_only:
            # Values above HEADER_DEFER_BYTES (the pixel data) are skipped, not read: present, not loaded.
            dataset = dcmread(stream, defer_size=HEADER_DEFER_BYTES, specific_tags=list(HEADER_TAGS))
        else:
            dataset = dcmread(stream)
    except InvalidDicomError as error:
        raise DicomError(EXCLUDE_UNREADABLE, f"not a DICOM file ({error})") from None
    except EOFError as error:
        raise DicomError(EXCLUDE_TRUNCATED, f"DICOM file ends inside an element ({error})") from None
    except Exception as error:  # noqa: BLE001  (pydicom raises many types on corrupt data)
        raise DicomError(EXCLUDE_UNREADABLE, f"DICOM file pydicom cannot parse ({_error_text(error)})") from None
    if len(dataset) == 0:  # pydicom warns and gives up when the data ends inside an element
        raise DicomError(
            EXCLUDE_TRUNCATED,
            "pydicom read no complete dataset: the file is cut off inside an element (often its pixel data)",
        )
    return dataset


def age_in_years(text: object) -> float | None:
    """A DICOM Age String (``045Y``, ``006M``, ``003W``, ``050D``) or a plain number of years, in years.

    Args:
        text: The PatientAge value (str; an RSNA-style ``51`` is read as years).

    Returns:
        The age in years (days / 365.25, weeks * 7 / 365.25, months / 12), or None when blank or
        not an age.
    """
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(text or ""), flags=re.IGNORECASE)
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).upper() or "Y"
    return {"D": value / 365.25, "W": value * 7 / 365.25, "M": value / 12, "Y": float(value)}[unit]


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        value = dataset.get(keyword, "")
    except Exception:  # noqa: BLE001  (a malformed value: treated as absent)
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(part) for part in value)
    return " ".join(str(value).split())


def _int(dataset: Dataset, keyword: str, default: int) -> int:
    try:
        value = dataset.get(keyword, None)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


def dicom_tags(dataset: Dataset) -> DicomTags:
    """The tags kept from a parsed file (see DicomTags); identifying tags are not read.

    Args:
        dataset: A parsed file (read_dataset, header only or whole).

    Returns:
        Its DicomTags; absent tags are "" / None / 0 (NumberOfFrames absent: 1).
    """
    return DicomTags(
        sop_class_uid=_text(dataset, "SOPClassUID"),
        sop_instance_uid=_text(dataset, "SOPInstanceUID"),
        modality=_text(dataset, "Modality").upper(),
        patient_id=_text(dataset, "PatientID"),
        view=_text(dataset, "ViewPosition"),
        age_years=age_in_years(_text(dataset, "PatientAge")),
        sex=_text(dataset, "PatientSex").upper(),
        rows=_int(dataset, "Rows", 0),
        columns=_int(dataset, "Columns", 0),
        frames=_int(dataset, "NumberOfFrames", 1),
        bits_stored=_int(dataset, "BitsStored", 0),
        photometric=_text(dataset, "PhotometricInterpretation").upper(),
        has_pixels=any(keyword in dataset for keyword in _PIXEL_KEYWORDS),
    )


def header_tags(data: bytes, whole: bool) -> DicomTags | None:
    """The tags of a file from its first bytes, without its pixel data (a source adapter's cheap read).

    Args:
        data: The file's first bytes (components.storage.read_head), or all of them.
        whole: `data` is the whole file (a head shorter than asked for is).

    Returns:
        Its DicomTags (``has_pixels`` True when Pixel Data follows the header), or None when `data`
        is a part that ends before the pixel data or the end of the header: read the whole file.

    Raises:
        DicomError: Not a DICOM file, or one pydicom cannot parse (when `whole`).
    """
    if whole:
        return dicom_tags(read_dataset(data, header_only=True))
    stream = io.BytesIO(data)
    try:
        dataset = dcmread(stream, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except Exception:  # noqa: BLE001  (pydicom raises many types on cut data): read the whole file
        return None
    # stop_before_pixels leaves the stream at the Pixel Data tag when there is one (little endian:
    # a big-endian file, retired since 2004, is read whole).
    position = stream.tell()
    if len(dataset) == 0 or data[position : position + 4] not in _PIXEL_TAGS_LITTLE_ENDIAN:
        return None
    return dicom_tags(dataset).model_copy(update={"has_pixels": True})


def _sop_class_text(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else uid or "no SOP Class UID"


def usability_problem(tags: DicomTags, max_pixels: int | None = None) -> tuple[str, str] | None:
    """Why a file's tags say it is not a single-frame projection radiograph, before any pixel is decoded.

    Args:
        tags: The file's DicomTags.
        max_pixels: The pixel limit (components.imaging.pixel_limit); None: not checked.

    Returns:
        (exclusion reason, detail), or None when the file may be decoded. Checked in this order:
        non-image SOP class, no pixel data, non-X-ray modality, multi-frame, size above the limit.
    """
    for prefix, what in NON_IMAGE_SOP_CLASS_PREFIXES.items():
        if tags.sop_class_uid.startswith(prefix):
            return EXCLUDE_DICOM_NOT_IMAGE, f"SOP Class {_sop_class_text(tags.sop_class_uid)}: {what}, not an image"
    if not tags.has_pixels:
        return EXCLUDE_NO_PIXEL_DATA, f"SOP Class {_sop_class_text(tags.sop_class_uid)} without Pixel Data"
    if tags.modality not in XRAY_MODALITIES:
        return EXCLUDE_NOT_XRAY, (
            f"Modality {tags.modality}; projection radiographs are {', '.join(sorted(XRAY_MODALITIES - {''}))}"
        )
    if tags.frames > 1:
        return EXCLUDE_MULTI_FRAME, f"{tags.frames} frames (NumberOfFrames); one radiograph per file is expected"
    if max_pixels is not None and tags.rows * tags.columns > max_pixels:
        return EXCLUDE_TOO_LARGE, (
            f"declared size {tags.columns}x{tags.rows} = {tags.rows * tags.columns:,} pixels is above the "
            f"{max_pixels:,}-pixel limit (possible decompression bomb); not decoded"
        )
    return None


def declared_size(data: bytes) -> tuple[int, int]:
    """A DICOM file's (width, height) from Columns and Rows; no pixel is decoded.

    Args:
        data: The file's bytes.

    Returns:
        (width, height) in pixels.

    Raises:
        DicomError: The file cannot be parsed, or its tags say it is not a usable image.
    """
    tags = dicom_tags(read_dataset(data, header_only=True))
    problem = usability_problem(tags)
    if problem is not None:
        raise DicomError(*problem)
    return tags.columns, tags.rows


def _output_range(dataset: Dataset) -> tuple[float, float] | None:
    """The output range of the file's VOI LUT or window, or None when it has neither."""
    sequence = dataset.get("VOILUTSequence")
    if sequence:
        bits = int(sequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        # pydicom maps values below the window to its output minimum and above it to its maximum
        # (for SIGMOID the limits): the two probes give the range without repeating its rules.
        with np.errstate(over="ignore"):
            probes = apply_voi_lut(np.array([-np.inf, np.inf]), dataset, index=0)
        low, high = float(np.min(probes)), float(np.max(probes))
        return (low, high) if high > low else None
    return None


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.round((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def to_uint8(dataset: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored pixel values -> the 8-bit grayscale a viewer displays (module doc, steps 2-4).

    Args:
        dataset: The parsed file (its Modality LUT, VOI LUT and Photometric Interpretation).
        stored: Its decoded pixel array: (rows, columns) for monochrome, (rows, columns, 3) RGB
            for colour (as pydicom's ``pixel_array`` gives them), any integer or float dtype.

    Returns:
        uint8 array of shape (rows, columns), values 0..255, higher brighter (MONOCHROME2).

    Raises:
        DicomError: An invalid window or LUT (EXCLUDE_UNREADABLE, naming the tag).
    """
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in _MONOCHROME:
        rgb = np.asarray(stored, dtype=np.float64)
        if rgb.ndim == 3 and rgb.shape[-1] == 3:
            bits = int(dataset.get("BitsStored", 8) or 8)
            return _scaled(rgb @ _LUMA, 0.0, float(2**bits - 1))
        raise DicomError(EXCLUDE_UNREADABLE, f"Photometric Interpretation {photometric} gave shape {rgb.shape}")
    try:
        modality_values = apply_modality_lut(stored, dataset)  # integers stay integers (a VOI LUT indexes them)
        limits = _output_range(dataset)
        if limits is not None:
            values = np.asarray(apply_voi_lut(modality_values, dataset, index=0), dtype=np.float64)
        else:
            values = np.asarray(modality_values, dtype=np.float64)
            low, high = np.percentile(values, ROBUST_WINDOW_PERCENTILES)
            limits = (float(low), float(high))
    except (ValueError, TypeError, IndexError, AttributeError, KeyError) as error:
        raise DicomError(EXCLUDE_UNREADABLE, f"invalid Modality or VOI LUT ({_error_text(error)})") from None
    gray = _scaled(values, *limits)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _decoded(data: bytes, max_pixels: int | None) -> tuple[np.ndarray, DicomTags, Dataset]:
    dataset = read_dataset(data)
    tags = dicom_tags(dataset)
    problem = usability_problem(tags, max_pixels)
    if problem is not None:
        raise DicomError(*problem)
    syntax = dataset.file_meta.get("TransferSyntaxUID", "") if hasattr(dataset, "file_meta") else ""
    try:
        stored = dataset.pixel_array
    except Exception as error:  # noqa: BLE001  (decoders raise many types on corrupt or short data)
        text = _error_text(error)
        short = "pixel data" in text.lower() and ("less than expected" in text.lower() or "length" in text.lower())
        reason = EXCLUDE_TRUNCATED if short else EXCLUDE_UNREADABLE
        syntax_text = f" ({UID(syntax).name})" if syntax else ""
        raise DicomError(reason, f"cannot decode the pixel data{syntax_text}: {text}") from None
    return to_uint8(dataset, stored), tags, dataset


def decode_dicom(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """A DICOM file's bytes -> the 8-bit grayscale image the models see (module doc).

    Args:
        data: The file's bytes.
        max_pixels: The pixel limit checked on Rows x Columns before decoding; None: not checked.

    Returns:
        uint8 array of shape (Rows, Columns), values 0..255 (MONOCHROME2).

    Raises:
        DicomError: The file is not a usable single-frame radiograph or cannot be decoded; its
            ``reason`` is an EXCLUDE_* constant and its message the detail.
    """
    return _decoded(data, max_pixels)[0]


def describe_dicom(data: bytes, max_pixels: int, measure: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """The manifest's file columns for one DICOM file (components.image_info dispatches DICOM bytes here).

    Args:
        data: The file's bytes.
        max_pixels: The pixel limit (components.imaging.pixel_limit).
        measure: Computes the columns derived from the 8-bit image (``phash``...) from a uint8
            (height, width) array: components.image_info's, so DICOM and PNG are measured alike.

    Returns:
        ``sha256`` (of the bytes), ``width`` (Columns) and ``height`` (Rows) in pixels, ``mode``
        (``L``: the 8-bit grayscale the models get; ``RGB`` for colour photometric
        interpretations), ``bit_depth`` (BitsStored), what `measure` returns, and
        ``exclusion_reason`` / ``exclusion_detail`` ("" when usable). An unusable file gives only
        the exclusion keys: the caller fills the rest with its "not read" values.
    """
    try:
        gray, tags, _ = _decoded(data, max_pixels)
    except DicomError as error:
        return {"exclusion_reason": error.reason, "exclusion_detail": f"DICOM: {error.detail}"}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "mode": "L" if tags.photometric in _MONOCHROME or not tags.photometric else "RGB",
        "bit_depth": tags.bits_stored or 8,
        **measure(gray),
        "exclusion_reason": "",
        "exclusion_detail": "",
    }
