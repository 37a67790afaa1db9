"""Metrics; the backbone tests live in tests/test_backbones.py."""

import numpy as np
import pytest

from components.metrics import best_candidate, classification_metrics, expected_calibration_error, flat_metrics


def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    metrics = classification_metrics(y_true, probs, ("COVID-19", "normal", "pneumonia"))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["normal"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["COVID-19"]["recall"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1s = [metrics["per_class"][c]["f1"] for c in ("COVID-19", "normal", "pneumonia")]
    assert metrics["f1_macro"] == pytest.approx(np.mean(f1s))
    assert "f1_normal" in flat_metrics(metrics) and "per_class" not in flat_metrics(metrics)


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    y_true = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y_true, np.array([[1.0, 0.0], [0.0, 1.0]] * 2)) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(1.0)


def test_best_candidate_is_chosen_on_validation_not_test():
    evaluations = [
        {"val": {"f1_macro": 0.7}, "test": {"f1_macro": 0.99}},
        {"val": {"f1_macro": 0.9}, "test": {"f1_macro": 0.5}},
        {"val": {"f1_macro": 0.9}, "test": {"f1_macro": 0.6}},
    ]
    assert best_candidate(evaluations, "f1_macro") == 1
