"""Evaluate a trained classifier: predictions on validation, test and external data, and the decision rule.

The validation split picks the decision rule (the binary task's threshold,
EvaluationConfig.threshold) and the backbone (components.metrics.best_candidate);
the test split and each external source are the report, read with that rule
unchanged. The same deterministic preprocessing as training
(components.training.load_images) feeds the model, for the candidate and for a
registered champion alike (``predict_with_version``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from components.assessment import Predictions
from components.config import BackboneConfig, EvaluationConfig
from components.errors import CxrError
from components.metrics import LOWER_IS_BETTER, Decision, SplitMetrics, choose_decision, classification_metrics
from components.registry import split_fingerprint
from components.splitting import EXTERNAL
from components.training import load_images, predict_probabilities

# Rows of external sources (evaluation.external_sources, or a whole evaluation-only drop) carry
# split EXTERNAL (components.splitting); they are reported per source as "external:<source>".
EXTERNAL_PREFIX = "external:"


class ModelMismatchError(CxrError, ValueError):
    """A registered model cannot be compared on these data: its classes differ (another task)."""


class Evaluation(BaseModel):
    """One trained backbone: its decision rule and metrics on validation, its predictions everywhere.

    ``predictions`` holds "val", "test", then "external:<source>" per external source.
    ``test_fingerprint`` identifies the test images (components.registry.split_fingerprint).
    """

    backbone: BackboneConfig
    test_fingerprint: str
    decision: Decision
    val: SplitMetrics
    test: SplitMetrics
    predictions: list[Predictions]

    def judged(self) -> list[Predictions]:
        """The predictions a model is judged on: test first, then the external sources."""
        return [p for p in self.predictions if p.split != "val"]


def evaluated_splits(split_manifest: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The splits a model is scored on, in report order: val, test, then each external source.

    Args:
        split_manifest: used rows with ``split`` and ``source`` columns.

    Returns:
        (name, rows) pairs; "external:<source>" for each source of the external rows; splits without rows left out.
    """
    splits = [(name, split_manifest[split_manifest["split"] == name]) for name in ("val", "test")]
    external = split_manifest[split_manifest["split"] == EXTERNAL]
    for source in sorted(external["source"].unique()):
        splits.append((f"{EXTERNAL_PREFIX}{source}", external[external["source"] == source]))
    return [(name, rows) for name, rows in splits if len(rows)]


def predictions_from(rows: pd.DataFrame, split: str, class_names: list[str], probabilities: np.ndarray) -> Predictions:
    """Wrap a model's probabilities for manifest rows as Predictions.

    Args:
        rows: manifest rows (uri, sha256, patient_id, label, source, age_group, view).
        split: the split's name ("test", "external:<source>").
        class_names: the task's classes in model output order.
        probabilities: float (len(rows), C).

    Returns:
        The Predictions, in row order.

    Raises:
        ValueError: a row's label is not one of `class_names`.
    """
    return Predictions(
        split=split,
        class_names=list(class_names),
        keys=rows["sha256"].astype(str).tolist(),
        uris=rows["uri"].astype(str).tolist(),
        patient_ids=rows["patient_id"].astype(str).tolist(),
        sources=rows["source"].astype(str).tolist(),
        age_groups=rows["age_group"].fillna("").astype(str).tolist(),
        sexes=rows["sex"].fillna("").astype(str).tolist() if "sex" in rows else [""] * len(rows),
        views=rows["view"].fillna("").astype(str).tolist(),
        y_true=[list(class_names).index(label) for label in rows["label"]],
        probabilities=np.asarray(probabilities, dtype=float).tolist(),
    )


def predict_rows(model: Any, rows: pd.DataFrame, split: str, class_names: list[str], size: int) -> Predictions:
    """Predictions of a Keras classifier on manifest rows.

    Args:
        model: a Keras classifier taking uint8-range (N, size, size, 3) images.
        rows: manifest rows.
        split: the split's name.
        class_names: the task's classes in model output order.
        size: the model's input size in pixels.

    Returns:
        The Predictions.
    """
    images = load_images(rows["uri"].tolist(), size)
    return predictions_from(rows, split, class_names, predict_probabilities(model, images, len(class_names)))


