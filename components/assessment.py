"""One evaluated split: what the model said (`Predictions`), its metrics with CIs, and its slices (`Assessment`).

`assess` computes the point metrics at the model's decision (components.metrics), a
confidence interval for every flat metric from the stratified patient-level bootstrap
(components.bootstrap), and the same for each slice of the split by source, age group
and view. A slice smaller than ``min_slice_size`` images is kept and marked ``small``
(shown, not hidden; no gate criterion applies to it). An empty slice value (age or view
unknown) is shown as ``"unknown"``.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from components.bootstrap import bootstrap_weights, metric_intervals
from components.config import EvaluationConfig
from components.errors import CxrError
from components.metrics import Decision, Interval, SplitMetrics, classification_metrics

__all__ = [
    "ROW_FIELDS",
    "SLICE_FIELDS",
    "UNKNOWN",
    "Assessment",
    "Predictions",
    "PredictionsMismatchError",
    "SliceResult",
    "assess",
    "slice_seed",
]

UNKNOWN = "unknown"  # how an empty slice value is shown
# Slice column (EvaluationConfig.slices) -> the Predictions field holding its value per image.
SLICE_FIELDS = {"source": "sources", "age_group": "age_groups", "sex": "sexes", "view": "views"}
# The per-image fields of Predictions besides the probabilities, in order.
ROW_FIELDS = ("keys", "uris", "patient_ids", "sources", "age_groups", "sexes", "views", "y_true")


class PredictionsMismatchError(CxrError, ValueError):
    """Two models' predictions cannot be paired: different classes, images or labels (the message names them)."""


