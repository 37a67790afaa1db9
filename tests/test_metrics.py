"""Metrics of one split (components.metrics): per class, averages, calibration, the decision rule."""

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from components.config import BackboneConfig, ThresholdRule
from components.errors import CxrError
from components.evaluation import Evaluation, best_candidate
from components.metrics import (
    PER_CLASS_STATS,
    SCALAR_METRICS,
    Decision,
    DecisionError,
    MetricsInputError,
    SplitMetrics,
    choose_decision,
    classification_metrics,
    confusion_statistics,
    expected_calibration_error,
    flat_metrics,
    metric_keys,
)

CLASSES = ("COVID-19", "normal", "pneumonia")
BINARY = ("non-COVID", "COVID-19")


def _noisy_three_class(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    probabilities = rng.dirichlet(np.ones(3), n)
    probabilities[np.arange(n), y_true] += 0.4
    probabilities = np.round(probabilities / probabilities.sum(axis=1, keepdims=True), 2)  # some tied scores
    return y_true, probabilities


def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    metrics = classification_metrics(y_true, probs, CLASSES)
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.per_class["normal"].precision == pytest.approx(2 / 3)
    assert metrics.per_class["COVID-19"].recall == pytest.approx(0.5)
    assert metrics.confusion_matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1s = [metrics.per_class[c].f1 for c in CLASSES]
    assert metrics.f1_macro == pytest.approx(np.mean(f1s))
    assert "f1_normal" in flat_metrics(metrics)
    assert "per_class" not in flat_metrics(metrics)


def test_specificity_and_npv_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(y_true, np.eye(3)[[0, 1, 1, 1, 2, 0]], CLASSES)
    # COVID-19 one-vs-rest: TP 1, FN 1, FP 1 (a pneumonia image), TN 3.
    assert metrics.per_class["COVID-19"].specificity == pytest.approx(3 / 4)
    assert metrics.per_class["COVID-19"].npv == pytest.approx(3 / 4)
    assert metrics.per_class["COVID-19"].support == 2
    assert metrics.specificity_macro == pytest.approx(np.mean([3 / 4, 3 / 4, 1.0]))


def test_count_metrics_match_scikit_learn():
    y_true, probabilities = _noisy_three_class()
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert [metrics.per_class[c].sensitivity for c in CLASSES] == pytest.approx(recall)
    assert [metrics.per_class[c].ppv for c in CLASSES] == pytest.approx(precision)
    assert [metrics.per_class[c].f1 for c in CLASSES] == pytest.approx(f1)
    assert [metrics.per_class[c].support for c in CLASSES] == support.tolist()
    assert metrics.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert metrics.f1_weighted == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert metrics.precision_weighted == pytest.approx(np.average(precision, weights=support))


def test_specificity_is_the_sensitivity_of_the_rest():
    y_true, probabilities = _noisy_three_class()
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    y_pred = probabilities.argmax(axis=1)
    for index, name in enumerate(CLASSES):
        rest_true, rest_pred = y_true != index, y_pred != index
        assert metrics.per_class[name].specificity == pytest.approx((rest_true & rest_pred).sum() / rest_true.sum()), (
            name
        )
        assert metrics.per_class[name].npv == pytest.approx((rest_true & rest_pred).sum() / rest_pred.sum()), name


def test_threshold_free_metrics_match_scikit_learn():
    y_true, probabilities = _noisy_three_class()
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    roc = [roc_auc_score(y_true == i, probabilities[:, i]) for i in range(3)]
    average_precision = [average_precision_score(y_true == i, probabilities[:, i]) for i in range(3)]
    assert [metrics.per_class[c].roc_auc for c in CLASSES] == pytest.approx(roc)
    assert [metrics.per_class[c].pr_auc for c in CLASSES] == pytest.approx(average_precision)
    assert metrics.roc_auc_macro == pytest.approx(np.mean(roc))
    assert metrics.pr_auc_macro == pytest.approx(np.mean(average_precision))


@pytest.mark.parametrize("seed", range(5))
def test_threshold_free_metrics_match_scikit_learn_with_tied_scores(seed):
    # Scores rounded to one decimal: many ties, within and across classes (computed without scikit-learn).
    y_true, probabilities = _noisy_three_class(n=40, seed=seed)
    probabilities = np.round(probabilities, 1)
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    for index, name in enumerate(CLASSES):
        positive = y_true == index
        assert metrics.per_class[name].roc_auc == pytest.approx(roc_auc_score(positive, probabilities[:, index]))
        assert metrics.per_class[name].pr_auc == pytest.approx(
            average_precision_score(positive, probabilities[:, index])
        )


def test_undefined_roc_auc_is_none_and_left_out_of_mlflow_metrics():
    y_true = np.array([0, 0, 1, 1])  # no pneumonia image
    probabilities = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]])
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    assert metrics.per_class["pneumonia"].roc_auc is None
    assert metrics.per_class["pneumonia"].pr_auc is None
    assert math.isnan(metrics.scalar("roc_auc:pneumonia"))
    assert "roc_auc_pneumonia" not in flat_metrics(metrics)
    assert metrics.roc_auc_macro == pytest.approx(1.0)  # the mean over the classes where it is defined


