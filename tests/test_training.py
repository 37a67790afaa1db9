import numpy as np
import pytest

from components.backbones import build_classifier
from components.config import TrainingConfig
from components.training import (
    DevicePlan,
    balanced_class_weights,
    device_plan,
    find_backbone,
    predict_probabilities,
    resize_stack,
    train_classifier,
)
from tests.factories import cycling_labels, noise_images, tiny_training_set


# Binary (Dense(1, sigmoid)) is fitted and predicted in the two-phase test below. Eager, as
# the other small fits here: tracing a MobileNet's train step costs ~10 s on 2 cores, and the
# traced path is trained in tests/test_learning.py and, mirrored, in the mixed-precision test.
@pytest.mark.parametrize("num_classes", [3])
def test_fit_and_predict_both_tasks(num_classes):
    small = resize_stack(noise_images(12, 40), 32)
    labels = cycling_labels(12, num_classes)
    training = TrainingConfig(epochs=2, batch_size=4, learning_rate=1e-3, patience=1, lr_schedule="cosine")
    model, summary = train_classifier(
        lambda: build_classifier("MobileNet", num_classes, 32, weights="none", alpha=0.25),
        (small, labels),
        (small[:6], labels[:6]),
        num_classes=num_classes,
        training=training,
        seed=0,
        num_gpus=0,
        run_eagerly=True,
    )
    assert small.shape == (12, 32, 32)
    assert summary["epochs_run"] >= 1
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"]
    assert set(summary["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    probabilities = predict_probabilities(model, small, num_classes)
    assert probabilities.shape == (12, num_classes)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_rare_classes_weigh_more():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] > weights[0]
    assert weights[2] == 1.0  # absent class


class EpochRecorder:
    """Collects the epoch indices Keras reports (what mlflow_epoch_logger logs as steps)."""

    def __new__(cls):
        import keras

        class Recorder(keras.callbacks.Callback):
            epochs: list = []

            def on_epoch_end(self, epoch, logs=None):
                self.epochs.append(epoch)

        recorder = Recorder()
        recorder.epochs = []
        return recorder


@pytest.fixture(scope="module")
def pretrained_weights(tmp_path_factory):
    """A 'pretrained' MobileNet backbone weights file (random weights, saved locally)."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mobilenet.weights.h5"
    keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.25).save_weights(
        path
    )
    return str(path)


def test_two_phases_fine_tune_top_layers_with_batchnorm_frozen(pretrained_weights):
    import keras

    train, val = tiny_training_set()
    training = TrainingConfig(
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        patience=5,
        lr_schedule="constant",
        fine_tune_layers=6,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-5,
        reduce_lr_patience=1,
        reduce_lr_factor=0.5,
        min_learning_rate=1e-7,
    )
    recorder = EpochRecorder()
    model, summary = train_classifier(
        lambda: build_classifier("MobileNet", 2, 32, weights=pretrained_weights, alpha=0.25),
        train,
        val,
        num_classes=2,
        training=training,
        seed=0,
        callbacks=[recorder],
        num_gpus=0,
        run_eagerly=True,
    )
    assert summary["pretrained"]
    assert summary["phase1_epochs"] == 2
    assert summary["phase2_epochs"] == 1
    assert recorder.epochs == [0, 1, 2]  # phase 2 numbered after phase 1
    assert len(summary["history"]["val_loss"]) == 3
    assert len(summary["history"]["val_f1_macro"]) == 3  # the default monitor, scored every epoch of both phases
    assert summary["monitor"] == "val_f1_macro"
    assert summary["best_monitor_value"] == max(summary["history"]["val_f1_macro"])
    assert summary["seed"] == 0
    backbone = find_backbone(model)
    trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert len(trainable) == summary["fine_tuned_layers"]
    assert 1 <= len(trainable) <= 6
    assert all(layer in backbone.layers[-6:] for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert model.optimizer.learning_rate.numpy() <= 1e-5 + 1e-12  # recompiled at the fine-tuning rate
    probabilities = predict_probabilities(model, train[0], 2)
    assert probabilities.shape == (12, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_scratch_model_trains_everything_and_skips_phase_2():
    train, val = tiny_training_set(3)
    training = TrainingConfig(
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        patience=2,
        lr_schedule="cosine",
        fine_tune_layers=10,
        fine_tune_epochs=3,
    )
    model, summary = train_classifier(
        lambda: build_classifier("MobileNet", 3, 32, weights="none", alpha=0.25),
        train,
        val,
        num_classes=3,
        training=training,
        seed=1,
        num_gpus=0,
        run_eagerly=True,
    )
    assert not summary["pretrained"]
    assert summary["phase2_epochs"] == 0
    assert summary["epochs_run"] == 1
    assert find_backbone(model).trainable
    assert summary["device"] == {
        "gpus": 0,
        "precision_policy": "float32",
        "strategy": "default",
        "replicas": 1,
        "global_batch_size": 4,
    }


def test_device_plan():
    assert device_plan(0, 16) == DevicePlan(0, "float32", "default", 1, 16)
    assert device_plan(1, 16) == DevicePlan(1, "mixed_float16", "default", 1, 16)
    assert device_plan(4, 16) == DevicePlan(4, "mixed_float16", "mirrored", 4, 64)


# The GPU plans' code path, run on CPU in a fresh process (the dtype policy and the
# strategy are process-wide): mixed float16 with a float32 output layer, built, fitted
# and saved under MirroredStrategy. With no GPU the strategy has one (CPU) replica, so
# this checks the code path, not the speed-up.
MIRRORED_ON_CPU = """
import json, os, sys, tempfile
import numpy as np
import keras
from components.backbones import build_classifier
from components.config import TrainingConfig
from components.training import find_backbone, predict_probabilities, train_classifier
rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, (24, 32, 32), dtype=np.uint8), np.arange(24) % 2
model, summary = train_classifier(
    lambda: build_classifier("MobileNet", 2, 32, weights="none", alpha=0.25), (images, labels),
    (images[:8], labels[:8]), num_classes=2, seed=0, num_gpus=2, verbose=0,
    training=TrainingConfig(epochs=1, batch_size=4, learning_rate=1e-3, patience=1))
