"""Keras training and prediction on uint8 grayscale arrays.

Images travel as uint8 (N, S, S) grayscale (a third of the memory of float32
and a twelfth of float32 RGB); a tf.data map turns each batch into the float32
(S, S, 3) raw pixels that models take.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from components.imaging import load_images, resize_grayscale


def resize_stack(grays: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, size, size) with the shared (PIL bilinear) resize."""
    if grays.shape[1:] == (size, size):
        return grays
    return np.stack([resize_grayscale(gray, size) for gray in grays]) if len(grays) else np.zeros((0, size, size), np.uint8)


def split_arrays(split_manifest, split: str, class_names: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, size, size) images and integer labels (index in class_names) of one split."""
    rows = split_manifest[split_manifest["split"] == split]
    labels = rows["label"].map(list(class_names).index).to_numpy(dtype=np.int64)
    return load_images(rows["uri"].tolist(), size), labels


def make_dataset(grays: np.ndarray, labels: np.ndarray | None, batch_size: int, shuffle_seed: int | None = None):
    """tf.data pipeline: uint8 gray -> float32 3-channel raw pixels, batched and prefetched."""
    import tensorflow as tf

    def to_model_input(gray, *rest):
        image = tf.repeat(tf.cast(gray[..., None], tf.float32), 3, axis=-1)
        return (image, *rest)

    tensors = (grays,) if labels is None else (grays, labels)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(grays), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (k * count_c): rare classes weigh more; absent classes get weight 1."""
    counts = np.bincount(labels, minlength=num_classes)
    total = counts.sum()
    return {c: float(total / (num_classes * counts[c])) if counts[c] else 1.0 for c in range(num_classes)}


def learning_rate_schedule(learning_rate: float, schedule: str, total_steps: int):
    import keras

    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}; valid: constant, cosine")


def compile_classifier(model, num_classes: int, learning_rate) -> None:
    import keras

    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def fit_classifier(
    model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    seed: int,
    lr_schedule: str = "constant",
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Compile and fit with EarlyStopping on val_loss (best weights restored).

    Returns the per-epoch history plus timing, for logging.
    """
    import keras

    keras.utils.set_random_seed(seed)
    steps_per_epoch = -(-len(train[0]) // batch_size)
    compile_classifier(model, num_classes, learning_rate_schedule(learning_rate, lr_schedule, epochs * steps_per_epoch))
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    started = time.perf_counter()
    history = model.fit(
        make_dataset(*train, batch_size, shuffle_seed=seed),
        validation_data=make_dataset(*val, batch_size),
        epochs=epochs,
        class_weight=balanced_class_weights(train[1], num_classes),
        callbacks=[early_stopping, *(callbacks or [])],
        verbose=2,
    )
    seconds = time.perf_counter() - started
    epochs_run = len(history.history["loss"])
    val_losses = history.history["val_loss"]
    return {
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epochs_run": epochs_run,
        "best_epoch": int(np.argmin(val_losses)) + 1,
        "best_val_loss": float(np.min(val_losses)),
        "seconds": seconds,
        "images_per_second": epochs_run * len(train[0]) / seconds if seconds else 0.0,
    }


def predict_probabilities(model, grays: np.ndarray, num_classes: int, batch_size: int = 32) -> np.ndarray:
    """(N, num_classes) probabilities for uint8 grayscale images already at the model's size."""
    from components.backbones import probabilities

    if len(grays) == 0:
        return np.zeros((0, num_classes))
    output = model.predict(make_dataset(grays, None, batch_size), verbose=0)
    return probabilities(output, num_classes)
