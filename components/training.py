"""Keras training and prediction on uint8 grayscale arrays.

Images travel as uint8 (N, S, S) grayscale (a third of the memory of float32
and a twelfth of float32 RGB); a tf.data map turns each batch into the float32
(S, S, 3) raw pixels that models take.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from components.checkpoints import (
    CheckpointFolder,
    EpochClock,
    TrainingState,
    epoch_seed,
    optimizer_file,
    weights_file,
)
from components.config import BackboneConfig, TrainingConfig
from components.imaging import load_images, resize_grayscale

logger = logging.getLogger(__name__)

# Keras progress output: verbose=2 prints one line per epoch ("Epoch 3/30 - 12s -
# loss: ... val_loss: ..."). verbose=1 redraws a bar with carriage returns, which
# ZenML's step logs (a file, the dashboard) store as hundreds of partial lines
# per epoch; one line per epoch reads well there and in `kubectl logs`.
KERAS_VERBOSE = 2

# What TrainingConfig.monitor can name, and which way is better. The balanced metrics come
# from validation_scores (one batched prediction of the validation split per epoch); val_loss
# is Keras' own, unweighted, which favours the majority class when one class dominates.
MONITOR_MODES: dict[str, str] = {
    "val_f1_macro": "max",
    "val_balanced_accuracy": "max",
    "val_roc_auc": "max",
    "val_loss": "min",
}
BALANCED_MONITORS = ("val_f1_macro", "val_balanced_accuracy", "val_roc_auc")


def resize_stack(grays: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack of grayscale images with the shared (PIL bilinear) resize.

    Args:
        grays: uint8 (N, H, W) grayscale images.
        size: Side of the output images, in pixels.

    Returns:
        uint8 (N, size, size); `grays` itself when it already has that size.
    """
    if grays.shape[1:] == (size, size):
        return grays
    return (
        np.stack([resize_grayscale(gray, size) for gray in grays])
        if len(grays)
        else np.zeros((0, size, size), np.uint8)
    )