def evaluate_classifier(
    model: Any,
    split_manifest: pd.DataFrame,
    backbone: BackboneConfig,
    class_names: list[str],
    evaluation: EvaluationConfig,
) -> Evaluation:
    """The decision rule (chosen on validation) and the predictions of one trained backbone.

    Args:
        model: the trained Keras classifier of `backbone`.
        split_manifest: used rows with ``split``, ``sha256``, ``patient_id``, ``source`` ... columns.
        backbone: the backbone config the model was trained with (its image_size feeds the model).
        class_names: the task's classes in model output order.
        evaluation: the evaluation settings (threshold rule, calibration bins).

    Returns:
        The Evaluation; its val and test SplitMetrics are point estimates (CIs come with the assessment).
    """
    size = backbone.image_size
    predictions = [
        predict_rows(model, rows, name, class_names, size) for name, rows in evaluated_splits(split_manifest)
    ]
    by_split = {p.split: p for p in predictions}
    val_true, val_probabilities = by_split["val"].arrays()
    decision = choose_decision(val_true, val_probabilities, class_names, evaluation.threshold)

    def metrics(split: str) -> SplitMetrics:
        y_true, probabilities = by_split[split].arrays()
        return classification_metrics(
            y_true,
            probabilities,
            class_names,
            decision=decision,
            n_bins=evaluation.calibration_bins,
            patient_ids=by_split[split].patient_ids,
        )

    return Evaluation(
        backbone=backbone,
        test_fingerprint=split_fingerprint(by_split["test"].keys),
        decision=decision,
        val=metrics("val"),
        test=metrics("test"),
        predictions=predictions,
    )


def predict_with_version(model_uri: str, like: list[Predictions]) -> list[Predictions]:
    """Predict with a registered model (its own input size and preprocessing) on the images of `like`.

    Used to re-evaluate the champion on a candidate's test split and external sources.

    Args:
        model_uri: ``models:/<name>/<version>`` (or any pyfunc URI logged by components.serving).
        like: predictions whose images (uris), labels and metadata are reused, one per split.

    Returns:
        One Predictions per entry of `like`, same split names and row order, this model's probabilities.

    Raises:
        ModelMismatchError: the model's classes are not those of `like` (a model of another task).
    """
    import mlflow

    classifier = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    out = []
    for predictions in like:
        if list(classifier.class_names) != list(predictions.class_names):
            raise ModelMismatchError(
                f"{model_uri} predicts {classifier.class_names}, but the data are labelled "
                f"{predictions.class_names} (another task?)"
            )
        images = load_images(predictions.uris, classifier.image_size)
        probabilities = predict_probabilities(classifier.model, images, len(classifier.class_names))
        out.append(predictions.model_copy(update={"probabilities": np.asarray(probabilities, float).tolist()}))
    return out


def best_candidate(evaluations: list[Evaluation], metric: str) -> int:
    """Choose the best backbone by a metric on the validation split.

    Backbones are chosen on the validation split so the test split stays an
    unbiased report of the chosen model.

    Args:
        evaluations: one Evaluation per trained backbone.
        metric: a flat metric key (RegistryConfig.primary_metric); for LOWER_IS_BETTER keys the
            lowest value wins.

    Returns:
        The index in `evaluations` of the best validation `metric` (the first wins a tie; an
        undefined value loses to any defined one).

    Raises:
        ValueError: `evaluations` is empty.
        KeyError: `metric` is not a metric of the evaluations' classes.
    """
    if not evaluations:
        raise ValueError("no evaluations to choose from")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    scores = [sign * evaluation.val.scalar(metric) for evaluation in evaluations]
    scores = [-math.inf if math.isnan(score) else score for score in scores]
    return max(range(len(scores)), key=lambda index: scores[index])
