"""Classification metrics as in the paper (accuracy, precision, recall, F1), plus
per-class figures, the confusion matrix and a calibration summary."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict[str, Any]:
    """Integer labels + (N, C) probabilities -> a JSON-serialisable metrics dict.

    Top-level floats (accuracy, *_macro, ece) are what gets logged and compared;
    `per_class` and `confusion_matrix` are for reports.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "ece": expected_calibration_error(y_true, probabilities),
        "n_images": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-class confidence: how far a stated probability is from the hit rate."""
    if len(y_true) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar metrics, with per-class F1/precision/recall, flattened for MLflow."""
    flat = {
        f"{prefix}{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    for name, values in metrics.get("per_class", {}).items():
        safe = name.replace(" ", "_")
        for key in ("precision", "recall", "f1"):
            flat[f"{prefix}{key}_{safe}"] = float(values[key])
    return flat


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str):
    """A matplotlib Figure of the confusion matrix (counts in each cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(1.6 * len(class_names) + 2, 1.4 * len(class_names) + 1.5))
    axes.imshow(data, cmap="Blues")
    axes.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = data.max() / 2 if data.size else 0
    for (row, col), count in np.ndenumerate(data):
        axes.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    return figure


def best_candidate(evaluations: list[dict[str, Any]], metric: str, split: str = "val") -> int:
    """Index of the evaluation with the highest `metric` on `split` (first wins a tie).

    Backbones are chosen on the validation split so the test split stays an
    unbiased report of the chosen model.
    """
    scores = [evaluation[split][metric] for evaluation in evaluations]
    return max(range(len(scores)), key=lambda index: scores[index])