def split_arrays(split_manifest, split: str, class_names: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load the images and labels of one split of a split manifest.

    Args:
        split_manifest: Manifest DataFrame with ``uri``, ``label`` and ``split`` columns.
        split: "train", "val" or "test".
        class_names: Label of each class index.
        size: Side the images are resized to, in pixels.

    Returns:
        uint8 (N, size, size) grayscale images and int64 (N,) labels (index in class_names).

    Raises:
        ValueError: A row's label is not in class_names.
    """
    rows = split_manifest[split_manifest["split"] == split]
    labels = rows["label"].map(list(class_names).index).to_numpy(dtype=np.int64)
    return load_images(rows["uri"].tolist(), size), labels


# Images per Python call when a shuffled epoch is gathered from the arrays (make_dataset).
SHUFFLE_CHUNK = 1024


def make_dataset(
    grays: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    shuffle_seed: int | None = None,
    first_epoch: int | EpochClock = 0,
):
    """Build the tf.data pipeline that feeds a model.

    A shuffled dataset gives one epoch per iteration, in the order
    ``numpy.random.default_rng(epoch_seed(shuffle_seed, epoch)).permutation(N)``: a
    function of the seed and the epoch only, so a resumed run sees the orders the
    uninterrupted run saw (a tf.data reshuffle would restart its sequence at the
    first epoch's order).

    Args:
        grays: uint8 (N, S, S) grayscale images.
        labels: int (N,) class indices, or None for prediction.
        batch_size: Images per batch (the last one may be smaller).
        shuffle_seed: The run's seed: each epoch comes in its own order; None keeps the order.
        first_epoch: With a shuffle seed, the 0-based global epoch of the first iteration
            (later ones count on), or the EpochClock that training sets at each epoch's start.

    Returns:
        A tf.data.Dataset of float32 (B, S, S, 3) raw 0..255 pixels (the gray
        channel repeated), with int labels when given (int64 when shuffled); batched and prefetched.
    """
    import tensorflow as tf

    def to_model_input(gray, *rest):
        image = tf.repeat(tf.cast(gray[..., None], tf.float32), 3, axis=-1)
        return (image, *rest)

    tensors = (grays,) if labels is None else (grays, np.asarray(labels, dtype=np.int64))
    if shuffle_seed is None:
        dataset = tf.data.Dataset.from_tensor_slices(tensors)
    else:
        clock = EpochClock.of(first_epoch)

        def one_epoch():  # gathered in chunks: memory stays within a chunk, one Python call each
            order = np.random.default_rng(epoch_seed(shuffle_seed, clock.take())).permutation(len(grays))
            for start in range(0, len(order), SHUFFLE_CHUNK):
                yield tuple(tensor[order[start : start + SHUFFLE_CHUNK]] for tensor in tensors)

        signature = tuple(tf.TensorSpec((None, *tensor.shape[1:]), tf.as_dtype(tensor.dtype)) for tensor in tensors)
        dataset = (
            tf.data.Dataset.from_generator(one_epoch, output_signature=signature)
            .unbatch()
            .apply(tf.data.experimental.assert_cardinality(len(grays)))
        )
    return dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


class TrainingData(Protocol):
    """What training needs from a training set, wherever its images live.

    ArrayData (uint8 arrays in memory), shards.ShardSet (offline-expanded
    TFRecord shards on disk) and online_augmentation.OnTheFlyData (originals
    augmented by worker processes every epoch) implement it.
    """

    count: int  # images per epoch

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Images per class in one epoch: int (num_classes,)."""
        ...

    def dataset(self, batch_size: int, shuffle_seed: int | None, first_epoch: int | EpochClock = 0):
        """The tf.data.Dataset of one epoch per iteration, as make_dataset's.

        An epoch's order and draws must depend on (shuffle_seed, epoch) only, the epoch being
        `first_epoch` and counting on, or read from the EpochClock that training sets at
        each epoch's start: a resumed run then repeats the uninterrupted run's epochs.
        """
        ...

    def digest(self) -> str:
        """A hash of everything that determines the epochs (for checkpoint keys)."""
        ...


@dataclass
class ArrayData:
    """A training set held in memory: uint8 (N, S, S) grayscale images and integer labels."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def count(self) -> int:
        """Images per epoch."""
        return len(self.images)

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Images per class: int (num_classes,)."""
        return np.bincount(self.labels, minlength=num_classes)

    def dataset(self, batch_size: int, shuffle_seed: int | None, first_epoch: int | EpochClock = 0):
        """make_dataset of the arrays (every epoch holds the same images, in the order of its epoch)."""
        return make_dataset(self.images, self.labels, batch_size, shuffle_seed, first_epoch)

    def digest(self) -> str:
        """Hash of the images and labels (components.checkpoints.array_digest)."""
        from components.checkpoints import array_digest

        return array_digest(self.images, self.labels)


def as_training_data(train) -> TrainingData:
    """Wrap (images, labels) arrays as ArrayData; a TrainingData passes through.

    Args:
        train: uint8 (N, S, S) images and int (N,) labels as a tuple, or a TrainingData.

    Returns:
        A TrainingData.
    """
    return ArrayData(*train) if isinstance(train, tuple) else train


def class_weights_from_counts(counts: np.ndarray) -> dict[int, float]:
    """Balanced class weights n / (k * count_c): rare classes weigh more.

    Args:
        counts: int (k,) images per class.

    Returns:
        {class index: weight}; a class with no images gets weight 1.
    """
    total, num_classes = counts.sum(), len(counts)
    return {c: float(total / (num_classes * counts[c])) if counts[c] else 1.0 for c in range(num_classes)}


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights of a label array (see class_weights_from_counts).

    Args:
        labels: int (N,) class indices.
        num_classes: Number of classes k.

    Returns:
        {class index: weight} for all k classes.
    """
    return class_weights_from_counts(np.bincount(labels, minlength=num_classes))


def learning_rate_schedule(learning_rate: float, schedule: str, total_steps: int):
    """The learning rate an optimizer takes for one phase.

    Args:
        learning_rate: Initial learning rate.
        schedule: "constant", or "cosine" (decays to 0 over `total_steps`).
        total_steps: Optimizer steps of the phase (epochs x steps per epoch).

    Returns:
        The float itself (constant) or a keras CosineDecay schedule.

    Raises:
        ValueError: An unknown schedule.
    """
    import keras

    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}; valid: constant, cosine")


def validation_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The balanced validation metrics that training can monitor (sklearn).

    Predictions are the argmax of the probabilities (binary: P(COVID-19) > 0.5).
    Classes absent from `labels` count as F1 0 in the macro average; ROC-AUC
    needs every class in `labels` and is NaN otherwise.

    Args:
        labels: int (N,) true class indices.
        probabilities: float (N, k) class probabilities (components.backbones.probabilities;
            binary: [1 - p, p] with p the sigmoid output).

    Returns:
        {"val_f1_macro": macro-averaged F1 over the k classes, "val_balanced_accuracy": mean
        per-class recall, "val_roc_auc": ROC-AUC (binary: of P(class 1); else macro one-vs-rest)},
        all NaN when there are no labels.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    nan = float("nan")
    if len(labels) == 0:
        return dict.fromkeys(BALANCED_MONITORS, nan)
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    with warnings.catch_warnings():  # sklearn warns about classes absent from labels
        warnings.simplefilter("ignore", UserWarning)
        f1 = f1_score(labels, predicted, labels=list(range(num_classes)), average="macro", zero_division=0)
        balanced = balanced_accuracy_score(labels, predicted)
    if len(np.unique(labels)) < num_classes:
        auc = nan
    elif num_classes == 2:
        auc = roc_auc_score(labels, probabilities[:, 1])
    else:  # renormalised: sklearn requires rows summing to 1 within 1e-5, float32 softmax may not
        scores = probabilities / probabilities.sum(axis=1, keepdims=True)
        auc = roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=list(range(num_classes)))
    return {"val_f1_macro": float(f1), "val_balanced_accuracy": float(balanced), "val_roc_auc": float(auc)}


def check_monitor(monitor: str, val_labels: np.ndarray, num_classes: int) -> None:
    """Refuse a monitor that the validation split cannot measure, before any training.

    Args:
        monitor: TrainingConfig.monitor.
        val_labels: int (N,) class indices of the validation split.
        num_classes: Number of classes k.

    Raises:
        ValueError: An unknown monitor, or val_roc_auc with a class missing from the validation split.
    """
    if monitor not in MONITOR_MODES:
        raise ValueError(f"training.monitor {monitor!r} is unknown; valid: {', '.join(MONITOR_MODES)}")
    missing = sorted(set(range(num_classes)) - set(np.unique(val_labels).tolist()))
    if monitor == "val_roc_auc" and missing:
        raise ValueError(
            f"training.monitor val_roc_auc needs every class in the validation split; class index(es) "
            f"{missing} have no validation images (choose val_f1_macro or val_balanced_accuracy, or resplit)"
        )


def compile_classifier(model, num_classes: int, learning_rate, run_eagerly: bool = False) -> None:
    """Compile with Adam and the task's loss, and create the optimizer's variables now.

    Creating them here rather than inside the first training step lets Keras
    trace that step once instead of twice (about 4 s less per fit of a
    MobileNet on CPU).

    Args:
        model: A build_classifier model (one sigmoid output when num_classes is 2).
        num_classes: 2: binary cross-entropy; more: sparse categorical cross-entropy.
        learning_rate: A float or a Keras learning-rate schedule.
        run_eagerly: Run train steps eagerly (no graph tracing).
    """
    import keras

    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"], run_eagerly=run_eagerly
    )
    model.optimizer.build(model.trainable_variables)


# --- devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePlan:
    """How to use the visible accelerators: dtype policy, distribution strategy, batch size."""

    gpus: int
    precision_policy: str  # "float32" or "mixed_float16"
    strategy: str  # "default" (one device) or "mirrored" (data parallel over the GPUs)
    replicas: int
    global_batch_size: int  # batch_size per replica x replicas


def device_plan(num_gpus: int, batch_size: int) -> DevicePlan:
    """Plan the use of the GPUs: dtype policy, distribution strategy, global batch size.

    GPU: mixed float16 (tensor cores; the output layer stays float32). Several
    GPUs: MirroredStrategy, each replica keeping `batch_size`, so the global
    batch grows with them. No GPU: float32 on the default (CPU) device.

    Args:
        num_gpus: Visible GPUs.
        batch_size: Images per batch per replica.

    Returns:
        The DevicePlan.
    """
    if num_gpus <= 0:
        return DevicePlan(0, "float32", "default", 1, batch_size)
    if num_gpus == 1:
        return DevicePlan(1, "mixed_float16", "default", 1, batch_size)
    return DevicePlan(num_gpus, "mixed_float16", "mirrored", num_gpus, batch_size * num_gpus)


def visible_gpus() -> int:
    """Number of GPUs TensorFlow sees."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def device_scope(plan: DevicePlan):
    """Context to build, compile and fit in: the plan's dtype policy and strategy scope.

    The global dtype policy is restored on exit, since steps of the local
    orchestrator share one process.

    Args:
        plan: From device_plan.

    Yields:
        Nothing; the policy and scope hold inside the ``with`` block.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(plan.precision_policy)
    try:
        if plan.strategy == "mirrored":
            import tensorflow as tf

            with tf.distribute.MirroredStrategy().scope():
                yield
        else:
            yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# --- phases --------------------------------------------------------------------------------


def find_backbone(model):
    """Find the nested backbone model inside a build_classifier model.

    Args:
        model: A Keras model.

    Returns:
        The first layer that is itself a keras.Model, or None if there is none.
    """
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else None


def unfreeze_top_layers(backbone, count: int) -> int:
    """Make the top `count` layers of the backbone trainable, BatchNorm layers excepted.

    Layers are counted as `backbone.layers` lists them (activations and padding
    included), as in the Keras transfer-learning guide. BatchNorm layers stay
    frozen: with trainable=False a Keras 3 BatchNorm runs in inference mode and
    keeps its ImageNet statistics, which small batches of X-rays would spoil.

    Args:
        backbone: The nested backbone model (find_backbone).
        count: Layers to unfreeze, counted from the top.

    Returns:
        The number of layers with weights made trainable.
    """
    import keras

    backbone.trainable = True
    cut = max(0, len(backbone.layers) - count)
    unfrozen = 0
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += int(layer.trainable and bool(layer.weights))
    return unfrozen


def _save_optimizer(optimizer, path: str) -> None:
    np.savez(path, *[np.asarray(variable.numpy()) for variable in optimizer.variables])


def _restore_optimizer(model, path: str) -> bool:
    """Load saved optimizer variables (moments, iterations, learning rate); False if they do not fit."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = list(optimizer.variables)
    if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values, strict=False)):
        logger.warning("checkpoint optimizer state does not fit this optimizer; starting it afresh")
        return False
    for variable, value in zip(variables, values, strict=False):
        variable.assign(value)
    return True


