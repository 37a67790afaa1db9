"""Metrics; the backbone tests live in tests/test_backbones.py."""

import numpy as np
import pytest

from components.config import BackboneConfig
from components.metrics import (
    Evaluation,
    SplitMetrics,
    best_candidate,
    classification_metrics,
    expected_calibration_error,
    flat_metrics,
)

CLASSES = ("COVID-19", "normal", "pneumonia")


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


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    y_true = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y_true, np.array([[1.0, 0.0], [0.0, 1.0]] * 2)) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(1.0)


def _split_metrics(f1: float) -> SplitMetrics:
    return SplitMetrics(
        accuracy=f1,
        precision_macro=f1,
        recall_macro=f1,
        f1_macro=f1,
        ece=0.0,
        n_images=1,
        per_class={},
        confusion_matrix=[[1]],
        class_names=["x"],
    )


def test_best_candidate_is_chosen_on_validation_not_test():
    backbone = BackboneConfig(name="MobileNet", weights="none")
    evaluations = [
        Evaluation(backbone=backbone, test_fingerprint="f", val=_split_metrics(val), test=_split_metrics(test))
        for val, test in ((0.7, 0.99), (0.9, 0.5), (0.9, 0.6))
    ]
    assert best_candidate(evaluations, "f1_macro") == 1


def test_an_unknown_metric_names_the_valid_ones():
    with pytest.raises(KeyError, match="f1_macro"):
        _split_metrics(0.5).scalar("auc")