class Predictions(BaseModel):
    """What a model said about one split, one row per image; a JSON-able artifact.

    Every list has one entry per image, in the same order. ``keys`` are the images'
    sha256 (they join a candidate's and a champion's predictions of the same images).
    ``age_groups``, ``sexes`` and ``views`` hold ``""`` where unknown (predictions stored before
    ``sexes`` existed load with every sex unknown).
    """

    model_config = ConfigDict(frozen=True)

    split: str  # "val", "test", "external:<source>"
    class_names: list[str]
    keys: list[str]
    uris: list[str]
    patient_ids: list[str]
    sources: list[str]
    age_groups: list[str]
    sexes: list[str] = []  # M, F or ""
    views: list[str]
    y_true: list[int]
    probabilities: list[list[float]]  # (N, C)

    @model_validator(mode="before")
    @classmethod
    def _unknown_sexes(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("sexes") and data.get("keys") is not None:
            data = {**data, "sexes": [""] * len(data["keys"])}
        return data

    @model_validator(mode="after")
    def _rows_agree(self) -> Predictions:
        n_images = len(self.keys)
        for field in (*ROW_FIELDS[1:], "probabilities"):
            if len(getattr(self, field)) != n_images:
                raise ValueError(
                    f"predictions of split {self.split!r}: {field} has {len(getattr(self, field))} entries "
                    f"for {n_images} keys"
                )
        n_classes = len(self.class_names)
        for row, probabilities in enumerate(self.probabilities):
            if len(probabilities) != n_classes:
                raise ValueError(
                    f"predictions of split {self.split!r}: image {row} ({self.uris[row]}) has {len(probabilities)} "
                    f"probabilities for {n_classes} classes {self.class_names}"
                )
        for row, label in enumerate(self.y_true):
            if not 0 <= label < n_classes:
                raise ValueError(
                    f"predictions of split {self.split!r}: image {row} ({self.uris[row]}) has label index {label}, "
                    f"not one of 0..{n_classes - 1} ({self.class_names})"
                )
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The labels and probabilities as arrays.

        Returns:
            (y_true (N,) int64 class indices, probabilities (N, C) float64).
        """
        n_classes = len(self.class_names)
        return (
            np.asarray(self.y_true, dtype=np.int64),
            np.asarray(self.probabilities, dtype=float).reshape(len(self.keys), n_classes),
        )

    def aligned(self, other: Predictions) -> Predictions:
        """Another model's predictions of the same images, reordered to this one's rows (to pair them).

        Args:
            other: predictions of the same images by another model (e.g. the champion); it may
                hold more images, which are dropped.

        Returns:
            `other`'s rows in the order of ``self.keys`` (its split name and probabilities).

        Raises:
            PredictionsMismatchError: other classes, images of `self` missing from `other`
                (the message counts them and names a few), or an image labelled differently.
        """
        if other.class_names != self.class_names:
            raise PredictionsMismatchError(
                f"cannot pair split {self.split!r} (classes {self.class_names}) with {other.split!r} "
                f"(classes {other.class_names})"
            )
        position: dict[str, int] = {}
        for row, key in enumerate(other.keys):
            position.setdefault(key, row)
        missing = [key for key in self.keys if key not in position]
        if missing:
            raise PredictionsMismatchError(
                f"cannot pair split {self.split!r} with {other.split!r}: {len(missing)} of {len(self.keys)} images "
                f"have no prediction there, e.g. sha256 {', '.join(missing[:3])}"
            )
        rows = [position[key] for key in self.keys]
        for mine, row in enumerate(rows):
            if other.y_true[row] != self.y_true[mine]:
                raise PredictionsMismatchError(
                    f"cannot pair split {self.split!r} with {other.split!r}: image sha256 {self.keys[mine]} "
                    f"({self.uris[mine]}) is {self.class_names[self.y_true[mine]]} in one and "
                    f"{self.class_names[other.y_true[row]]} in the other"
                )
        return Predictions(
            split=other.split,
            class_names=list(other.class_names),
            **{field: [getattr(other, field)[row] for row in rows] for field in (*ROW_FIELDS, "probabilities")},
        )

    def subset(self, rows: np.ndarray | list[int]) -> Predictions:
        """The predictions of some images only (a slice), same split name.

        Args:
            rows: int indices of the images to keep, in the order to keep them.

        Returns:
            A Predictions holding those rows.
        """
        indices = [int(row) for row in rows]
        return Predictions(
            split=self.split,
            class_names=list(self.class_names),
            **{field: [getattr(self, field)[row] for row in indices] for field in ROW_FIELDS},
            probabilities=[self.probabilities[row] for row in indices],
        )


class SliceResult(BaseModel):
    """One slice of a split (all images with one value of a column), with its metrics and CIs."""

    model_config = ConfigDict(frozen=True)

    column: str  # source | age_group | sex | view
    value: str  # an empty value is shown as "unknown"
    n_images: int
    n_patients: int
    small: bool  # n_images < min_slice_size: shown and marked; no gate criterion applies
    metrics: SplitMetrics
    intervals: dict[str, Interval]


class Assessment(BaseModel):
    """One split evaluated: point metrics, a CI for every flat metric, and the slices.

    The split's resamples are ``bootstrap_weights(patient_ids, y_true, n_resamples, seed)``
    (components.bootstrap); each slice resamples its own patients with a seed derived from
    ``seed`` and the slice, with the same number of resamples.
    """

    model_config = ConfigDict(frozen=True)

    split: str
    metrics: SplitMetrics
    intervals: dict[str, Interval]  # every key of components.metrics.metric_keys
    confidence_level: float
    n_resamples: int
    seed: int
    slices: list[SliceResult]


def slice_seed(seed: int, column: str, value: str) -> int:
    """The bootstrap seed of one slice: fixed by the run's seed and the slice, whatever the other slices are.

    Args:
        seed: the assessment's seed.
        column: the slice column (source, age_group, view).
        value: the slice value as shown ("unknown" for an empty one).

    Returns:
        A non-negative int seed.
    """
    entropy = [seed, zlib.crc32(f"{column}={value}".encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _evaluated(
    predictions: Predictions, decision: Decision, config: EvaluationConfig, seed: int
) -> tuple[SplitMetrics, dict[str, Interval]]:
    y_true, probabilities = predictions.arrays()
    metrics = classification_metrics(
        y_true, probabilities, predictions.class_names, decision, config.calibration_bins, predictions.patient_ids
    )
    weights = bootstrap_weights(predictions.patient_ids, y_true, config.bootstrap_resamples, seed)
    intervals = metric_intervals(
        y_true,
        probabilities,
        predictions.class_names,
        decision,
        weights,
        level=config.confidence_level,
        n_bins=config.calibration_bins,
    )
    return metrics, intervals


def assess(predictions: Predictions, decision: Decision, config: EvaluationConfig, seed: int) -> Assessment:
    """Evaluate one split: metrics at `decision`, bootstrap CIs, and the same per slice.

    Slices come in the order of ``config.slices``, and within a column by value; an empty
    value is shown as ``"unknown"`` (one slice with images already marked so) and comes
    last. Each slice is resampled on its own patients with ``config.bootstrap_resamples``
    resamples (seeded by slice_seed).

    Args:
        predictions: the model's predictions of the split (at least one image).
        decision: how probabilities become a class (chosen on validation; components.metrics.choose_decision).
        config: resamples, confidence level, calibration bins, slice columns and min_slice_size.
        seed: seeds the bootstrap (numpy Generator); the same seed gives the same intervals.

    Returns:
        The Assessment.

    Raises:
        MetricsInputError: no images, or predictions that do not fit the classes.
        DecisionError: the decision does not apply to these classes.
    """
    metrics, intervals = _evaluated(predictions, decision, config, seed)
    slices = []
    for column in config.slices:
        values = np.asarray([value or UNKNOWN for value in getattr(predictions, SLICE_FIELDS[column])], dtype=object)
        for value in sorted(set(values.tolist()), key=lambda v: (v == UNKNOWN, v)):
            part = predictions.subset(np.flatnonzero(values == value))
            part_metrics, part_intervals = _evaluated(part, decision, config, slice_seed(seed, column, value))
            slices.append(
                SliceResult(
                    column=column,
                    value=value,
                    n_images=len(part.keys),
                    n_patients=len(set(part.patient_ids)),
                    small=len(part.keys) < config.min_slice_size,
                    metrics=part_metrics,
                    intervals=part_intervals,
                )
            )
    return Assessment(
        split=predictions.split,
        metrics=metrics,
        intervals=intervals,
        confidence_level=config.confidence_level,
        n_resamples=config.bootstrap_resamples,
        seed=seed,
        slices=slices,
    )