def _reduce_lr_callback(training: TrainingConfig, restored: dict[str, Any]):
    import keras

    class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for name in ("wait", "cooldown_counter", "best"):
                if name in restored:
                    setattr(self, name, restored[name])

        def snapshot(self) -> dict[str, Any]:
            best = None if self.best is None else float(self.best)
            return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter), "best": best}

    return ResumableReduceLROnPlateau(
        monitor=training.monitor,
        mode=MONITOR_MODES[training.monitor],
        factor=training.reduce_lr_factor,
        patience=training.reduce_lr_patience,
        min_lr=training.min_learning_rate,
        verbose=1,
    )


def reseed_epoch(model, seed: int, epoch: int) -> None:
    """Make an epoch's randomness a function of (seed, epoch): the model's generators and the global ones.

    Sets the state of every Keras SeedGenerator in the model (Dropout's and any other
    random layer's; they advance at every training step and are not in the saved
    weights) to [a seed drawn from (seed, epoch, its index), 0], and seeds Python's and
    NumPy's global generators with epoch_seed(seed, epoch). A run resumed at `epoch`
    thus draws the dropout masks the uninterrupted run drew.

    TensorFlow's global seed is left alone: setting it clears TensorFlow's kernel cache,
    so every epoch would re-instantiate the traced train step (measured: +2.5 to 3.5 s
    per epoch for a MobileNet on CPU). Nothing in training draws from it: the models'
    random layers have their own generators, and the input pipelines draw with numpy
    from epoch_seed.

    Args:
        model: the Keras model being trained.
        seed: the run's seed.
        epoch: 0-based global epoch about to start.
    """
    import random

    states = [variable for variable in model.variables if variable.name == "seed_generator_state"]
    for index, state in enumerate(states):
        layer_seed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0] & 0x7FFFFFFF)
        state.assign(np.array([layer_seed, 0], dtype=state.dtype))
    random.seed(epoch_seed(seed, epoch))
    np.random.seed(epoch_seed(seed, epoch))


