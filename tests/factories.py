"""Shared test data: small images (arrays, encoded bytes, files on disk) and manifest rows.

Every helper is deterministic for its arguments, so a test that pins a hash or
a pixel keeps pinning it. Sizes are (width, height) as PIL gives them; arrays
are uint8 (height, width) grayscale unless said otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import io
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from components.manifest import MANIFEST_COLUMNS, build_manifest
from components.sources import parse_sources

# ---------------------------------------------------------------- pixel arrays


def noise_image(seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Uniform random uint8 (height, width) pixels."""
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def noise_images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Uniform random uint8 (count, size, size) pixels: a stack of tiny training images."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size), dtype=np.uint8)


def cycling_labels(count: int, num_classes: int) -> np.ndarray:
    """int64 (count,) labels 0, 1, ..., num_classes - 1, 0, 1, ...: every class as often as possible."""
    return np.arange(count, dtype=np.int64) % num_classes


def tiny_training_set(
    num_classes: int = 2, count: int = 12, size: int = 32, val_count: int = 6, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((images, labels), (val_images, val_labels)) of random pixels; validation is the first `val_count`."""
    images, labels = noise_images(count, size, seed), cycling_labels(count, num_classes)
    return (images, labels), (images[:val_count], labels[:val_count])


def radiograph(seed: int = 0, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A deterministic uint8 'radiograph': gradient, a few bright/dark blocks and ellipses, mild noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    angle = rng.uniform(0, 2 * np.pi)
    image = 60 + 100 * (np.cos(angle) * x + np.sin(angle) * y)
    for _ in range(5):
        cx, cy, rx, ry = (
            rng.uniform(0.15, 0.85),
            rng.uniform(0.15, 0.85),
            rng.uniform(0.05, 0.3),
            rng.uniform(0.05, 0.3),
        )
        image[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1] += rng.uniform(-90, 90)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def flat_image(mode: str = "L", size: tuple[int, int] = (40, 30), value: int = 100) -> Image.Image:
    """A PIL image of `mode` with `value` in every pixel and channel."""
    return Image.new(mode, size, value if mode in ("L", "P", "I;16") else (value,) * len(mode))


# ---------------------------------------------------------------- encoded bytes


def encode(image: Image.Image | np.ndarray, image_format: str = "PNG", **options: Any) -> bytes:
    """The bytes of `image` saved in `image_format` (PIL options such as quality=90 pass through)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_bytes(seed: int, mode: str = "L", size: tuple[int, int] = (48, 40)) -> bytes:
    """A PNG of random pixels in `mode` ("L", "RGB", ...): different seeds give different bytes."""
    width, height = size
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return encode(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).convert(mode))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, depth: int, colour: int, rows: list[bytes] | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB or 4-bit grayscale): filter 0 rows.

    Without `rows` the pixel data is 64 zero bytes, whatever the declared size:
    enough for a header-only check (a decompression bomb declares 10^10 pixels).
    """
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + row for row in rows)) if rows is not None else zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid 8-bit grayscale PNG header declaring width x height pixels (10^10 by default)."""
    return raw_png(width, height, 8, 0)


# ---------------------------------------------------------------- files