def test_brier_score_is_the_multiclass_form():
    y_true = np.array([0, 1])
    probabilities = np.array([[0.8, 0.2], [0.4, 0.6]])
    metrics = classification_metrics(y_true, probabilities, BINARY)
    assert metrics.brier == pytest.approx(((0.2**2 + 0.2**2) + (0.4**2 + 0.4**2)) / 2)


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    y_true = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y_true, np.array([[1.0, 0.0], [0.0, 1.0]] * 2)) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(1.0)


def test_ece_and_mce_over_equal_width_bins():
    # Bin [0.9, 1.0): confidence 0.95 twice, one hit -> gap 0.45. Bin [0.6, 0.7): 0.65 twice, both hit -> gap 0.35.
    y_true = np.array([0, 1, 0, 0])
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.65, 0.35]])
    metrics = classification_metrics(y_true, probabilities, BINARY, n_bins=10)
    assert metrics.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert metrics.mce == pytest.approx(0.45)
    assert metrics.calibration_bins == 10


def test_reliability_bins_per_class():
    y_true = np.array([0, 1, 0, 0])
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.65, 0.35]])
    reliability = classification_metrics(y_true, probabilities, BINARY, n_bins=10).reliability
    covid = {(round(b.low, 1), b.count) for b in reliability["COVID-19"] if b.count}
    assert covid == {(0.0, 2), (0.3, 2)}
    top = reliability["non-COVID"][9]
    assert top.observed_rate == pytest.approx(0.5)
    assert top.mean_confidence == pytest.approx(0.95)
    assert reliability["non-COVID"][0].mean_confidence is None


def test_patients_are_counted_when_given():
    metrics = classification_metrics([0, 1, 1], np.eye(2)[[0, 1, 1]], BINARY, patient_ids=["a", "b", "b"])
    assert metrics.n_patients == 2


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    decision = choose_decision(y_true, np.c_[1 - scores, scores], BINARY, ThresholdRule(rule="youden"))
    # >= 0.7: sens 2/3, spec 1 (J 0.67); >= 0.4: sens 1, spec 2/3 (J 0.67): the tie goes to the higher threshold.
    assert decision.threshold == pytest.approx(0.7)
    assert decision.positive_class == "COVID-19"
    assert decision.chosen_on == "val"


def test_youden_beats_the_default_half_on_a_shifted_model():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.6, 0.65, 0.7, 0.8, 0.85, 0.9])  # every image above 0.5, perfectly ranked
    decision = choose_decision(y_true, np.c_[1 - scores, scores], BINARY, ThresholdRule(rule="youden"))
    assert decision.threshold == pytest.approx(0.8)
    assert classification_metrics(y_true, np.c_[1 - scores, scores], BINARY, decision).balanced_accuracy == 1.0


