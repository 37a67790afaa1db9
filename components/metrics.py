"""Classification metrics as in the paper (accuracy, precision, recall, F1), per class, and calibration.

Besides the paper's macro-averaged figures: per-class figures, the confusion
matrix and the expected calibration error.

The results are pydantic models (`SplitMetrics`, `Evaluation`): they are the
ZenML artifacts of the evaluate steps and what registration compares.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from components.config import BackboneConfig

# The metrics a run may select and promote on (RegistryConfig.primary_metric).
SCALAR_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "ece")


class ClassMetrics(BaseModel):
    """One class, one-vs-rest at the argmax decision: precision (PPV), recall (sensitivity), F1, support."""

    model_config = ConfigDict(frozen=True)

    precision: float
    recall: float
    f1: float
    support: int  # images of this class in the split


class SplitMetrics(BaseModel):
    """The paper's metrics on one split (argmax decision), per class, confusion matrix, ECE.

    Macro averages are unweighted means over classes. ``confusion_matrix[i][j]``
    counts images of class i predicted as class j (counts, not rates), in
    ``class_names`` order. ``ece`` is the expected calibration error of the
    top-class confidence over 10 equal-width bins.
    """

    model_config = ConfigDict(frozen=True)

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    ece: float
    n_images: int
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    class_names: list[str]

    def scalar(self, name: str) -> float:
        """One scalar metric by name.

        Args:
            name: one of SCALAR_METRICS.

        Returns:
            Its value (a fraction in 0..1).

        Raises:
            KeyError: `name` is not one of SCALAR_METRICS.
        """
        if name not in SCALAR_METRICS:
            raise KeyError(f"unknown metric {name!r}; valid: {', '.join(SCALAR_METRICS)}")
        return float(getattr(self, name))


class Evaluation(BaseModel):
    """One trained backbone evaluated on the validation split (model selection) and the test split (report).

    ``test_fingerprint`` identifies the test images (components.registry.split_fingerprint).
    """

    backbone: BackboneConfig
    test_fingerprint: str
    val: SplitMetrics
    test: SplitMetrics


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> SplitMetrics:
    """The metrics of one split from integer labels and class probabilities.

    Args:
        y_true: (N,) int class indices into `class_names`.
        probabilities: (N, C) float probabilities, one column per class; the
            decision is the argmax.
        class_names: the C class names in model output order.

    Returns:
        SplitMetrics: accuracy, macro precision/recall/F1 (classes without support count 0),
        ECE (expected_calibration_error), per-class figures and the C x C confusion matrix.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return SplitMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        precision_macro=float(precision.mean()),
        recall_macro=float(recall.mean()),
        f1_macro=float(f1.mean()),
        ece=expected_calibration_error(y_true, probabilities),
        n_images=int(len(y_true)),
        per_class={
            name: ClassMetrics(
                precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]), support=int(support[i])
            )
            for i, name in enumerate(class_names)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        class_names=list(class_names),
    )


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence: how far a stated probability is from the hit rate.

    ECE = sum over bins b of (|b| / N) * |accuracy(b) - mean confidence(b)|, with equal-width
    confidence bins (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

    Args:
        y_true: (N,) int class indices.
        probabilities: (N, C) float class probabilities; the confidence is the row maximum.
        n_bins: equal-width bins over 0..1.

    Returns:
        The ECE, a fraction in 0..1 (0.0 for an empty split).
    """
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


def flat_metrics(metrics: SplitMetrics, prefix: str = "") -> dict[str, float]:
    """The scalar metrics, with per-class F1/precision/recall, flattened for MLflow.

    Args:
        metrics: one split's metrics.
        prefix: prepended to every key (``"test_"``).

    Returns:
        {"<prefix>accuracy": ..., "<prefix>f1_<class>": ...}; spaces in class names become ``_``.
    """
    flat = {f"{prefix}{key}": metrics.scalar(key) for key in SCALAR_METRICS}
    flat[f"{prefix}n_images"] = float(metrics.n_images)
    for name, values in metrics.per_class.items():
        safe = name.replace(" ", "_")
        for key in ("precision", "recall", "f1"):
            flat[f"{prefix}{key}_{safe}"] = float(getattr(values, key))
    return flat


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str):
    """Draw a confusion matrix (counts in each cell) as a matplotlib Figure, off-screen (Agg).

    Args:
        matrix: C x C counts, ``matrix[i][j]`` images of class i predicted as j.
        class_names: the C class names, in matrix order.
        title: the figure's title.

    Returns:
        A ``matplotlib.figure.Figure``; close it after saving.
    """
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


def best_candidate(evaluations: list[Evaluation], metric: str) -> int:
    """Choose the best backbone by a metric on the validation split.

    Backbones are chosen on the validation split so the test split stays an
    unbiased report of the chosen model.

    Args:
        evaluations: one Evaluation per trained backbone.
        metric: a metric where higher is better (RegistryConfig.primary_metric; not "ece").

    Returns:
        The index in `evaluations` of the highest validation `metric` (the first wins a tie).

    Raises:
        ValueError: `evaluations` is empty.
        KeyError: `metric` is not one of SCALAR_METRICS.
    """
    if not evaluations:
        raise ValueError("no evaluations to choose from")
    scores = [evaluation.val.scalar(metric) for evaluation in evaluations]
    return max(range(len(scores)), key=lambda index: scores[index])
