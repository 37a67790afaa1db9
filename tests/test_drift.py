"""Drift checks (components.drift): real radiographs for the image features, seeded synthetic data for the rest."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy import ndimage, stats

from components.drift import (
    DRIFT_ARTIFACT,
    DriftConfig,
    DriftError,
    DriftReference,
    DriftReferenceError,
    DriftReport,
    FeatureDrift,
    chi2_test,
    drift_figure_png,
    drift_figures,
    fit_drift_reference,
    image_statistics,
    input_drift,
    input_feature_names,
    input_features,
    output_drift,
    output_features,
)
from components.errors import CxrError
from components.image_info import describe_uri
from components.imaging import load_images
from components.ood import fit_reference

IMAGE_SIZE = 64  # as the model sees them (components.imaging.load_images)
HALF = 120  # radiographs per half
CLASSES = ["COVID-19", "normal", "pneumonia"]


def _noise_grays(rng, n, size=16):
    return rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)


# ---------------------------------------------------------------- image_statistics


def test_image_statistics_columns_and_dtypes():
    grays = _noise_grays(np.random.default_rng(0), 7)
    table = image_statistics(grays)
    assert list(table.columns) == ["intensity_mean", "intensity_std", "intensity_skewness", "sharpness"]
    assert len(table) == 7
    assert set(table.dtypes) == {np.dtype("float64")}


def test_image_statistics_match_numpy_and_scipy():
    grays = _noise_grays(np.random.default_rng(1), 3)
    table = image_statistics(grays)
    np.testing.assert_allclose(table["intensity_mean"], grays.reshape(3, -1).mean(axis=1))
    np.testing.assert_allclose(table["intensity_std"], grays.reshape(3, -1).std(axis=1))
    np.testing.assert_allclose(table["intensity_skewness"], stats.skew(grays.reshape(3, -1).astype(float), axis=1))
    laplacian = ndimage.laplace(grays[0].astype(float))[1:-1, 1:-1]
    assert table["sharpness"][0] == pytest.approx(laplacian.var())


def test_image_statistics_of_a_constant_image_are_zero_not_nan():
    table = image_statistics(np.full((1, 8, 8), 77, dtype=np.uint8))
    assert table.loc[0, "intensity_std"] == 0.0
    assert table.loc[0, "intensity_skewness"] == 0.0
    assert table.loc[0, "sharpness"] == 0.0


def test_inverting_negates_skewness_and_blurring_lowers_sharpness():
    grays = _noise_grays(np.random.default_rng(2), 4)
    table = image_statistics(grays)
    np.testing.assert_allclose(image_statistics(255 - grays)["intensity_skewness"], -table["intensity_skewness"])
    blurred = np.stack([ndimage.gaussian_filter(gray, 1.5) for gray in grays])
    assert (image_statistics(blurred)["sharpness"] < table["sharpness"] / 10).all()


def test_image_statistics_refuse_a_2d_array():
    with pytest.raises(DriftError, match=r"\(N, S, S\)"):
        image_statistics(np.zeros((8, 8), dtype=np.uint8))


# ---------------------------------------------------------------- config


def test_default_severities():
    config = DriftConfig()
    assert config.setting("ood_score").severity == "block"
    assert config.setting("embedding_pc4").severity == "block"
    assert config.setting("sharpness").severity == "block"
    assert config.setting("intensity_skewness").severity == "block"
    assert config.setting("width").severity == "warn"
    assert config.setting("mode").severity == "warn"
    assert config.setting("predicted_class").severity == "warn"
    assert config.setting("confidence").severity == "warn"


def test_setting_fills_thresholds_from_the_config():
    setting = DriftConfig(p_value=0.05, min_effect=0.2).setting("width")
    assert setting.p_value == 0.05
    assert setting.min_effect == 0.2


def test_embedding_pc_key_applies_to_every_component_unless_one_has_its_own():
    config = DriftConfig(
        features={"embedding_pc": {"severity": "warn", "p_value": 0.02}, "embedding_pc2": {"severity": "off"}}
    )
    assert config.setting("embedding_pc1").severity == "warn"
    assert config.setting("embedding_pc1").p_value == 0.02
    assert config.setting("embedding_pc2").severity == "off"
    assert config.setting("ood_score").severity == "block"  # no key: its default


def test_unknown_feature_key_names_the_key_and_the_known_names():
    with pytest.raises(ValidationError) as error:
        DriftConfig(features={"sharpnes": {"severity": "block"}})
    assert "sharpnes" in str(error.value)
    assert "known names" in str(error.value)
    assert "sharpness" in str(error.value)


def test_a_component_beyond_k_is_unknown():
    with pytest.raises(ValidationError, match="embedding_pc7"):
        DriftConfig(components=5, features={"embedding_pc7": {"severity": "warn"}})
    assert (
        DriftConfig(components=8, features={"embedding_pc7": {"severity": "warn"}}).setting("embedding_pc7").severity
        == "warn"
    )


def test_config_refuses_extra_fields_and_bad_values():
    with pytest.raises(ValidationError, match="treshold"):
        FeatureDrift(severity="warn", treshold=0.1)
    with pytest.raises(ValidationError, match="severity"):
        FeatureDrift(severity="stop")
    with pytest.raises(ValidationError, match="p_value"):
        DriftConfig(p_value=1.5)


def test_config_round_trips_through_json():
    config = DriftConfig(p_value=0.05, features={"sharpness": {"severity": "block", "min_effect": 0.3}})
    assert DriftConfig.model_validate_json(config.model_dump_json()) == config


# ---------------------------------------------------------------- reference


def test_reference_keeps_a_seeded_sample_and_k_principal_axes():
    rng = np.random.default_rng(3)
    inputs = (None, _noise_grays(rng, 50), rng.normal(size=(50, 16)).astype(np.float32), rng.random(50), None, CLASSES)
    reference = fit_drift_reference(*inputs, max_values=20)
    assert len(reference.continuous["sharpness"]) == 20
    assert reference == fit_drift_reference(*inputs, max_values=20)
    assert reference != fit_drift_reference(*inputs, max_values=20, seed=1)
    assert reference.components == 5
    axes = np.asarray(reference.pca_components)
    np.testing.assert_allclose(axes @ axes.T, np.eye(5), atol=1e-9)


def test_reference_k_is_at_most_n_minus_1():
    rng = np.random.default_rng(4)
    reference = fit_drift_reference(None, _noise_grays(rng, 4), rng.normal(size=(4, 16)), None, None, CLASSES)
    assert reference.components == 3


def test_reference_output_features_come_from_validation_probabilities():
    rng = np.random.default_rng(5)
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    reference = fit_drift_reference(None, _noise_grays(rng, 3), None, None, probabilities, CLASSES)
    assert reference.categorical["predicted_class"] == {"COVID-19": 2, "normal": 1, "pneumonia": 0}
    assert reference.continuous["confidence"] == pytest.approx([0.8, 0.7, 0.6])
    assert reference.output_images == 3


def test_reference_round_trips_through_json():
    rng = np.random.default_rng(6)
    rows = pd.DataFrame(
        {"width": [640, 512, 768], "height": [480, 512, 700], "mode": ["L", "RGB", "L"], "bit_depth": [8, 8, 8]}
    )
    reference = fit_drift_reference(
        rows, _noise_grays(rng, 3), rng.normal(size=(3, 4)), rng.random(3), rng.dirichlet([1, 1, 1], 5), CLASSES
    )
    assert DRIFT_ARTIFACT == "evaluation/drift_reference.json"
    assert DriftReference.model_validate_json(reference.model_dump_json()) == reference


def test_reference_refuses_mismatched_lengths():
    rng = np.random.default_rng(7)
    with pytest.raises(DriftReferenceError, match="grays 5, embeddings 4"):
        fit_drift_reference(None, _noise_grays(rng, 5), rng.normal(size=(4, 8)), None, None, CLASSES)


def test_reference_refuses_a_single_image_with_a_cxr_error():
    with pytest.raises(CxrError, match="at least 2 images, got 1"):
        fit_drift_reference(None, _noise_grays(np.random.default_rng(8), 1), None, None, None, CLASSES)


def test_float_bit_depths_count_as_integers():
    rows = pd.DataFrame({"bit_depth": [8.0, 8.0, 16.0]})
    reference = fit_drift_reference(rows, _noise_grays(np.random.default_rng(9), 3), None, None, None, CLASSES)
    assert reference.categorical["bit_depth"] == {"16": 1, "8": 2}


# ---------------------------------------------------------------- real radiographs: the image group


@pytest.fixture(scope="module")
def radiographs(shared_datasets):
    """240 decodable radiographs in a seeded random order: manifest columns and 64-px model-input grays."""
    folder = shared_datasets / "covid-chestxray-dataset" / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    shuffled = [paths[index] for index in np.random.default_rng(0).permutation(len(paths))]
    described = [
        row | {"uri": path}
        for path, row in zip(shuffled[: 2 * HALF + 40], map(describe_uri, shuffled[: 2 * HALF + 40]), strict=True)
    ]
    rows = pd.DataFrame([row for row in described if not row["exclusion_reason"]][: 2 * HALF])
    assert len(rows) == 2 * HALF
    return rows, load_images(rows["uri"].tolist(), IMAGE_SIZE)


@pytest.fixture(scope="module")
def halves(radiographs):
    """(reference fitted on the first half, rows and grays of the second half)."""
    rows, grays = radiographs
    first, second = rows.iloc[:HALF].reset_index(drop=True), rows.iloc[HALF:].reset_index(drop=True)
    return fit_drift_reference(first, grays[:HALF], None, None, None, CLASSES), second, grays[HALF:]


def test_two_halves_of_one_source_do_not_drift(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows, grays, None, None, DriftConfig())
    assert report.verdict == "passed"
    assert report.tested == [
        "width",
        "height",
        "intensity_mean",
        "intensity_std",
        "intensity_skewness",
        "sharpness",
        "mode",
        "bit_depth",
    ]


def test_inverted_images_drift_on_skewness_and_mean(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows, 255 - grays, None, None, DriftConfig())
    assert report.blocking == ["intensity_mean", "intensity_skewness"]
    assert report.verdict == "blocked"
    assert report.result("intensity_skewness").effect > 0.5


def test_blurred_images_drift_on_sharpness(halves):
    reference, rows, grays = halves
    blurred = np.stack([ndimage.gaussian_filter(gray, 1.5) for gray in grays])
    report = input_drift(reference, rows, blurred, None, None, DriftConfig())
    assert report.blocking == ["sharpness"]
    assert report.result("sharpness").effect > 0.9


def test_an_image_feature_set_to_warn_only_warns(halves):
    reference, rows, grays = halves
    blurred = np.stack([ndimage.gaussian_filter(gray, 1.5) for gray in grays])
    config = DriftConfig(features={"sharpness": {"severity": "warn"}})
    report = input_drift(reference, rows, blurred, None, None, config)
    assert report.warnings == ["sharpness"]
    assert report.verdict == "warning"


def test_embedding_features_absent_from_the_reference_are_not_tested(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows, grays, None, None, DriftConfig())
    assert report.result("ood_score").note == "absent from the drift reference"
    assert report.result("ood_score").p_value is None


def test_a_mode_shift_drifts_with_cramers_v(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows.assign(mode="I;16", bit_depth=16), grays, None, None, DriftConfig())
    assert report.warnings == ["mode", "bit_depth"]
    assert report.result("bit_depth").effect == pytest.approx(1.0)


# ---------------------------------------------------------------- embeddings: synthetic Gaussians


@pytest.fixture(scope="module")
def gaussian_embeddings():
    """Reference (400) and current (200) 16-d Gaussian embeddings of two classes, an OOD reference fitted on them."""
    rng = np.random.default_rng(10)
    means = np.zeros((2, 16))
    means[1, :4] = 3.0
    labels = rng.integers(0, 2, 400)
    reference = means[labels] + rng.normal(size=(400, 16))
    current = means[rng.integers(0, 2, 200)] + rng.normal(size=(200, 16))
    ood = fit_reference(reference, labels, ["a", "b"], layer="dense")
    grays = _noise_grays(rng, 600)
    drift_reference = fit_drift_reference(None, grays[:400], reference, ood.score(reference), None, CLASSES)
    return drift_reference, ood, current, grays[400:]


def test_unshifted_embeddings_pass(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    report = input_drift(reference, None, grays, current, ood.score(current), DriftConfig())
    assert report.verdict == "passed"
    assert len(report.tested) == 10  # 4 pixel statistics, ood_score, embedding_pc1..5


def test_shifted_embeddings_block(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    shifted = current + 1.5
    report = input_drift(reference, None, grays, shifted, ood.score(shifted), DriftConfig())
    assert "ood_score" in report.blocking
    assert "embedding_pc1" in report.blocking
    assert report.verdict == "blocked"
    assert report.warnings == []


def test_embeddings_of_another_size_are_refused(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    with pytest.raises(DriftReferenceError, match=r"\(N, 16\)"):
        input_drift(reference, None, grays, current[:, :8], None, DriftConfig())


def test_input_feature_names_follow_the_reference_components(gaussian_embeddings):
    reference = gaussian_embeddings[0]
    assert input_feature_names(reference)[-6:] == ["ood_score", *(f"embedding_pc{i}" for i in range(1, 6))]


def test_a_batch_tests_only_the_first_components_of_its_config(gaussian_embeddings):
    """Registration stores more axes (10) than a batch tests by default (5): `components` picks how many."""
    reference, ood, current, grays = gaussian_embeddings
    report = input_drift(reference, None, grays, current, ood.score(current), DriftConfig(components=3))
    tested = [r.feature for r in report.results if r.feature.startswith("embedding_pc")]
    assert tested == ["embedding_pc1", "embedding_pc2", "embedding_pc3"]


# ---------------------------------------------------------------- Bonferroni and min_effect


def _normal_quantiles(n):
    return stats.norm.ppf((np.arange(n) + 0.5) / n)


def _axis_reference(columns):
    """A reference whose embedding_pc<i> values are `columns[i-1]` (identity principal axes)."""
    k = len(columns)
    return DriftReference(
        images=len(columns[0]),
        continuous={f"embedding_pc{i + 1}": list(column) for i, column in enumerate(columns)},
        categorical={},
        class_names=CLASSES,
        pca_mean=[0.0] * k,
        pca_components=np.eye(k).tolist(),
    )


def test_bonferroni_decides_a_borderline_shift():
    reference = _axis_reference([_normal_quantiles(400)] * 5)
    current = np.repeat(_normal_quantiles(100)[:, None], 5, axis=1)
    current[:, 0] += 0.4  # p about 0.027
    grays = np.zeros((100, 3, 3), dtype=np.uint8)
    p = stats.ks_2samp(reference.continuous["embedding_pc1"], current[:, 0]).pvalue
    assert 0.05 / 5 < p < 0.05  # between the corrected and the uncorrected threshold
    corrected = input_drift(reference, None, grays, current, None, DriftConfig(p_value=0.05))
    uncorrected = input_drift(reference, None, grays, current, None, DriftConfig(p_value=0.05, correction="none"))
    assert corrected.result("embedding_pc1").alpha == pytest.approx(0.01)
    assert corrected.verdict == "passed"
    assert uncorrected.blocking == ["embedding_pc1"]


def test_features_switched_off_are_not_counted_by_bonferroni():
    reference = _axis_reference([_normal_quantiles(400)] * 5)
    current = np.repeat(_normal_quantiles(100)[:, None], 5, axis=1)
    config = DriftConfig(p_value=0.05, features={"embedding_pc2": {"severity": "off"}})
    report = input_drift(reference, None, np.zeros((100, 3, 3), dtype=np.uint8), current, None, config)
    assert report.result("embedding_pc1").alpha == pytest.approx(0.05 / 4)
    assert report.result("embedding_pc2").note == "off in the drift config"


def test_min_effect_ignores_a_significant_but_small_shift():
    n = 20000
    reference = _axis_reference([_normal_quantiles(n)])
    current = (_normal_quantiles(n) + 0.1)[:, None]  # D about 0.04, p about 1e-15
    grays = np.zeros((n, 3, 3), dtype=np.uint8)
    default = input_drift(reference, None, grays, current, None, DriftConfig(components=1))
    lenient = input_drift(reference, None, grays, current, None, DriftConfig(components=1, min_effect=0.02))
    assert default.result("embedding_pc1").p_value < 1e-10
    assert default.result("embedding_pc1").effect < 0.1
    assert default.verdict == "passed"
    assert lenient.verdict == "blocked"


# ---------------------------------------------------------------- batch size, switches


def test_too_few_images_are_not_checked(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    report = input_drift(reference, None, grays[:5], current[:5] + 3, ood.score(current[:5] + 3), DriftConfig())
    assert report.verdict == "not checked"
    assert report.result("ood_score").note == "too few images: 5 < min_images 10"
    assert report.summary() == "input drift: not checked (too few images: 5 < min_images 10)"


def test_disabled_checks_test_nothing(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    report = input_drift(reference, None, grays, current + 3, None, DriftConfig(enabled=False))
    assert report.verdict == "not checked"
    assert report.tested == []


def test_lengths_that_do_not_match_are_refused(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    with pytest.raises(DriftReferenceError, match="grays 200, ood_scores 10"):
        input_drift(reference, None, grays, None, np.zeros(10), DriftConfig())


# ---------------------------------------------------------------- output drift


@pytest.fixture(scope="module")
def output_reference():
    rng = np.random.default_rng(11)
    val = rng.dirichlet([2, 2, 2], 300)
    return fit_drift_reference(None, _noise_grays(rng, 2), None, None, val, CLASSES)


def test_predictions_like_validation_pass(output_reference):
    current = np.random.default_rng(12).dirichlet([2, 2, 2], 150)
    report = output_drift(output_reference, current, DriftConfig())
    assert report.verdict == "passed"
    assert report.tested == ["predicted_class", "confidence"]


def test_one_confident_class_drifts_on_mix_and_confidence(output_reference):
    current = np.random.default_rng(13).dirichlet([30, 1, 1], 150)
    report = output_drift(output_reference, current, DriftConfig())
    assert report.warnings == ["predicted_class", "confidence"]
    assert report.result("predicted_class").test == "chi2"


def test_binary_probabilities_may_be_one_column():
    features = output_features(np.array([0.9, 0.2, 0.6]), ["negative", "positive"])
    assert features.categorical["predicted_class"] == {"negative": 1, "positive": 2}
    assert features.continuous["confidence"] == pytest.approx([0.9, 0.8, 0.6])


def test_probabilities_of_the_wrong_width_are_refused(output_reference):
    with pytest.raises(DriftError, match=r"\(N, 3\)"):
        output_drift(output_reference, np.full((20, 2), 0.5), DriftConfig())


def test_output_features_absent_from_the_reference_are_not_tested():
    reference = fit_drift_reference(None, _noise_grays(np.random.default_rng(14), 2), None, None, None, CLASSES)
    report = output_drift(reference, np.random.default_rng(15).dirichlet([1, 1, 1], 20), DriftConfig())
    assert report.verdict == "not checked"


# ---------------------------------------------------------------- chi-square, summary, plots


def test_chi2_test_matches_scipy_and_gives_cramers_v():
    chi2, p_value, v = chi2_test({"L": 30, "RGB": 10}, {"L": 10, "RGB": 30, "P": 0})
    expected = stats.chi2_contingency([[30, 10], [10, 30]], correction=False)
    assert chi2 == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue)
    assert v == pytest.approx(0.5)


def test_chi2_test_of_one_shared_category_is_no_drift():
    assert chi2_test({"8": 50}, {"8": 20}) == (0.0, 1.0, 0.0)


def test_summary_gives_one_line_per_drifted_feature(gaussian_embeddings):
    reference, ood, current, grays = gaussian_embeddings
    shifted = current + 1.5
    report = input_drift(reference, None, grays, shifted, ood.score(shifted), DriftConfig())
    lines = report.summary().splitlines()
    assert len(lines) == len(report.blocking)
    assert lines[report.blocking.index("ood_score")].startswith("block ood_score: ks statistic ")
    assert f"< {0.01 / 10:.3g}," in lines[0]


def test_report_round_trips_through_json(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows, 255 - grays, None, None, DriftConfig())
    again = DriftReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert again.verdict == "blocked"


def _png_size(data):
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_continuous_figure_is_a_small_png():
    rng = np.random.default_rng(16)
    assert _png_size(drift_figure_png(rng.normal(size=100), rng.normal(1, 1, size=50), "sharpness")) == (256, 176)


def test_categorical_figure_takes_counts_or_values():
    assert _png_size(drift_figure_png({"L": 30, "RGB": 10}, {"L": 5, "P": 2}, "mode")) == (256, 176)
    assert _png_size(drift_figure_png({"L": 30, "RGB": 10}, ["L", "RGBA", "L"], "mode")) == (256, 176)


def test_drift_figures_plot_every_tested_feature(halves):
    reference, rows, grays = halves
    report = input_drift(reference, rows, grays, None, None, DriftConfig())
    figures = drift_figures(reference, input_features(rows, grays, None, None, reference), report)
    assert list(figures) == report.tested