path = os.path.join(tempfile.mkdtemp(), "m.keras")
model.save(path)
loaded = keras.models.load_model(path)
print(json.dumps({
    "device": summary["device"], "epochs": summary["epochs_run"], "history": summary["history"],
    "conv_dtype": find_backbone(model).layers[1].compute_dtype,
    "output_dtype": model.get_layer("probability").compute_dtype,
    "policy_after": keras.mixed_precision.global_policy().name,
    "probabilities": predict_probabilities(loaded, images[:3], 2).tolist(),
}))
"""


@pytest.mark.slow
def test_mixed_precision_under_mirrored_strategy_runs_on_cpu():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_ON_CPU],
        cwd=root,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == {
        "gpus": 2,
        "precision_policy": "mixed_float16",
        "strategy": "mirrored",
        "replicas": 2,
        "global_batch_size": 8,
    }
    assert report["epochs"] == 1
    assert len(report["history"]["val_f1_macro"]) == 1  # scored by model.predict inside fit, under the strategy
    assert report["conv_dtype"] == "float16"
    assert report["output_dtype"] == "float32"
    assert report["policy_after"] == "float32"  # restored for the next step in the same process
    probabilities = np.array(report["probabilities"])
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_reduce_lr_needs_constant_schedule_and_shorter_patience():
    from pydantic import ValidationError

    from components.config import TrainingConfig

    assert TrainingConfig(reduce_lr_patience=2, patience=5).reduce_lr_patience == 2
    with pytest.raises(ValidationError, match="lr_schedule: constant"):
        TrainingConfig(reduce_lr_patience=2, lr_schedule="cosine")
    with pytest.raises(ValidationError, match="shorter than patience"):
        TrainingConfig(reduce_lr_patience=5, patience=5)


# --- the monitored metric: early stopping and the best epoch -------------------------------

# The degenerate case seen on the public data: 80% of validation is COVID-19 (class 1) and an
# early model calls every image COVID-19 with P = 0.8. A later epoch separates the classes
# (P = 0.6 for COVID-19, 0.45 for the others: all right) but is less confident, so its
# unweighted val_loss is higher (0.528 against 0.500).
DEGENERATE_LABELS = np.array([1] * 40 + [0] * 10)
EPOCH_P_COVID = [np.full(50, 0.8), np.where(DEGENERATE_LABELS == 1, 0.6, 0.45)]


def binary_cross_entropy(labels: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fixed_output_model(p_covid: np.ndarray):
    """A binary model (one sigmoid output, as build_classifier's) whose output on input [label] is p_covid[label]."""
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, activation="sigmoid")])
    logit = np.log(p_covid / (1 - p_covid))
    at_0, at_1 = logit[DEGENERATE_LABELS == 0][0], logit[DEGENERATE_LABELS == 1][0]
    model.set_weights([np.array([[at_1 - at_0]], np.float32), np.array([at_0], np.float32)])
    return model


