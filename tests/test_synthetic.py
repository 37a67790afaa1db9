"""Tests of the SYNTHETIC chest-radiograph generator (components/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.synthetic import (
    CLASSES,
    METADATA_COLUMNS,
    generate_dataset,
    render_radiograph,
    sample_anatomy,
    sample_lesions,
)

# Normalised regions (rows, cols) of a standard film: lower outer zone of each lung.
LOWER_PERIPHERAL = [(slice(0.50, 0.68), slice(0.12, 0.26)), (slice(0.50, 0.68), slice(0.74, 0.88))]
LEFT_LUNG = (slice(0.18, 0.70), slice(0.12, 0.44))
RIGHT_LUNG = (slice(0.18, 0.70), slice(0.56, 0.88))


def region_mean(image: np.ndarray, region: tuple[slice, slice]) -> float:
    size = image.shape[0]
    rows, cols = (slice(int(s.start * size), int(s.stop * size)) for s in region)
    return float(image[rows, cols].astype(np.float64).mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_dataset(root, n_patients_per_class=10, images_per_patient=3, image_size=128, seed=3)


def load(root: Path, filename: str) -> np.ndarray:
    return np.asarray(Image.open(root / filename))


def test_layout_and_metadata(dataset):
    root, metadata = dataset
    assert list(metadata.columns) == METADATA_COLUMNS
    assert len(metadata) == len(CLASSES) * 10 * 3
    pd.testing.assert_frame_equal(pd.read_csv(root / "metadata.csv", keep_default_na=False), metadata)
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    assert set(metadata["finding"]) == set(CLASSES)
    assert set(metadata["source"]) == {"synthetic"}
    assert set(metadata["view"]) == {"PA"}
    patients = metadata[["patient_id", "finding"]].drop_duplicates().itertuples(index=False)
    expected = {f"{finding}/{patient_id}_{k}.png" for patient_id, finding in patients for k in range(3)}
    assert set(metadata["filename"]) == expected
    assert all((root / filename).is_file() for filename in expected)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CLASSES)


def test_patient_ids(dataset):
    _, metadata = dataset
    ids = metadata["patient_id"]
    assert not ids.str.contains("_").any()
    assert ids.str.startswith("syn-").all()
    per_patient = metadata.groupby("patient_id")
    assert (per_patient.size() == 3).all()
    assert (per_patient["finding"].nunique() == 1).all()
    assert ids.nunique() == len(CLASSES) * 10


def test_images_are_8bit_grayscale_of_requested_size(dataset):
    root, metadata = dataset
    for filename in metadata["filename"].iloc[::7]:
        with Image.open(root / filename) as image:
            assert image.mode == "L"
            assert image.size == (128, 128)
            assert image.format == "PNG"


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    def files(root: Path, seed: int) -> dict[str, bytes]:
        generate_dataset(root, n_patients_per_class=2, images_per_patient=2, image_size=64, seed=seed)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, again = files(tmp_path / "a", 7), files(tmp_path / "b", 7)
    other = files(tmp_path / "c", 8)
    assert first == again
    pngs = [name for name in first if name.endswith(".png")]
    assert all(first[name] != other[name] for name in pngs)


def test_images_of_one_patient_vary_but_resemble_each_other(dataset):
    root, metadata = dataset
    normal = metadata[metadata["finding"] == "normal"]
    images = {
        pid: [load(root, f).astype(np.float64) for f in group["filename"]]
        for pid, group in normal.groupby("patient_id")
    }
    within, across = [], []
    pids = sorted(images)
    for index, pid in enumerate(pids):
        first, second = images[pid][0], images[pid][1]
        assert not np.array_equal(first, second)  # a different film, not a copy
        within.append(np.abs(first - second).mean())
        across.append(np.abs(first - images[pids[index - 1]][0]).mean())
    assert np.mean(within) < np.mean(across)


def paired(finding: str, seed: int, size: int = 96) -> np.ndarray:
    """The finding alone: a diseased film minus the same film (same patient, same shot) without it."""
    patient = np.random.default_rng([seed, 0])
    anatomy = sample_anatomy(patient)
    lesions = sample_lesions(patient, finding, anatomy)
    diseased = render_radiograph(np.random.default_rng([seed, 1]), finding, size, anatomy, lesions)
    clear = render_radiograph(np.random.default_rng([seed, 1]), "normal", size, anatomy, [])
    return diseased.astype(np.float64) - clear.astype(np.float64)


def test_normal_has_no_finding():
    assert np.abs(paired("normal", 0)).max() == 0


def test_covid_opacities_are_bilateral_peripheral_and_lower():
    for seed in range(5):
        diff = paired("COVID-19", seed)
        lower_outer = [region_mean(diff, region) for region in LOWER_PERIPHERAL]
        upper = region_mean(diff, (slice(0.15, 0.35), slice(0.1, 0.9)))
        assert min(lower_outer) > 3.0, lower_outer  # both lungs
        assert min(lower_outer) > 3 * max(upper, 0.0)


def test_pneumonia_is_a_dense_consolidation_on_one_side():
    for seed in range(5):
        diff = paired("pneumonia", seed)
        left, right = region_mean(diff, LEFT_LUNG), region_mean(diff, RIGHT_LUNG)
        assert max(left, right) > 4.0, (left, right)
        assert min(left, right) < 0.5, (left, right)
        assert diff.max() > 45  # dense


def test_ground_glass_is_fainter_than_consolidation():
    for seed in range(5):
        peak_covid = np.percentile(paired("COVID-19", seed), 99.5)
        peak_pneumonia = np.percentile(paired("pneumonia", seed), 99.5)
        assert peak_covid < 0.85 * peak_pneumonia, (peak_covid, peak_pneumonia)


def test_classes_differ_on_average_in_the_generated_dataset(dataset):
    root, metadata = dataset

    def stats(finding: str) -> tuple[float, float]:
        images = [load(root, f) for f in metadata.loc[metadata["finding"] == finding, "filename"]]
        lower_outer = np.mean([min(region_mean(im, r) for r in LOWER_PERIPHERAL) for im in images])
        asymmetry = np.mean([abs(region_mean(im, LEFT_LUNG) - region_mean(im, RIGHT_LUNG)) for im in images])
        return lower_outer, asymmetry

    covid, normal, pneumonia = stats("COVID-19"), stats("normal"), stats("pneumonia")
    assert covid[0] > normal[0] + 5  # brighter lower peripheral zones, in both lungs
    assert pneumonia[1] > normal[1] + 3  # one-sided


def test_render_without_patient_and_unknown_finding():
    image = render_radiograph(np.random.default_rng(0), "pneumonia", 80)
    assert image.dtype == np.uint8
    assert image.shape == (80, 80)
    with pytest.raises(ValueError, match="valid findings"):
        render_radiograph(np.random.default_rng(0), "flu", 80)
