"""Out-of-distribution (OOD) score: how far an image's embedding lies from the training images'.

A classifier answers a distribution for any input: a 1x1 PNG or uniform noise gets some class at
0.9999. The served model therefore also answers ``ood_score``, the Mahalanobis distance of the
image's penultimate-layer embedding (the head's Dense(128) before Dropout,
components.backbones.build_classifier) to the nearest class mean of the training images'
embeddings, under one covariance shared by the classes, and ``ood``, whether that score is above
a threshold.

Method: Lee, Lee, Lee and Shin (2018), "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018, arXiv:1807.03888), section 2:
class means mu_c and a class-shared ("tied") covariance Sigma of the embeddings, score
M(x) = min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c). Here the score is its square root (a distance
in units of standard deviations), and Sigma is the Ledoit-Wolf shrinkage estimate
(Ledoit and Wolf 2004, "A well-conditioned estimator for large-dimensional covariance matrices";
sklearn.covariance.LedoitWolf) of the within-class residuals, so that it stays invertible with
fewer images than embedding units. Lee et al.'s input pre-processing and feature ensemble are not
used (one layer, no gradient step).

The threshold is a high percentile (``percentile``, default 99: RegistryConfig.ood_percentile) of
in-distribution images' own scores: the validation images' when given, else the training images'
(these sit slightly closer to the means they made, so on new in-distribution images somewhat more
than 1 - percentile/100 are flagged).

Scoring needs numpy only (the served model imports this module); fitting imports scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.errors import CxrError

# The artifact of a registered version's run (next to evaluation/evidence.json) and of the pyfunc.
OOD_ARTIFACT = "evaluation/ood_reference.json"
OOD_PYFUNC_ARTIFACT = "ood_reference"
OOD_SCORE_COLUMN = "ood_score"
OOD_FLAG_COLUMN = "ood"
# Name of the served model's output layer (components.backbones.build_classifier).
PROBABILITY_LAYER = "probability"
DEFAULT_PERCENTILE = 99.0


class OodReferenceError(CxrError, ValueError):
    """An OOD reference cannot be fitted or used (too few images, shapes that do not match)."""


class OodReference(BaseModel):
    """What the served model needs to score an embedding (JSON artifact ``ood_reference``).

    Attributes:
        layer: name of the Keras layer whose output is the embedding (the head's Dense).
        class_names: the classes in the order of ``means``.
        means: (C, D) float class means of the training embeddings (a class without training
            images is left out, with its name).
        precision: (D, D) float inverse of the class-shared Ledoit-Wolf covariance.
        shrinkage: the Ledoit-Wolf shrinkage coefficient in [0, 1].
        percentile: the percentile of the in-distribution scores taken as ``threshold``.
        threshold: scores above it are flagged (``ood`` true); a Mahalanobis distance (unitless).
        calibration: "val" or "train": whose scores set the threshold.
        fit_images: training images the means and covariance come from.
        calibration_images: images whose scores set the threshold.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: str
    class_names: list[str] = Field(..., min_length=1)
    means: list[list[float]]
    precision: list[list[float]]
    shrinkage: float = Field(..., ge=0, le=1)
    percentile: float = Field(..., gt=0, lt=100)
    threshold: float = Field(..., ge=0)
    calibration: str
    fit_images: int = Field(..., ge=2)
    calibration_images: int = Field(..., ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> OodReference:
        if len(self.means) != len(self.class_names):
            raise ValueError(f"{len(self.means)} class means for {len(self.class_names)} class_names")
        dims = {len(row) for row in self.means} | {len(self.precision)} | {len(row) for row in self.precision}
        if len(dims) != 1:
            raise ValueError(f"means and precision must share one embedding size, got sizes {sorted(dims)}")
        return self

    @property
    def dimension(self) -> int:
        """D, the embedding size."""
        return len(self.precision)

    def score(self, embeddings: Any) -> np.ndarray:
        """The OOD score of each embedding (see ``mahalanobis_scores``)."""
        return mahalanobis_scores(embeddings, np.asarray(self.means), np.asarray(self.precision))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are above the threshold: bool (N,)."""
        return np.asarray(scores) > self.threshold


def mahalanobis_scores(embeddings: Any, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each embedding to its nearest class mean (Lee et al. 2018, eq. 2, square-rooted).

    Args:
        embeddings: float (N, D) embeddings.
        means: float (C, D) class means.
        precision: float (D, D) inverse of the class-shared covariance.

    Returns:
        float64 (N,) distances, >= 0 (unitless: standard deviations along the covariance's axes).

    Raises:
        OodReferenceError: the embeddings are not (N, D) with the reference's D, or not finite.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != precision.shape[0]:
        raise OodReferenceError(f"embeddings must be (N, {precision.shape[0]}), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise OodReferenceError("embeddings hold NaN or infinite values")
    diff = x[:, None, :] - np.asarray(means, dtype=np.float64)[None, :, :]  # (N, C, D)
    squared = np.einsum("ncd,de,nce->nc", diff, np.asarray(precision, dtype=np.float64), diff)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def fit_reference(
    embeddings: Any,
    labels: Any,
    class_names: list[str],
    layer: str,
    percentile: float = DEFAULT_PERCENTILE,
    calibration_embeddings: Any = None,
) -> OodReference:
    """Fit the class means, the class-shared Ledoit-Wolf covariance and the threshold.

    Args:
        embeddings: float (N, D) training embeddings, N >= 2.
        labels: int (N,) class indices into `class_names`.
        class_names: the task's classes (C).
        layer: the embedding layer's name, stored for the served model.
        percentile: in (0, 100); the threshold is this percentile of the calibration scores.
        calibration_embeddings: float (M, D) held-out in-distribution embeddings (validation);
            None or M == 0: the training embeddings' own scores set the threshold.

    Returns:
        The OodReference.

    Raises:
        OodReferenceError: fewer than 2 embeddings, labels that do not match, or bad shapes.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) < 2:
        raise OodReferenceError(f"need (N >= 2, D) training embeddings, got shape {x.shape}")
    if y.shape != (len(x),):
        raise OodReferenceError(f"need one label per embedding: {len(x)} embeddings, labels of shape {y.shape}")
    if not np.isfinite(x).all():
        raise OodReferenceError("training embeddings hold NaN or infinite values")
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise OodReferenceError(f"labels must be class indices 0..{len(class_names) - 1}")
    present = [index for index in range(len(class_names)) if (y == index).any()]
    means = np.stack([x[y == index].mean(axis=0) for index in present])
    residuals = x - means[np.searchsorted(present, y)]
    estimator = LedoitWolf(assume_centered=True).fit(residuals)
    precision = np.asarray(estimator.precision_, dtype=np.float64)
    held_out = None if calibration_embeddings is None else np.asarray(calibration_embeddings, dtype=np.float64)
    use_val = held_out is not None and len(held_out) > 0
    calibration = held_out if use_val else x
    scores = mahalanobis_scores(calibration, means, precision)
    return OodReference(
        layer=layer,
        class_names=[class_names[index] for index in present],
        means=means.tolist(),
        precision=precision.tolist(),
        shrinkage=float(estimator.shrinkage_),
        percentile=percentile,
        threshold=float(np.percentile(scores, percentile)),
        calibration="val" if use_val else "train",
        fit_images=len(x),
        calibration_images=len(calibration),
    )


def embedding_layer(model: Any) -> str:
    """The name of a classifier's embedding layer: the input of its last Dropout (the head's Dense).

    Args:
        model: a Keras functional classifier (components.backbones.build_classifier).

    Returns:
        The layer's name (build_classifier's Dense(dense_units), before Dropout).

    Raises:
        OodReferenceError: the model has no Dropout, or its input is not one layer's output.
    """
    import keras

    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    if not dropouts:
        raise OodReferenceError(f"model {model.name!r} has no Dropout layer: cannot find the head's embedding")
    source = dropouts[-1].input
    history = getattr(source, "_keras_history", None)
    if history is None:
        raise OodReferenceError(f"the input of {dropouts[-1].name!r} is not a layer's output")
    return history[0].name


def with_embedding(model: Any, layer: str) -> Any:
    """A Keras model with two outputs: [the classifier's output, float (N, D) layer output].

    Args:
        model: the classifier.
        layer: the embedding layer's name.

    Returns:
        keras.Model from the classifier's inputs to [its output, the layer's output]; one forward pass
        gives both.
    """
    import keras

    return keras.Model(model.inputs, [model.outputs[0], model.get_layer(layer).output])


def embed_images(model: Any, layer: str, grays: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Embeddings of grayscale images (components.imaging.load_images) through the classifier.

    Args:
        model: the classifier.
        layer: the embedding layer's name.
        grays: uint8 (N, S, S) images at the model's input side S.
        batch_size: images per forward pass.

    Returns:
        float32 (N, D) embeddings.
    """
    import keras

    embedder = keras.Model(model.inputs, model.get_layer(layer).output)
    dimension = int(embedder.outputs[0].shape[-1])
    if len(grays) == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    outputs = []
    for start in range(0, len(grays), batch_size):
        chunk = np.repeat(np.asarray(grays[start : start + batch_size], dtype=np.float32)[..., None], 3, axis=3)
        outputs.append(np.asarray(embedder.predict_on_batch(chunk), dtype=np.float32))
    return np.concatenate(outputs)


# At most this many training (and validation) images are embedded at registration, a seeded sample of them.
MAX_REFERENCE_IMAGES = 4000


def _sample(rows: Any, seed: int, limit: int) -> Any:
    return rows if len(rows) <= limit else rows.sample(n=limit, random_state=seed).sort_index()


def reference_for_rows(
    model: Any,
    train_rows: Any,
    val_rows: Any,
    class_names: list[str],
    image_size: int,
    percentile: float = DEFAULT_PERCENTILE,
    seed: int = 0,
    max_images: int = MAX_REFERENCE_IMAGES,
) -> OodReference:
    """Fit a classifier's OOD reference on its training rows, its threshold on its validation rows.

    Images go through the same preprocessing as evaluation (components.imaging.load_images).

    Args:
        model: the trained classifier (components.backbones.build_classifier).
        train_rows: manifest rows of the training split (``uri``, ``label``).
        val_rows: manifest rows of the validation split; empty: the training scores set the threshold.
        class_names: the task's classes, in the model's output order.
        image_size: the model's input side in pixels.
        percentile: the threshold's percentile, in (0, 100).
        seed: seed of the sample when a split has more than `max_images` rows.
        max_images: rows embedded per split at most.

    Returns:
        The OodReference.

    Raises:
        OodReferenceError: fewer than 2 training rows, or a label not in `class_names`.
        MissingFileError, StorageError, ImageDecodeError: an image cannot be read (load_images).
    """
    from components.imaging import load_images

    train_rows = _sample(train_rows, seed, max_images)
    val_rows = _sample(val_rows, seed, max_images)
    unknown = sorted(set(train_rows["label"]) - set(class_names))
    if unknown:
        raise OodReferenceError(f"training rows have labels outside the classes {class_names}: {unknown}")
    layer = embedding_layer(model)
    labels = np.array([class_names.index(label) for label in train_rows["label"]], dtype=np.int64)
    train = embed_images(model, layer, load_images(train_rows["uri"].tolist(), image_size))
    val = embed_images(model, layer, load_images(val_rows["uri"].tolist(), image_size)) if len(val_rows) else None
    return fit_reference(train, labels, class_names, layer, percentile, calibration_embeddings=val)