def epochs_through_callbacks(monitor: str):
    """Two epochs' logs through the scores callback and the phase callback, as fit would run them."""
    import tensorflow as tf

    from components.checkpoints import TrainingState
    from components.training import MONITOR_MODES, _phase_callback, _validation_scores_callback

    features = DEGENERATE_LABELS[:, None].astype(np.float32)
    val_data = tf.data.Dataset.from_tensor_slices((features, DEGENERATE_LABELS)).batch(16)
    state = TrainingState(key="k", monitor=monitor, mode=MONITOR_MODES[monitor])
    timings: dict[str, float] = {}
    scores = _validation_scores_callback(val_data, DEGENERATE_LABELS, 2, timings)
    phase = _phase_callback(state, 5, None, "", None, None, timings)
    for epoch, p_covid in enumerate(EPOCH_P_COVID):
        model = fixed_output_model(p_covid)
        scores.set_model(model)
        phase.set_model(model)
        logs = {"val_loss": binary_cross_entropy(DEGENERATE_LABELS, p_covid)}
        scores.on_epoch_end(epoch, logs)
        phase.on_epoch_end(epoch, logs)
    return state, phase, timings


def test_balanced_monitor_prefers_the_epoch_that_separates_the_classes_over_lower_val_loss():
    state, phase, timings = epochs_through_callbacks("val_f1_macro")
    assert state.history["val_loss"][0] < state.history["val_loss"][1]  # val_loss would pick epoch 1
    assert state.history["val_f1_macro"][0] < 0.5  # everything COVID-19: F1 0 for the other class
    assert state.history["val_f1_macro"][1] == 1.0
    assert state.history["val_balanced_accuracy"] == [0.5, 1.0]
    assert state.history["val_roc_auc"] == [0.5, 1.0]
    assert state.best_epoch == 2
    assert state.best_value == 1.0
    assert state.wait == 0
    assert np.isclose(phase.best_weights[1][0], np.log(0.45 / 0.55))  # epoch 2's weights are kept to restore
    assert timings["monitor_seconds"] > 0


def test_val_loss_can_still_be_monitored():
    state, phase, _ = epochs_through_callbacks("val_loss")
    assert state.best_epoch == 1
    assert state.best_value == state.history["val_loss"][0]
    assert state.wait == 1
    assert np.isclose(phase.best_weights[1][0], np.log(0.8 / 0.2))


def test_reduce_lr_follows_the_monitor_in_its_direction():
    from components.training import _reduce_lr_callback

    balanced = _reduce_lr_callback(TrainingConfig(reduce_lr_patience=1, monitor="val_balanced_accuracy"), {})
    assert (balanced.monitor, balanced.mode) == ("val_balanced_accuracy", "max")
    loss = _reduce_lr_callback(TrainingConfig(reduce_lr_patience=1, monitor="val_loss"), {})
    assert (loss.monitor, loss.mode) == ("val_loss", "min")


def test_validation_scores_multiclass_and_a_missing_class():
    from components.training import check_monitor, validation_scores

    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    scores = validation_scores(labels, probabilities)
    assert np.isclose(scores["val_balanced_accuracy"], (1 + 1 + 0.5) / 3)
    assert np.isclose(scores["val_f1_macro"], (2 / 3 + 1 + 2 / 3) / 3)
    assert scores["val_roc_auc"] == 1.0
    assert np.isnan(validation_scores(labels[:2], probabilities[:2])["val_roc_auc"])  # class 2 absent
    with pytest.raises(ValueError, match=r"val_roc_auc needs every class.*\[2\]"):
        check_monitor("val_roc_auc", labels[:2], 3)
    check_monitor("val_f1_macro", labels[:2], 3)  # F1 is defined without class 2