def _epoch_start_callback(seed: int, clock: EpochClock):
    """Sets `clock` (the training set's epoch) and reseeds (reseed_epoch) at each epoch's start."""
    import keras

    class EpochStart(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            clock.epoch = epoch
            reseed_epoch(self.model, seed, epoch)

    return EpochStart()


def _validation_scores_callback(val_data, val_labels: np.ndarray, num_classes: int, timings: dict[str, float]):
    """Adds validation_scores to each epoch's logs, from one batched prediction of `val_data`.

    It must come first among fit's callbacks: the later ones (ReduceLROnPlateau, the phase
    callback, MLflow logging, Keras' progress line) read the same logs dict. Adds its own
    time to timings["monitor_seconds"].
    """
    import keras

    from components.backbones import probabilities

    class ValidationScores(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            started = time.perf_counter()
            if len(val_labels):
                output = self.model.predict(val_data, verbose=0)  # (x, y) batches; y is ignored
                scores = validation_scores(val_labels, probabilities(output, num_classes))
            else:
                scores = validation_scores(val_labels, np.zeros((0, num_classes)))
            if logs is not None:
                logs.update(scores)
            timings["monitor_seconds"] = timings.get("monitor_seconds", 0.0) + time.perf_counter() - started

    return ValidationScores()


def _phase_callback(
    state: TrainingState,
    patience: int,
    folder: CheckpointFolder | None,
    scratch: str,
    best_weights,
    reduce_lr,
    timings: dict[str, float],
):
    """EarlyStopping on state.monitor that lives in `state`, plus a checkpoint after every epoch.

    Adds its own time to timings["checkpoint_seconds"].
    """
    import keras

    class PhaseCallback(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_weights = best_weights

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            started = time.perf_counter()
            self._end_epoch(logs)
            timings["checkpoint_seconds"] = timings.get("checkpoint_seconds", 0.0) + time.perf_counter() - started

        def _end_epoch(self, logs: dict[str, Any] | None) -> None:
            logs = dict(logs or {})
            improved = state.is_improvement(logs.get(state.monitor))
            state.record_epoch(logs, improved)
            files: dict[str, str] = {}
            if improved:
                self.best_weights = self.model.get_weights()
            if state.wait >= patience:
                self.model.stop_training = True
            state.reduce_lr = reduce_lr.snapshot() if reduce_lr is not None else {}
            if folder is not None:
                state.weights, state.optimizer = weights_file(state.epoch), optimizer_file(state.epoch)
                if improved:  # this epoch's weights are the best so far: one file, referenced twice
                    state.best_weights = state.weights
                files[state.weights] = os.path.join(scratch, state.weights)
                files[state.optimizer] = os.path.join(scratch, state.optimizer)
                self.model.save_weights(files[state.weights])
                _save_optimizer(self.model.optimizer, files[state.optimizer])
                folder.save(state, files)
                for local in files.values():
                    os.remove(local)

    return PhaseCallback()


def _run_phase(
    model,
    state: TrainingState,
    *,
    train_data,
    val_data,
    val_labels: np.ndarray,
    num_classes: int,
    class_weight,
    end_epoch: int,
    training: TrainingConfig,
    folder: CheckpointFolder | None,
    scratch: str,
    best_weights,
    callbacks: list,
    verbose: int,
    timings: dict[str, float] | None = None,
):
    """Fit from state.epoch to end_epoch (global numbering); leaves the best weights in the model.

    EarlyStopping waits `training.patience` epochs without an improvement of
    `training.monitor`; ReduceLROnPlateau (on the same monitor) runs when
    `training.reduce_lr_patience` is set (with a constant learning rate). The
    balanced metrics are computed at each epoch end (validation_scores) when
    the monitor is one of them.
    Returns the best weights seen so far (kept in memory for the next phase).
    """
    patience = training.patience
    reduce_lr = None
    if training.reduce_lr_patience and training.lr_schedule == "constant":
        reduce_lr = _reduce_lr_callback(training, state.reduce_lr)
    timings = timings if timings is not None else {}
    scores = []
    if training.monitor in BALANCED_MONITORS:
        scores = [_validation_scores_callback(val_data, val_labels, num_classes, timings)]
    phase_callback = _phase_callback(state, patience, folder, scratch, best_weights, reduce_lr, timings)
    if state.epoch < end_epoch and state.wait < patience:
        model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=state.epoch,
            epochs=end_epoch,
            class_weight=class_weight,
            callbacks=[*scores, *([reduce_lr] if reduce_lr else []), phase_callback, *callbacks],
            verbose=verbose,
        )
    if phase_callback.best_weights is not None:
        model.set_weights(phase_callback.best_weights)
    return phase_callback.best_weights


def _summary(state: TrainingState, seconds: float, epochs_this_run: int, train_images: int) -> dict[str, Any]:
    best_epoch = state.best_epoch or 0
    val_losses = state.history.get("val_loss", [])
    return {
        "history": {key: [float(v) for v in values] for key, values in state.history.items()},
        "epochs_run": state.epoch,
        "best_epoch": best_epoch,
        "monitor": state.monitor,
        "best_monitor_value": float(state.best_value) if state.best_value is not None else float("nan"),
        # val_loss of the chosen epoch (the lowest one when the monitor is val_loss)
        "best_val_loss": float(val_losses[best_epoch - 1]) if 0 < best_epoch <= len(val_losses) else float("nan"),
        "seconds": seconds,
        "images_per_second": epochs_this_run * train_images / seconds if seconds else 0.0,
    }


def train_classifier(
    build_model: Callable[[], Any],
    train: tuple[np.ndarray, np.ndarray] | TrainingData,
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    training: TrainingConfig,
    seed: int,
    checkpoint_dir: str | None = None,
    checkpoint_key: str = "",
    filesystem: Any = None,
    callbacks: list | None = None,
    num_gpus: int | None = None,
    verbose: int = KERAS_VERBOSE,
    run_eagerly: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Seed, build the model for the visible devices, train it in one or two phases.

    Phase 1 fits for up to `training.epochs` (backbone frozen when pretrained);
    phase 2, when `training.fine_tune_layers` > 0 and the backbone is
    pretrained, unfreezes its top layers and fits for up to
    `training.fine_tune_epochs` more at `training.fine_tune_learning_rate`,
    epochs numbered on from phase 1. Early stopping and the best epoch follow
    `training.monitor` (a balanced validation metric, higher is better, or
    val_loss, lower is better); the best carries over, so phase 2 keeps phase
    1's weights unless it beats them on that metric. This is what the
    pipeline's train steps run.

    Args:
        build_model: Returns a build_classifier model; called after seeding,
            under the dtype policy and the distribution strategy.
        train: uint8 (N, S, S) grayscale images and int (N,) class indices, or any
            TrainingData (shards, on-the-fly augmentation) at the model's size S.
        val: Validation images and labels, as `train`'s arrays.
        num_classes: Number of classes (2: one sigmoid output, else softmax).
        training: The run config's training settings (all defaults live there).
        seed: Seeds Python, NumPy and the backend (weight init, dropout, shuffling).
        checkpoint_dir: With a folder, every epoch is checkpointed there and a call
            with the same folder and `checkpoint_key` resumes after the last
            completed epoch. The caller removes the folder when done with it.
        checkpoint_key: Identifies the training a checkpoint belongs to (the
            pipeline's hashes the training config, monitor included).
        filesystem: zenml.io.fileio's interface for `checkpoint_dir`; local by default.
        callbacks: Extra Keras callbacks (e.g. per-epoch MLflow logging).
        num_gpus: GPUs to plan for; None counts the visible ones.
        verbose: Keras fit verbosity (2: one line per epoch).
        run_eagerly: Skip graph tracing (debugging; tiny test models, where
            tracing costs more than the steps).

    Returns:
        The trained model (best weights restored) and a summary dict for logging:
        history (per-epoch Keras logs, plus val_f1_macro, val_balanced_accuracy
        and val_roc_auc when the monitor is one of them), epochs_run, best_epoch
        (1-based), monitor, best_monitor_value, best_val_loss (val_loss at
        best_epoch), seconds (wall clock of this call), images_per_second,
        phase1_epochs, phase2_epochs, fine_tuned_layers, pretrained,
        resumed_from_epoch, checkpoint_seconds, monitor_seconds (the balanced
        metrics' share of the epochs), seed and device (DevicePlan fields).

    Raises:
        ValueError: The monitor cannot be measured on `val` (check_monitor), or the
            checkpoint found under `checkpoint_key` chose its best epoch on another monitor.
    """
    import keras

    check_monitor(training.monitor, val[1], num_classes)
    plan = device_plan(visible_gpus() if num_gpus is None else num_gpus, training.batch_size)
    train = as_training_data(train)
    keras.utils.set_random_seed(seed)  # Python, NumPy and backend RNGs: weight init, dropout
    folder = CheckpointFolder(checkpoint_dir, filesystem) if checkpoint_dir else None
    state = folder.load(checkpoint_key) if folder is not None else None
    resumed_from = state.epoch if state is not None else 0
    if state is None:
        state = TrainingState(key=checkpoint_key, monitor=training.monitor, mode=MONITOR_MODES[training.monitor])
    elif state.monitor != training.monitor:
        raise ValueError(
            f"the checkpoint in {checkpoint_dir} (key {checkpoint_key}) chose its best epoch on {state.monitor}; "
            f"this training monitors {training.monitor}: use another checkpoint key or remove the folder"
        )
    else:
        logger.info(
            "resuming training from checkpoint %s after epoch %d (phase %d)", checkpoint_dir, state.epoch, state.phase
        )
    batch = plan.global_batch_size
    steps_per_epoch = -(-train.count // batch)
    timings = {"checkpoint_seconds": 0.0, "monitor_seconds": 0.0}
    started = time.perf_counter()
    with device_scope(plan), tempfile.TemporaryDirectory() as scratch:
        model = build_model()
        backbone = find_backbone(model)
        pretrained = backbone is not None and not backbone.trainable
        fine_tune = pretrained and training.fine_tune_layers > 0 and training.fine_tune_epochs > 0
        # Each epoch's order, draws and dropout masks follow (seed, epoch), so a resumed run
        # repeats the uninterrupted one: the clock tells the training set the epoch Keras is in.
        clock = EpochClock(state.epoch)
        train_data = train.dataset(batch, shuffle_seed=seed, first_epoch=clock)
        val_data = make_dataset(*val, batch)
        common = {
            "train_data": train_data,
            "val_data": val_data,
            "val_labels": np.asarray(val[1]),
            "num_classes": num_classes,
            "class_weight": class_weights_from_counts(train.label_counts(num_classes)),
            "training": training,
            "folder": folder,
            "scratch": scratch,
            "callbacks": [_epoch_start_callback(seed, clock), *(callbacks or [])],
            "verbose": verbose,
            "timings": timings,
        }

        best_weights = None
        if state.best_weights and folder is not None:
            model.load_weights(folder.fetch(state.best_weights, scratch))
            best_weights = model.get_weights()
        if state.weights and folder is not None:
            model.load_weights(folder.fetch(state.weights, scratch))

        if state.phase == 1:
            compile_classifier(
                model,
                num_classes,
                learning_rate_schedule(training.learning_rate, training.lr_schedule, training.epochs * steps_per_epoch),
                run_eagerly,
            )
            if state.optimizer and folder is not None:
                _restore_optimizer(model, folder.fetch(state.optimizer, scratch))
            best_weights = _run_phase(model, state, end_epoch=training.epochs, best_weights=best_weights, **common)
            if fine_tune:
                state.finish_phase1()
                if folder is not None:  # phase 2 starts from phase 1's best weights
                    state.weights = weights_file(state.epoch)
                    local = os.path.join(scratch, state.weights)
                    model.save_weights(local)
                    folder.save(state, {state.weights: local})
        unfrozen = 0
        if fine_tune:
            unfrozen = unfreeze_top_layers(backbone, training.fine_tune_layers)
            logger.info(
                "phase 2: fine-tuning the top %d layers of %s (%d trainable, BatchNorm frozen) at lr %g",
                training.fine_tune_layers,
                backbone.name,
                unfrozen,
                training.fine_tune_learning_rate,
            )
            compile_classifier(
                model,
                num_classes,
                learning_rate_schedule(
                    training.fine_tune_learning_rate,
                    training.lr_schedule,
                    training.fine_tune_epochs * steps_per_epoch,
                ),
                run_eagerly,
            )
            if state.optimizer and folder is not None:
                _restore_optimizer(model, folder.fetch(state.optimizer, scratch))
            _run_phase(
                model,
                state,
                end_epoch=state.phase_start + training.fine_tune_epochs,
                best_weights=best_weights,
                **common,
            )
    seconds = time.perf_counter() - started
    phase1_epochs = state.phase1_epochs if state.phase1_epochs is not None else state.epoch
    summary = {
        **_summary(state, seconds, state.epoch - resumed_from, train.count),
        "phase1_epochs": phase1_epochs,
        "phase2_epochs": state.epoch - phase1_epochs,
        "fine_tuned_layers": unfrozen,
        "pretrained": pretrained,
        "resumed_from_epoch": resumed_from,
        "checkpoint_seconds": timings["checkpoint_seconds"],  # early stopping + checkpoint saving, all epochs
        "monitor_seconds": timings["monitor_seconds"],  # predicting val and scoring it, all epochs
        "seed": seed,
        "device": asdict(plan),
    }
    return model, summary


def predict_probabilities(model, grays: np.ndarray, num_classes: int, batch_size: int = 32) -> np.ndarray:
    """Predict class probabilities.

    Args:
        model: A build_classifier model.
        grays: uint8 (N, S, S) grayscale images already at the model's size S.
        num_classes: Number of classes (2: the sigmoid output becomes two columns).
        batch_size: Images per prediction batch.

    Returns:
        float (N, num_classes) probabilities, rows summing to 1; (0, num_classes) for no images.
    """
    from components.backbones import probabilities

    if len(grays) == 0:
        return np.zeros((0, num_classes))
    output = model.predict(make_dataset(grays, None, batch_size), verbose=0)
    return probabilities(output, num_classes)


class TrainingSummary(BaseModel):
    """What one train step did (the ZenML artifact `training_summary`).

    ``history`` holds every epoch's Keras logs (loss, val_loss, ...) and the
    balanced validation metrics (val_f1_macro, ...) in order; ``best_epoch`` is
    1-based, the epoch with the best ``monitor`` (``best_monitor_value``; its
    val_loss is ``best_val_loss``); seconds are wall-clock seconds of this run
    (a resumed run counts only its own epochs in ``images_per_second``).
    ``device`` is the DevicePlan (strategy, replicas, precision).
    """

    backbone: BackboneConfig
    training_data: str  # ArrayData, ShardSet or OnTheFlyData
    train_images: int
    mlflow_logging_seconds: float
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    # Defaults: what a summary stored before the monitor existed meant (it chose on val_loss).
    monitor: str = "val_loss"
    best_monitor_value: float = float("nan")
    best_val_loss: float
    seconds: float
    images_per_second: float
    phase1_epochs: int
    phase2_epochs: int
    fine_tuned_layers: int
    pretrained: bool
    resumed_from_epoch: int
    checkpoint_seconds: float
    monitor_seconds: float = 0.0
    seed: int
    device: dict[str, str | int | bool | None]
