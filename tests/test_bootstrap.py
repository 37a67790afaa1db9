"""The stratified patient-level bootstrap (components.bootstrap): vectorised metrics, resampling, paired CIs."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

from components.bootstrap import (
    bootstrap_weights,
    metric_intervals,
    paired_differences,
    percentile_interval,
    resample_metrics,
)
from components.metrics import ARGMAX, Decision, MetricsInputError, classification_metrics, metric_keys

CLASSES = ("COVID-19", "normal", "pneumonia")
BINARY = ("non-COVID", "COVID-19")


def _three_class(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    probabilities = rng.dirichlet(np.ones(3), n)
    probabilities[np.arange(n), y_true] += 0.3
    probabilities = np.round(probabilities / probabilities.sum(axis=1, keepdims=True), 1)  # many tied scores
    return y_true, probabilities


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_vectorised_metrics_equal_the_metrics_of_the_repeated_rows():
    y_true, probabilities = _three_class()
    weights = np.random.default_rng(2).integers(0, 3, size=(4, len(y_true)))  # repeats and dropped rows
    values = resample_metrics(y_true, probabilities, CLASSES, ARGMAX, weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(len(y_true)), row)
        expected = classification_metrics(y_true[drawn], probabilities[drawn], CLASSES)
        wrong = [key for key in metric_keys(CLASSES) if not _same(values[key][b], expected.scalar(key))]
        assert wrong == [], f"resample {b}"


def test_vectorised_metrics_equal_scikit_learn_on_repeated_rows():
    y_true, probabilities = _three_class()
    weights = np.random.default_rng(3).integers(0, 4, size=(3, len(y_true)))
    values = resample_metrics(y_true, probabilities, CLASSES, ARGMAX, weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(len(y_true)), row)
        y, p = y_true[drawn], probabilities[drawn]
        assert values["roc_auc:normal"][b] == pytest.approx(roc_auc_score(y == 1, p[:, 1]))
        assert values["pr_auc:pneumonia"][b] == pytest.approx(average_precision_score(y == 2, p[:, 2]))
        assert values["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(y, p.argmax(axis=1)))
        assert values["f1_weighted"][b] == pytest.approx(f1_score(y, p.argmax(axis=1), average="weighted"))


def test_a_row_of_ones_is_the_split_itself_at_a_threshold_decision():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 2, 40)
    scores = np.clip(0.3 * y_true + rng.uniform(0, 0.7, 40), 0, 1).round(2)
    probabilities = np.c_[1 - scores, scores]
    decision = Decision(rule="youden", threshold=0.45, positive_class="COVID-19", chosen_on="val")
    values = resample_metrics(y_true, probabilities, BINARY, decision, np.ones((1, 40), dtype=np.int32))
    expected = classification_metrics(y_true, probabilities, BINARY, decision)
    wrong = [key for key in metric_keys(BINARY) if not _same(values[key][0], expected.scalar(key))]
    assert wrong == []


def test_only_the_requested_metrics_are_computed():
    y_true, probabilities = _three_class(20)
    values = resample_metrics(y_true, probabilities, CLASSES, ARGMAX, np.ones((2, 20)), keys=["roc_auc:normal", "ece"])
    assert sorted(values) == ["ece", "roc_auc:normal"]


def test_an_unknown_key_names_the_valid_ones():
    y_true, probabilities = _three_class(20)
    with pytest.raises(KeyError, match="f1_macro"):
        resample_metrics(y_true, probabilities, CLASSES, ARGMAX, np.ones((2, 20)), keys=["auc"])


def test_weights_of_the_wrong_shape_are_refused():
    y_true, probabilities = _three_class(20)
    with pytest.raises(MetricsInputError, match="N = 20"):
        resample_metrics(y_true, probabilities, CLASSES, ARGMAX, np.ones((2, 19)))


def _patients(n_patients: int = 12, images: int = 3) -> tuple[list[str], np.ndarray]:
    patient_ids = [f"p{i // images}" for i in range(n_patients * images)]
    strata = np.array([(i // images) % 2 for i in range(n_patients * images)])
    return patient_ids, strata


def test_weights_are_counts_per_image_per_resample():
    patient_ids, strata = _patients()
    weights = bootstrap_weights(patient_ids, strata, 50, seed=0)
    assert weights.shape == (50, 36)
    assert weights.dtype == np.int32


def test_the_images_of_a_patient_move_together():
    patient_ids, strata = _patients()
    weights = bootstrap_weights(patient_ids, strata, 50, seed=0)
    by_patient = weights.reshape(50, 12, 3)
    assert (by_patient == by_patient[:, :, :1]).all()


def test_each_stratum_keeps_its_patient_count():
    patient_ids, strata = _patients()
    weights = bootstrap_weights(patient_ids, strata, 50, seed=0)
    first_images = weights[:, ::3]  # one column per patient: its draw count
    assert (first_images[:, 0::2].sum(axis=1) == 6).all()  # 6 patients of stratum 0
    assert (first_images[:, 1::2].sum(axis=1) == 6).all()


def test_a_patient_is_stratified_by_its_most_frequent_class():
    # Patient "m" has two images of class 1 and one of class 0: it is drawn among the class-1 patients.
    weights = bootstrap_weights(["m", "m", "m", "a", "b"], [1, 1, 0, 0, 1], 200, seed=0)
    assert (weights[:, 0] + weights[:, 4] == 2).all()


def test_the_same_seed_gives_the_same_resamples():
    patient_ids, strata = _patients()
    first = bootstrap_weights(patient_ids, strata, 20, seed=7)
    assert np.array_equal(first, bootstrap_weights(patient_ids, strata, 20, seed=7))
    assert not np.array_equal(first, bootstrap_weights(patient_ids, strata, 20, seed=8))


def test_resampling_patients_widens_the_interval_when_a_patients_images_agree():
    # 10 patients x 10 images; a patient's images are all right or all wrong. Resampling images as if
    # independent understates the uncertainty by about sqrt(10).
    y_true = np.repeat(np.arange(10) % 2, 10)
    right = np.repeat([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], 10).astype(bool)
    predicted = np.where(right, y_true, 1 - y_true)
    probabilities = np.eye(2)[predicted] * 0.8 + 0.1
    patients = [f"p{i // 10}" for i in range(100)]
    by_patient = metric_intervals(y_true, probabilities, BINARY, ARGMAX, bootstrap_weights(patients, y_true, 400, 0))
    images = [str(i) for i in range(100)]
    by_image = metric_intervals(y_true, probabilities, BINARY, ARGMAX, bootstrap_weights(images, y_true, 400, 0))
    patient_width = by_patient["accuracy"].high - by_patient["accuracy"].low
    image_width = by_image["accuracy"].high - by_image["accuracy"].low
    assert patient_width > 2 * image_width


def test_intervals_cover_the_point_estimate():
    y_true, probabilities = _three_class(90)
    patients = [f"p{i // 3}" for i in range(90)]
    intervals = metric_intervals(y_true, probabilities, CLASSES, ARGMAX, bootstrap_weights(patients, y_true, 300, 0))
    point = classification_metrics(y_true, probabilities, CLASSES)
    for key in ("f1_macro", "roc_auc_macro", "sensitivity:COVID-19", "specificity:normal"):
        assert intervals[key].low <= point.scalar(key) <= intervals[key].high, key


def test_resamples_where_a_metric_is_undefined_are_skipped():
    # The only COVID-19 image belongs to a patient stratified as non-COVID: many resamples draw no COVID-19.
    y_true = np.array([1, 0, 0, 0, 0, 0, 0])
    probabilities = np.c_[1 - np.linspace(0.9, 0.3, 7), np.linspace(0.9, 0.3, 7)]
    patients = ["x", "x", "x", "a", "b", "c", "d"]
    weights = bootstrap_weights(patients, y_true, 100, seed=0)
    undefined = resample_metrics(y_true, probabilities, BINARY, ARGMAX, weights, keys=["roc_auc:COVID-19"])
    assert np.isnan(undefined["roc_auc:COVID-19"]).any()
    interval = metric_intervals(y_true, probabilities, BINARY, ARGMAX, weights, keys=["roc_auc:COVID-19"])
    assert interval["roc_auc:COVID-19"].low == pytest.approx(1.0)


def test_a_metric_undefined_in_every_resample_has_no_interval():
    y_true = np.zeros(6, dtype=int)  # no COVID-19 at all
    probabilities = np.c_[np.linspace(0.9, 0.4, 6), np.linspace(0.1, 0.6, 6)]
    weights = bootstrap_weights([str(i) for i in range(6)], y_true, 20, seed=0)
    interval = metric_intervals(y_true, probabilities, BINARY, ARGMAX, weights, keys=["roc_auc:COVID-19"])
    assert interval["roc_auc:COVID-19"].low is None
    assert interval["roc_auc:COVID-19"].high is None


def test_percentile_interval_reads_the_percentiles():
    interval = percentile_interval(np.r_[np.arange(101.0), np.nan], level=0.9)
    assert (interval.low, interval.high) == (pytest.approx(5.0), pytest.approx(95.0))


def _binary_pair(n_patients: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(5)
    y_true = np.repeat(np.arange(n_patients) % 2, 2)
    good = 0.75 * y_true + rng.uniform(0, 0.25, len(y_true))  # separates the classes
    poor = rng.uniform(0, 1, len(y_true))  # chance
    patients = [f"p{i // 2}" for i in range(len(y_true))]
    return y_true, np.c_[1 - good, good], np.c_[1 - poor, poor], patients


def test_a_clearly_better_candidate_has_a_difference_above_zero():
    y_true, good, poor, patients = _binary_pair()
    weights = bootstrap_weights(patients, y_true, 300, seed=0)
    differences = paired_differences(y_true, good, ARGMAX, poor, ARGMAX, BINARY, weights, keys=["f1_macro", "brier"])
    assert differences["f1_macro"].low > 0
    assert differences["brier"].high < 0  # lower is better: the candidate's Brier score is lower


def test_identical_predictions_differ_by_zero():
    y_true, good, _, patients = _binary_pair()
    weights = bootstrap_weights(patients, y_true, 50, seed=0)
    difference = paired_differences(y_true, good, ARGMAX, good, ARGMAX, BINARY, weights, keys=["f1_macro"])["f1_macro"]
    assert difference.point == 0.0
    assert difference.low <= 0.0 <= difference.high


def test_paired_resamples_are_tighter_than_an_interval_alone():
    # Two similar, imperfect models: the same resamples move both, so their difference varies less.
    rng = np.random.default_rng(6)
    y_true = np.repeat(np.arange(40) % 2, 2)
    scores = np.clip(0.3 * y_true + rng.uniform(0, 0.7, 80), 0, 1)
    similar = np.clip(scores + rng.normal(0, 0.03, 80), 0, 1)
    weights = bootstrap_weights([f"p{i // 2}" for i in range(80)], y_true, 300, seed=0)
    difference = paired_differences(
        y_true, np.c_[1 - similar, similar], ARGMAX, np.c_[1 - scores, scores], ARGMAX, BINARY, weights
    )["roc_auc_macro"]
    alone = metric_intervals(y_true, np.c_[1 - scores, scores], BINARY, ARGMAX, weights)["roc_auc_macro"]
    assert difference.high - difference.low < (alone.high - alone.low) / 2


def test_a_difference_undefined_for_a_model_is_none():
    y_true = np.zeros(4, dtype=int)
    probabilities = np.c_[np.linspace(0.9, 0.6, 4), np.linspace(0.1, 0.4, 4)]
    weights = bootstrap_weights([str(i) for i in range(4)], y_true, 10, seed=0)
    difference = paired_differences(
        y_true, probabilities, ARGMAX, probabilities, ARGMAX, BINARY, weights, keys=["roc_auc:COVID-19"]
    )["roc_auc:COVID-19"]
    assert difference.point is None


def test_each_model_keeps_its_own_decision():
    y_true, good, _, patients = _binary_pair()
    weights = bootstrap_weights(patients, y_true, 20, seed=0)
    calls_all_covid = Decision(rule="fixed", threshold=0.0, positive_class="COVID-19", chosen_on="config")
    differences = paired_differences(
        y_true, good, ARGMAX, good, calls_all_covid, BINARY, weights, keys=["specificity:COVID-19"]
    )
    assert differences["specificity:COVID-19"].point == pytest.approx(1.0)


# ---------------------------------------------------------------- undefined count metrics


def test_vectorised_metrics_equal_the_split_metrics_when_resamples_lose_a_class():
    # Rows of zeros and ones over a split with two pneumonia images: some resamples draw none,
    # some predict no class 2; the per-resample NaNs and NaN-means must be classification_metrics'.
    y_true, probabilities = _three_class(n=24, seed=7)
    y_true[:] = np.arange(24) % 2
    y_true[[5, 11]] = 2
    weights = np.random.default_rng(8).integers(0, 2, size=(12, len(y_true)))
    weights[:, 0] = 1  # no empty resample
    weights[:6, [5, 11]] = 0  # no pneumonia image in the first six
    values = resample_metrics(y_true, probabilities, CLASSES, ARGMAX, weights)
    assert np.isnan(values["sensitivity:pneumonia"][:6]).all()
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(len(y_true)), row)
        expected = classification_metrics(y_true[drawn], probabilities[drawn], CLASSES)
        wrong = [key for key in metric_keys(CLASSES) if not _same(values[key][b], expected.scalar(key))]
        assert wrong == [], f"resample {b}"


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_vectorised_averages_equal_scikit_learn_zero_division_nan_without_a_class():
    y_true, probabilities = _three_class(n=40, seed=9)
    keep = y_true != 2
    y_true, probabilities = y_true[keep], probabilities[keep]
    weights = np.random.default_rng(10).integers(0, 3, size=(3, len(y_true)))
    values = resample_metrics(y_true, probabilities, CLASSES, ARGMAX, weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(len(y_true)), row)
        y, predicted = y_true[drawn], probabilities[drawn].argmax(axis=1)
        expected = f1_score(y, predicted, labels=[0, 1, 2], average="macro", zero_division=np.nan)
        assert values["f1_macro"][b] == pytest.approx(expected)
        assert values["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(y, predicted))


def test_a_specificity_undefined_on_the_split_has_no_interval():
    y_true = np.ones(8, dtype=int)  # only COVID-19 images: no negative for its specificity
    probabilities = np.c_[np.linspace(0.6, 0.1, 8), np.linspace(0.4, 0.9, 8)]
    weights = bootstrap_weights([str(i // 2) for i in range(8)], y_true, 50, seed=0)
    intervals = metric_intervals(y_true, probabilities, BINARY, ARGMAX, weights)
    assert intervals["specificity:COVID-19"].low is None
    assert intervals["specificity:COVID-19"].high is None
    assert intervals["sensitivity:non-COVID"].low is None
    assert intervals["specificity_macro"].low is not None  # non-COVID's specificity is defined


def test_resamples_where_a_sensitivity_is_undefined_are_skipped():
    # As for ROC-AUC: the only COVID-19 image is in a non-COVID patient's stratum, so many resamples lack it.
    y_true = np.array([1, 0, 0, 0, 0, 0, 0])
    probabilities = np.c_[1 - np.linspace(0.9, 0.3, 7), np.linspace(0.9, 0.3, 7)]
    patients = ["x", "x", "x", "a", "b", "c", "d"]
    weights = bootstrap_weights(patients, y_true, 100, seed=0)
    values = resample_metrics(y_true, probabilities, BINARY, ARGMAX, weights, keys=["sensitivity:COVID-19"])
    assert np.isnan(values["sensitivity:COVID-19"]).any()
    interval = metric_intervals(y_true, probabilities, BINARY, ARGMAX, weights, keys=["sensitivity:COVID-19"])
    assert interval["sensitivity:COVID-19"].low == pytest.approx(1.0)  # never 0: undefined resamples are skipped


def test_a_difference_in_an_undefined_ppv_is_none():
    y_true, good, _, patients = _binary_pair()
    weights = bootstrap_weights(patients, y_true, 20, seed=0)
    never_covid = Decision(rule="fixed", threshold=1.1, positive_class="COVID-19", chosen_on="config")
    difference = paired_differences(y_true, good, ARGMAX, good, never_covid, BINARY, weights, keys=["ppv:COVID-19"])
    assert difference["ppv:COVID-19"].point is None