def write_bytes(path: Path, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path`, creating its folders; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_image(
    path: Path,
    mode: str = "L",
    size: tuple[int, int] = (40, 30),
    value: int = 100,
    image_format: str | None = None,
) -> Path:
    """A flat image of `value` in every channel; the format follows the suffix unless given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat_image(mode, size, value).save(path, format=image_format)
    return path


def write_noise_image(
    path: Path, seed: int = 0, size: tuple[int, int] = (32, 32), image_format: str | None = None
) -> Path:
    """Random grayscale pixels (distinct bytes per seed); the format follows the suffix unless given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise_image(seed, size)).save(path, format=image_format)
    return path


def write_class_folders(
    root: Path,
    labels: Sequence[str] = ("COVID-19", "normal", "pneumonia"),
    patients_per_label: int = 4,
    images_per_patient: int = 1,
    size: int = 64,
    seed: int = 0,
) -> list[Path]:
    """The `folder` source layout: root/<label>/<patient>_<k>.png of random pixels; returns the files.

    Patient ids are the label's first three letters and an index ("COV0", "nor3").
    """
    rng = np.random.default_rng(seed)
    paths = []
    for label in labels:
        for patient in range(patients_per_label):
            for k in range(images_per_patient):
                path = root / label / f"{label[:3]}{patient}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(path)
                paths.append(path)
    return paths


def write_ieee8023(
    root: Path,
    rows: Sequence[Mapping[str, str]],
    images: Mapping[str, bytes] | None = None,
    columns: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> Path:
    """The ieee8023 layout (actualmed's and figure1's too): root/metadata.csv and root/images/<name>; returns root.

    metadata.csv holds `columns` (default: the first row's keys; a key a row
    lacks is blank, one not in `columns` is left out), encoded in `encoding`
    ("utf-8-sig" adds the byte-order mark of a spreadsheet export). `images`
    maps file name -> bytes.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    fieldnames = list(columns if columns is not None else (rows[0] if rows else []))
    writer = csv.DictWriter(buffer, fieldnames, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(root / "metadata.csv", buffer.getvalue().encode(encoding))
    for name, data in (images or {}).items():
        write_bytes(root / "images" / name, data)
    return root


# ---------------------------------------------------------------- manifests of files


def source_manifest(
    root: Path | str, task: str, kind: str = "folder", name: str | None = None, **options: Any
) -> pd.DataFrame:
    """build_manifest of one source given as a run-config entry (validated by its kind's options model)."""
    return build_manifest(parse_sources([{"kind": kind, "root": str(root), "name": name or kind, **options}]), task)


# ---------------------------------------------------------------- manifest rows


def hex_digest(text: str, digits: int = 64) -> str:
    """The first `digits` hex digits of sha256(text): random-looking, far apart for different texts."""
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def manifest_row(uri: str, label: str, source: str = "src", **changes: Any) -> dict[str, Any]:
    """One used (included) manifest row with every MANIFEST_COLUMNS key; `changes` override fields.

    sha256 and phash derive from the uri, so different uris are neither duplicates
    nor near-duplicates; the patient is one per uri. Pass label="" together with an
    exclusion_reason for an excluded row.
    """
    row = {
        "uri": uri,
        "source": source,
        "sha256": hex_digest(uri, 64),
        "phash": hex_digest("p" + uri, 16),
        "width": 256,
        "height": 256,
        "mode": "L",
        "bit_depth": 8,
        "gray_levels": 256,
        "view": "PA",
        "patient_id": f"{source}:{uri}",
        "age_group": "adult",
        "sex": "",
        "finding": label,
        "label": label,
        "exclusion_reason": "",
        "exclusion_detail": "",
    }
    unknown = set(changes) - set(row)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    row.update(changes)
    return row


def manifest_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows (from manifest_row) as a manifest DataFrame with exactly MANIFEST_COLUMNS, in order."""
    return pd.DataFrame(list(rows), columns=MANIFEST_COLUMNS)


def patient_rows(
    labels: Sequence[str] = ("COVID-19", "normal", "pneumonia"),
    patients_per_label: int = 10,
    images_per_patient: int = 3,
    source: str = "src",
) -> pd.DataFrame:
    """A used manifest of several images per patient (patient "<label>-<p>"), for splitting by patient."""
    return manifest_table(
        manifest_row(f"/data/{label}/{p}_{i}.png", label, source, patient_id=f"{label}-{p}")
        for label in labels
        for p in range(patients_per_label)
        for i in range(images_per_patient)
    )


# ---------------------------------------------------------------- model predictions


def scored_predictions(
    quality: float,
    split: str = "test",
    n_patients: int = 100,
    images_per_patient: int = 2,
    seed: int = 0,
    sources: Sequence[str] = ("src",),
    confidence: float | None = None,
):
    """Binary predictions (components.assessment.Predictions) of a model of known quality.

    Patients alternate between the classes; a patient's images are all called right
    (P(true class) = `confidence`) for the first `quality` share of patients in a fixed
    random order drawn from `seed`, all wrong (1 - `confidence`) for the rest. The
    default confidence, max(quality, 0.6) rounded to 2 places, makes the model about
    calibrated. Two qualities with the same
    seed are nested: every patient the worse model gets right, the better one does too.
    Keys, uris and patient ids do not depend on `quality`, so predictions of two models
    align. Sources cycle over `sources` by patient.
    """
    from components.assessment import Predictions

    confidence = round(max(quality, 0.6), 2) if confidence is None else confidence
    order = np.random.default_rng(seed).permutation(n_patients)
    right = np.zeros(n_patients, dtype=bool)
    right[order[: int(round(quality * n_patients))]] = True
    y_true, probabilities, keys, patients, source_of = [], [], [], [], []
    for patient in range(n_patients):
        label = patient % 2
        # Rounded: equal scores must tie exactly for ROC-AUC (1 - 0.8 != 0.2 in floats).
        high, low = confidence, round(1 - confidence, 6)
        p_true, p_other = (high, low) if right[patient] else (low, high)
        for image in range(images_per_patient):
            y_true.append(label)
            row = [p_other, p_true] if label == 1 else [p_true, p_other]
            probabilities.append(row)
            keys.append(hex_digest(f"{split}-{patient}-{image}", 16))
            patients.append(f"p{patient}")
            source_of.append(sources[patient % len(sources)])
    count = len(y_true)
    return Predictions(
        split=split,
        class_names=["non-COVID", "COVID-19"],
        keys=keys,
        uris=[f"/images/{key}.png" for key in keys],
        patient_ids=patients,
        sources=source_of,
        age_groups=["adult"] * count,
        views=["PA"] * count,
        y_true=y_true,
        probabilities=probabilities,
    )