def test_min_sensitivity_takes_the_highest_threshold_that_reaches_it():
    y_true = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.3, 0.6, 0.8, 0.9])
    rule = ThresholdRule(rule="min_sensitivity", value=0.75)
    decision = choose_decision(y_true, np.c_[1 - scores, scores], BINARY, rule)
    assert decision.threshold == pytest.approx(0.6)  # sensitivity 3/4 at >= 0.6
    assert decision.rule_value == 0.75


def test_min_sensitivity_of_one_takes_the_lowest_positive_score():
    y_true = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.3, 0.9])
    rule = ThresholdRule(rule="min_sensitivity", value=1.0)
    assert choose_decision(y_true, np.c_[1 - scores, scores], BINARY, rule).threshold == pytest.approx(0.3)


def test_fixed_threshold_is_the_configured_value():
    decision = choose_decision([0, 1], [[0.5, 0.5], [0.1, 0.9]], BINARY, ThresholdRule(rule="fixed", value=0.3))
    assert decision.threshold == 0.3
    assert decision.describe() == "P(COVID-19) >= 0.3000 (fixed)"


def test_multiclass_decides_by_argmax():
    y_true, probabilities = _noisy_three_class(12)
    decision = choose_decision(y_true, probabilities, CLASSES, ThresholdRule(rule="youden"))
    assert decision.rule == "argmax"
    assert decision.describe() == "argmax (multiclass)"


def test_a_threshold_needs_positive_validation_images():
    with pytest.raises(DecisionError, match="no COVID-19 images"):
        choose_decision([0, 0], [[0.9, 0.1], [0.6, 0.4]], BINARY, ThresholdRule(rule="youden"))
    assert issubclass(DecisionError, CxrError)


def test_youden_needs_negative_validation_images():
    with pytest.raises(DecisionError, match="no non-COVID images"):
        choose_decision([1, 1], [[0.9, 0.1], [0.6, 0.4]], BINARY, ThresholdRule(rule="youden"))


def test_decision_predicts_positive_at_or_above_the_threshold():
    decision = Decision(rule="youden", threshold=0.4, positive_class="COVID-19", chosen_on="val")
    predicted = decision.predict(np.array([[0.61, 0.39], [0.6, 0.4], [0.2, 0.8]]), BINARY)
    assert predicted.tolist() == [0, 1, 1]
    assert decision.describe() == "P(COVID-19) >= 0.4000 (youden on val)"


def test_min_sensitivity_decision_is_described_with_its_value():
    decision = Decision(
        rule="min_sensitivity", rule_value=0.95, threshold=0.31, positive_class="COVID-19", chosen_on="val"
    )
    assert decision.describe() == "P(COVID-19) >= 0.3100 (min_sensitivity 0.95 on val)"


def test_a_threshold_decision_refuses_a_multiclass_task():
    decision = Decision(rule="fixed", threshold=0.5, positive_class="COVID-19", chosen_on="config")
    with pytest.raises(DecisionError, match="binary task only"):
        decision.predict(np.full((2, 3), 1 / 3), CLASSES)


def test_metrics_apply_the_decision():
    decision = Decision(rule="fixed", threshold=0.3, positive_class="COVID-19", chosen_on="config")
    metrics = classification_metrics([0, 1], [[0.65, 0.35], [0.6, 0.4]], BINARY, decision)
    assert metrics.confusion_matrix == [[0, 1], [0, 1]]
    assert metrics.decision == decision


def test_bad_labels_name_the_image():
    with pytest.raises(MetricsInputError, match=r"y_true\[1\] = 3"):
        classification_metrics([0, 3], np.eye(3)[[0, 1]], CLASSES)


def test_probabilities_of_the_wrong_width_are_refused():
    with pytest.raises(MetricsInputError, match=r"\(2, 3\)"):
        classification_metrics([0, 1], np.eye(2), CLASSES)


