"""Evaluate a trained classifier on the validation and test splits of a split manifest.

The validation split picks the backbone (components.metrics.best_candidate);
the test split is the report. The same deterministic preprocessing as
training (components.training.split_arrays) feeds the model.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from components.config import BackboneConfig
from components.metrics import Evaluation, SplitMetrics, classification_metrics
from components.registry import split_fingerprint
from components.training import predict_probabilities, split_arrays

EVALUATED_SPLITS = ("val", "test")


def split_metrics(
    model: Any, split_manifest: pd.DataFrame, split: str, class_names: list[str], size: int
) -> SplitMetrics:
    """The metrics of `model` on one split.

    Args:
        model: a Keras classifier taking uint8-range (N, size, size, 3) images.
        split_manifest: used rows with a ``split`` column (val, test, train).
        split: which split to score.
        class_names: the task's classes in model output order.
        size: the model's input size in pixels.

    Returns:
        SplitMetrics at the argmax decision.
    """
    images, y_true = split_arrays(split_manifest, split, class_names, size)
    return classification_metrics(y_true, predict_probabilities(model, images, len(class_names)), class_names)


def evaluate_classifier(
    model: Any, split_manifest: pd.DataFrame, backbone: BackboneConfig, class_names: list[str]
) -> Evaluation:
    """Validation and test metrics of one trained backbone, with the test split's fingerprint.

    Args:
        model: the trained Keras classifier of `backbone`.
        split_manifest: used rows with ``split`` and ``sha256`` columns.
        backbone: the backbone config the model was trained with (its image_size feeds the model).
        class_names: the task's classes in model output order.

    Returns:
        The Evaluation (val, test, test_fingerprint over the test images' sha256).
    """
    size = backbone.image_size
    test_hashes = split_manifest.loc[split_manifest["split"] == "test", "sha256"]
    return Evaluation(
        backbone=backbone,
        test_fingerprint=split_fingerprint(test_hashes),
        val=split_metrics(model, split_manifest, "val", class_names, size),
        test=split_metrics(model, split_manifest, "test", class_names, size),
    )
