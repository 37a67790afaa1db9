import numpy as np
import pytest

from components.backbones import UnknownBackboneError, WeightsUnavailableError, build_classifier, probabilities
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


@pytest.mark.parametrize("classes, units, activation", [(2, 1, "sigmoid"), (3, 3, "softmax")])
def test_paper_head_shape(classes, units, activation):
    model = build_classifier("MobileNet", classes, 64, weights="none", alpha=0.25)
    names = [layer.__class__.__name__ for layer in model.layers]
    head = names[names.index("Functional") + 1:]
    assert head == ["GlobalAveragePooling2D", "BatchNormalization", "Flatten", "Dense", "Dropout", "Dense"]
    assert model.layers[-3].units == 128 and model.layers[-2].rate == 0.5
    assert model.layers[-1].units == units and model.layers[-1].activation.__name__ == activation
    output = model.predict(np.full((2, 64, 64, 3), 128, np.float32), verbose=0)
    probs = probabilities(output, classes)
    assert probs.shape == (2, classes) and np.allclose(probs.sum(axis=1), 1.0)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackboneError, match="InceptionV3, MobileNet, Xception"):
        build_classifier("ResNet50x", 2, 64)


def test_imagenet_weights_offline_fail_with_instructions():
    with pytest.raises(WeightsUnavailableError, match="KERAS_HOME") as error:
        build_classifier("MobileNet", 2, 128, weights="imagenet", alpha=0.25)
    assert "weights: none" in str(error.value)


def test_weights_from_a_local_file(tmp_path):
    import keras

    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.25)
    first_kernel = next(w for w in base.weights if "kernel" in w.path)
    first_kernel.assign(np.full(first_kernel.shape, 0.0123, np.float32))
    weights_file = tmp_path / "mobilenet_notop.weights.h5"
    base.save_weights(weights_file)
    model = build_classifier("MobileNet", 2, 64, weights=str(weights_file), alpha=0.25)
    backbone = next(layer for layer in model.layers if layer.__class__.__name__ == "Functional")
    loaded = next(w for w in backbone.weights if "kernel" in w.path)
    assert np.allclose(loaded.numpy(), 0.0123)
    assert not backbone.trainable  # pretrained backbones are frozen in the first phase
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_classifier("MobileNet", 2, 64, weights=str(tmp_path / "nope.h5"), alpha=0.25)


def test_best_candidate_is_chosen_on_validation_not_test():
    evaluations = [
        {"val": {"f1_macro": 0.7}, "test": {"f1_macro": 0.99}},
        {"val": {"f1_macro": 0.9}, "test": {"f1_macro": 0.5}},
        {"val": {"f1_macro": 0.9}, "test": {"f1_macro": 0.6}},
    ]
    assert best_candidate(evaluations, "f1_macro") == 1
