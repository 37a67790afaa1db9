"""DICOM files generated with pydicom for the tests: nothing is downloaded.

``dicom_bytes`` writes one Part 10 file from a pixel array and the tags a test
cares about (photometric interpretation, bits stored, rescale, a window or a
VOI LUT, a compressed transfer syntax, missing tags); ``structured_report``
and ``presentation_state`` write the non-image objects a PACS export holds.
Every file carries a patient name and birth date (NAME, BIRTH_DATE) so that
the privacy tests can search every output for them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

NAME = "Testperson^Wilhelmina"
BIRTH_DATE = "19411231"
# Other identifying tags written into every file (also searched for by the privacy test).
IDENTIFYING = {
    "PatientName": NAME,
    "PatientBirthDate": BIRTH_DATE,
    "PatientAddress": "12 Quietlane, Smalltown",
    "InstitutionName": "Saint Hypothetical Hospital",
    "ReferringPhysicianName": "Doctor^Fictitious",
    "AccessionNumber": "ACC8675309",
}
COMPRESSIONS = {"rle": RLELossless, "j2k": JPEG2000Lossless}


def anatomy(rows: int = 64, columns: int = 64, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth radiograph-like picture spanning [0.1, 0.9] of a `bits`-bit range, uint16 (rows, columns)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    picture = 0.5 + 0.4 * np.sin(x / columns * 3 * np.pi + seed) * np.cos(y / rows * 2 * np.pi)
    picture += rng.normal(0, 0.01, size=picture.shape)
    top = 2**bits - 1
    return np.clip(np.round(np.clip(picture, 0.1, 0.9) * top), 0, top).astype(np.uint16)


def dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    voi_function: str | None = None,
    modality: str | None = "DX",
    view: str | None = "PA",
    patient_id: str | None = "PAT001",
    age: str | None = "045Y",
    sex: str | None = "F",
    sop_class: str = DigitalXRayImageStorageForPresentation,
    frames: int = 1,
    signed: bool = False,
    identifying: bool = True,
) -> Dataset:
    """A DICOM dataset with file meta; `pixels` None: no Pixel Data. A None tag value: the tag is absent."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in (
        ("Modality", modality),
        ("ViewPosition", view),
        ("PatientID", patient_id),
        ("PatientAge", age),
        ("PatientSex", sex),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    if identifying:
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        ds.StudyDate = "20200102"
    if pixels is None:
        return ds
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    ds.Rows, ds.Columns = int(pixels.shape[-3 if colour else -2]), int(pixels.shape[-2 if colour else -1])
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(value) for value in voi_lut])  # LUT Data, US in explicit VR
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def to_bytes(ds: Dataset, compression: str | None = None) -> bytes:
    """The Part 10 file of a dataset; `compression` ``rle`` or ``j2k`` re-encodes its pixel data."""
    if compression is not None:
        ds.compress(COMPRESSIONS[compression], generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray | None = None, compression: str | None = None, **tags: Any) -> bytes:
    """A DICOM radiograph's bytes: `pixels` (default anatomy()) with the tags of ``dataset``."""
    return to_bytes(dataset(anatomy() if pixels is None else pixels, **tags), compression)


def structured_report(**tags: Any) -> bytes:
    """A Basic Text SR (no pixel data), as PACS exports put beside the images."""
    ds = dataset(None, sop_class=BasicTextSRStorage, modality="SR", **tags)
    ds.ContentSequence = Sequence()
    return to_bytes(ds)


def presentation_state(**tags: Any) -> bytes:
    """A Grayscale Softcopy Presentation State (no pixel data)."""
    return to_bytes(dataset(None, sop_class=GrayscaleSoftcopyPresentationStateStorage, modality="PR", **tags))


def write(path: Path, data: bytes) -> Path:
    """Write bytes to `path`, creating its folder; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- source trees (tests/test_sources.py round-trips them)


def dicom_tree(root: Path) -> dict[str, tuple[str, str]]:
    """A ``dicom`` source labelled by folder, any file names; {relative path: (multiclass label, patient id)}."""
    expected = {
        "COVID-19/IM0001": ("COVID-19", "D1"),
        "COVID-19/study2/IM0002.dcm": ("COVID-19", "D1"),
        "normal/n.dcm": ("normal", "D2"),
        "pneumonia/p.DCM": ("pneumonia", "D3"),
    }
    for seed, (relative, (_, patient)) in enumerate(expected.items()):
        write(root / relative, dicom_bytes(anatomy(seed=seed), patient_id=patient))
    return expected


def rsna_tree(root: Path) -> dict[str, tuple[str, str]]:
    """An ``rsna_pneumonia`` source with its two CSVs; {relative path: (multiclass label, patient id)}."""
    classes = {"r-normal": "Normal", "r-opacity": "Lung Opacity"}
    for seed, patient in enumerate(classes):
        write(root / "stage_2_train_images" / f"{patient}.dcm", dicom_bytes(anatomy(seed=seed), patient_id=patient))
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\nr-normal,,,,,0\nr-opacity,10,10,20,20,1\nr-opacity,30,10,20,20,1\n"
    )
    (root / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n"
        + "".join(f"{patient},{name}\n" for patient, name in classes.items())
        + "r-opacity,Lung Opacity\n"
    )
    return {
        "stage_2_train_images/r-normal.dcm": ("normal", "r-normal"),
        "stage_2_train_images/r-opacity.dcm": ("pneumonia", "r-opacity"),
    }