def test_an_empty_split_is_refused():
    with pytest.raises(MetricsInputError, match="no images"):
        classification_metrics([], np.zeros((0, 2)), BINARY)


def test_metric_keys_cover_overall_and_per_class_metrics():
    keys = metric_keys(BINARY)
    assert len(keys) == len(SCALAR_METRICS) + 2 * len(PER_CLASS_STATS)
    assert "sensitivity:COVID-19" in keys


def test_every_key_is_a_scalar():
    y_true, probabilities = _noisy_three_class(30)
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    values = [metrics.scalar(key) for key in metric_keys(CLASSES)]
    assert all(0.0 <= value <= 2.0 for value in values)


def test_flat_metric_names_are_safe_for_mlflow():
    metrics = classification_metrics([0, 1], [[0.8, 0.2], [0.3, 0.7]], BINARY, patient_ids=["a", "b"])
    flat = flat_metrics(metrics, prefix="test_")
    assert "test_sensitivity_COVID-19" in flat
    assert not [key for key in flat if ":" in key or " " in key]
    assert flat["test_n_patients"] == 2.0


def test_split_metrics_round_trip_through_json():
    decision = Decision(rule="youden", threshold=0.4, positive_class="COVID-19", chosen_on="val")
    metrics = classification_metrics([0, 0, 0], [[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]], BINARY, decision)
    assert SplitMetrics.model_validate_json(metrics.model_dump_json()) == metrics


def _split_metrics(f1: float) -> SplitMetrics:
    base = classification_metrics([0, 1], [[0.8, 0.2], [0.3, 0.7]], BINARY)
    return base.model_copy(update={"f1_macro": f1})


def test_best_candidate_is_chosen_on_validation_not_test():
    backbone = BackboneConfig(name="MobileNet", weights="none")
    evaluations = [
        Evaluation(
            backbone=backbone,
            test_fingerprint="f",
            decision=Decision(rule="argmax"),
            val=_split_metrics(val),
            test=_split_metrics(test),
            predictions=[],
        )
        for val, test in ((0.7, 0.99), (0.9, 0.5), (0.9, 0.6))
    ]
    assert best_candidate(evaluations, "f1_macro") == 1


def test_an_unknown_metric_names_the_valid_ones():
    with pytest.raises(KeyError, match="f1_macro"):
        _split_metrics(0.5).scalar("auc")


# ---------------------------------------------------------------- undefined metrics (zero denominators)
# Expected values follow scikit-learn's zero_division=np.nan: a 0/0 ratio is undefined, and the
# macro and weighted averages (and balanced accuracy) leave undefined classes out.


def test_a_split_of_one_class_leaves_the_other_class_undefined():
    # Only non-COVID images, one called COVID-19: COVID-19 has no positive image.
    metrics = classification_metrics([0, 0, 0], [[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]], BINARY)
    assert metrics.per_class["COVID-19"].sensitivity is None
    assert metrics.per_class["non-COVID"].specificity is None
    assert metrics.per_class["COVID-19"].specificity == pytest.approx(2 / 3)
    assert metrics.per_class["COVID-19"].ppv == pytest.approx(0.0)  # called once, wrongly: defined, 0
    assert metrics.per_class["COVID-19"].f1 == pytest.approx(0.0)  # its false alarm counts
    assert metrics.balanced_accuracy == pytest.approx(2 / 3)  # non-COVID's sensitivity alone
    assert metrics.specificity_macro == pytest.approx(2 / 3)  # COVID-19's specificity alone


def test_a_split_of_one_class_never_predicted_otherwise_has_every_average_of_that_class():
    metrics = classification_metrics([0, 0, 0], [[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]], BINARY)
    assert metrics.per_class["COVID-19"].f1 is None  # neither present nor predicted
    assert metrics.per_class["COVID-19"].ppv is None
    assert metrics.per_class["non-COVID"].npv is None  # predicted for every image
    assert metrics.f1_macro == pytest.approx(1.0)
    assert metrics.balanced_accuracy == pytest.approx(1.0)
    assert metrics.precision_macro == pytest.approx(1.0)


