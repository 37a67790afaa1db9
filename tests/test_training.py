import numpy as np
import pytest

from components.backbones import build_classifier
from components.training import balanced_class_weights, fit_classifier, predict_probabilities, resize_stack


@pytest.mark.parametrize("num_classes", [2, 3])
def test_fit_and_predict_both_tasks(num_classes):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 40, 40), dtype=np.uint8)
    labels = np.arange(12) % num_classes
    model = build_classifier("MobileNet", num_classes, 32, weights="none", alpha=0.25)
    small = resize_stack(images, 32)
    summary = fit_classifier(model, (small, labels), (small[:6], labels[:6]), num_classes=num_classes, epochs=2,
                             batch_size=4, learning_rate=1e-3, patience=1, seed=0, lr_schedule="cosine")
    assert summary["epochs_run"] >= 1 and 1 <= summary["best_epoch"] <= summary["epochs_run"]
    assert set(summary["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    probabilities = predict_probabilities(model, small, num_classes)
    assert probabilities.shape == (12, num_classes)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_rare_classes_weigh_more():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] > weights[0] and weights[2] == 1.0