def test_a_slice_without_negatives_has_no_specificity():
    # Every image is COVID-19 (the card's slice with no non-COVID image).
    metrics = classification_metrics([1, 1, 1, 1], [[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]], BINARY)
    assert metrics.per_class["COVID-19"].specificity is None
    assert math.isnan(metrics.scalar("specificity:COVID-19"))
    assert "specificity_COVID-19" not in flat_metrics(metrics)
    assert metrics.per_class["COVID-19"].sensitivity == pytest.approx(3 / 4)
    assert metrics.specificity_macro == pytest.approx(3 / 4)  # non-COVID's: 3 of the 4 COVID-19 images not called it
    assert metrics.balanced_accuracy == pytest.approx(3 / 4)
    assert metrics.per_class["non-COVID"].sensitivity is None


def test_a_class_never_predicted_has_no_ppv_and_keeps_its_f1_of_zero():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(y_true, np.eye(3)[[0, 0, 0, 1, 1, 1]], CLASSES)  # pneumonia never predicted
    assert metrics.per_class["pneumonia"].ppv is None
    assert metrics.per_class["pneumonia"].npv == pytest.approx(4 / 6)
    assert metrics.per_class["pneumonia"].sensitivity == pytest.approx(0.0)
    assert metrics.per_class["pneumonia"].f1 == pytest.approx(0.0)
    assert metrics.precision_macro == pytest.approx(np.mean([2 / 3, 1 / 3]))


def test_a_class_predicted_for_every_image_has_no_npv():
    metrics = classification_metrics([0, 1, 1], [[0.4, 0.6], [0.3, 0.7], [0.2, 0.8]], BINARY)
    assert metrics.per_class["COVID-19"].npv is None


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(4))
def test_averages_match_scikit_learn_when_a_class_is_absent(seed):
    y_true, probabilities = _noisy_three_class(n=30, seed=seed)
    keep = y_true != 2  # no pneumonia image; pneumonia still predicted for some images
    y_true, probabilities = y_true[keep], probabilities[keep]
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    y_pred = probabilities.argmax(axis=1)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=[0, 1, 2], average=average, zero_division=np.nan
        )
        assert metrics.scalar(f"precision_{average}") == pytest.approx(precision), average
        assert metrics.scalar(f"recall_{average}") == pytest.approx(recall), average
        assert metrics.scalar(f"f1_{average}") == pytest.approx(f1), average
    assert metrics.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_per_class_metrics_match_scikit_learn_zero_division_nan_when_a_class_is_absent():
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.eye(3)[[0, 0, 0, 0]]
    metrics = classification_metrics(y_true, probabilities, CLASSES)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, probabilities.argmax(axis=1), labels=[0, 1, 2], zero_division=np.nan
    )
    assert [metrics.scalar(f"ppv:{c}") for c in CLASSES] == pytest.approx(precision, nan_ok=True)
    assert [metrics.scalar(f"sensitivity:{c}") for c in CLASSES] == pytest.approx(recall, nan_ok=True)
    assert [metrics.scalar(f"f1:{c}") for c in CLASSES] == pytest.approx(f1, nan_ok=True)


def test_an_average_is_undefined_only_when_no_class_defines_it():
    values = confusion_statistics(np.zeros((1, 2, 2)))  # no image at all: nothing is defined
    assert np.isnan(values["balanced_accuracy"][0])
    assert np.isnan(values["f1_macro"][0])
    assert np.isnan(values["specificity_macro"][0])


def test_undefined_metrics_round_trip_through_json_as_null():
    metrics = classification_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]], BINARY)
    assert '"specificity":null' in metrics.model_dump_json()
    assert SplitMetrics.model_validate_json(metrics.model_dump_json()) == metrics
