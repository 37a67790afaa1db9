"""Classification metrics of one split: per class, averaged, threshold-free and calibration.

What a careful evaluation of a chest X-ray classifier reports (../shared/DESIGN.md):

- per class, one-vs-rest at the decision: sensitivity (recall), specificity, PPV
  (precision), NPV, F1 and support; threshold-free one-vs-rest ROC-AUC and PR-AUC
  (average precision) from the probabilities; the confusion matrix in counts;
- macro (unweighted mean over classes) and weighted (by support) averages, balanced
  accuracy, and the paper's accuracy / precision / recall / F1 so its tables can be
  reproduced;
- calibration: the multiclass Brier score, the expected and maximum calibration error
  (ECE, MCE) of the top-class confidence, and a reliability diagram per class.

How probabilities become a predicted class is a `Decision`: argmax for the multiclass
task; for the binary task a threshold on P(COVID-19) chosen on the validation split
by a configured rule (`choose_decision`) and applied unchanged to test and external data.

Conventions (shared with the vectorised bootstrap, components.bootstrap, which
computes the same formulas for many resamples at once):

- A ratio whose denominator is 0 is undefined, not 0 (scikit-learn's ``zero_division=np.nan``,
  "ill-defined" in its warnings; MONAI's ``compute_confusion_matrix_metric`` likewise returns NaN
  for a zero denominator): the sensitivity of a class without images in the split, the
  specificity of a class when every image is of it, the PPV of a class never predicted, the NPV
  of a class predicted for every image, and F1 when the class is neither present nor predicted
  (2 TP + FP + FN = 0). Undefined is NaN in arrays and None in the pydantic models;
  ``SplitMetrics.scalar`` reads it as NaN, cards and summaries show it as "n/a", MLflow gets no
  value, and the gate counts it as failed.
- Macro averages (and balanced accuracy, the mean sensitivity) are the unweighted mean over the
  classes where the metric is defined (a NaN-mean: scikit-learn's averages with
  ``zero_division=np.nan`` exclude such classes, and its ``balanced_accuracy_score`` drops
  classes absent from y_true; torchmetrics' multiclass macro average likewise gives no weight
  to a class with TP + FP + FN = 0). Weighted averages weigh the defined classes by support;
  when those supports sum to 0 the plain mean of the defined values is taken, as
  scikit-learn's ``_nanaverage`` does. An average is undefined only when no class defines the
  metric (with two classes or more and at least one image, none of them is).
  So a split or slice without images of a class neither scores that class 0 nor pulls the
  averages down with it; a class that is absent but predicted keeps its F1 of 0 (its false
  alarms count) and its PPV of 0.
- ROC-AUC of a class is undefined (None) when the split has no image of the class or
  only images of it; PR-AUC is undefined when it has no image of the class. Their
  macro averages are the mean over the classes where they are defined.

The results are pydantic models (`SplitMetrics`, `Evaluation`): ZenML artifacts of
the evaluate steps and what registration compares.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.config import ThresholdRule
from components.errors import CxrError
from components.metric_keys import LOWER_IS_BETTER, PER_CLASS_STATS, SCALAR_METRICS, metric_keys

__all__ = [
    "ARGMAX",
    "COUNT_CLASS_STATS",
    "COUNT_METRICS",
    "LOWER_IS_BETTER",
    "PER_CLASS_STATS",
    "SCALAR_METRICS",
    "ClassMetrics",
    "Decision",
    "DecisionError",
    "Interval",
    "MetricsInputError",
    "ReliabilityBin",
    "SplitMetrics",
    "calibration_bin_index",
    "calibration_statistics",
    "check_predictions",
    "choose_decision",
    "classification_metrics",
    "confusion_statistics",
    "confusion_matrix_figure",
    "expected_calibration_error",
    "flat_metrics",
    "metric_keys",
]


# The confusion-count metrics (everything but the threshold-free and calibration ones).
COUNT_METRICS = tuple(key for key in SCALAR_METRICS if key not in ("roc_auc_macro", "pr_auc_macro") + LOWER_IS_BETTER)
COUNT_CLASS_STATS = ("sensitivity", "specificity", "ppv", "npv", "f1")


class MetricsInputError(CxrError, ValueError):
    """Labels or probabilities that cannot be evaluated: the message names the array and what is wrong."""


class DecisionError(CxrError, ValueError):
    """An operating threshold that cannot be chosen or applied: the message names the split, class or rule."""


class Interval(BaseModel):
    """A confidence interval; both bounds None when the metric was undefined in every resample."""

    model_config = ConfigDict(frozen=True)

    low: float | None
    high: float | None


# ---------------------------------------------------------------- inputs


def check_predictions(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Check labels and probabilities against the classes and return them as arrays.

    Args:
        y_true: (N,) int class indices into `class_names`.
        probabilities: (N, C) float class probabilities, one column per class (binary: column 1 is
            P(class 1)).
        class_names: the C class names in model output order.

    Returns:
        (y_true as (N,) int64, probabilities as (N, C) float64).

    Raises:
        MetricsInputError: no images, shapes that disagree, a label outside 0..C-1, or a probability
            that is not finite.
    """
    n_classes = len(class_names)
    labels = np.asarray(y_true)
    probs = np.asarray(probabilities, dtype=float)
    if labels.ndim != 1:
        raise MetricsInputError(f"y_true must be one label per image (shape (N,)), got shape {labels.shape}")
    if len(labels) == 0:
        raise MetricsInputError("no images to evaluate (y_true is empty)")
    if probs.shape != (len(labels), n_classes):
        raise MetricsInputError(
            f"probabilities must have shape (N, C) = ({len(labels)}, {n_classes}) for classes {list(class_names)}, "
            f"got {probs.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise MetricsInputError("y_true must hold integer class indices")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise MetricsInputError(
            f"y_true[{bad[0]}] = {labels[bad[0]]} is not a class index 0..{n_classes - 1} of {list(class_names)}"
        )
    not_finite = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(not_finite):
        raise MetricsInputError(f"probabilities of image {not_finite[0]} are not finite: {probs[not_finite[0]]}")
    return labels, probs


# ---------------------------------------------------------------- the decision


class Decision(BaseModel):
    """How probabilities become a predicted class: argmax, or a threshold on P(positive class).

    The threshold rule (binary task) predicts ``positive_class`` when its probability is at
    least ``threshold`` (``>=``), the other class otherwise. ``chosen_on`` says where the
    threshold came from: ``"val"`` (chosen on the validation split), ``"config"`` (rule
    ``fixed``), ``"argmax"`` (no threshold).
    """

    model_config = ConfigDict(frozen=True)

    rule: Literal["argmax", "youden", "min_sensitivity", "fixed"]
    rule_value: float | None = None  # the config's value (the minimum sensitivity, or the fixed threshold)
    threshold: float | None = None  # on P(positive_class); None for argmax
    positive_class: str | None = None  # "COVID-19" for the binary task; None for argmax
    chosen_on: str = "argmax"

    def predict(self, probabilities: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """The predicted class of each image.

        Args:
            probabilities: (N, C) float class probabilities in `class_names` order.
            class_names: the C class names in model output order.

        Returns:
            (N,) int64 predicted class indices into `class_names`.

        Raises:
            DecisionError: a threshold decision on a task that is not binary, a positive class that
                is not among `class_names`, or probabilities whose width is not C.
        """
        probs = np.asarray(probabilities, dtype=float)
        if probs.ndim != 2 or probs.shape[1] != len(class_names):
            raise DecisionError(
                f"probabilities must have shape (N, {len(class_names)}) for classes {list(class_names)}, "
                f"got {probs.shape}"
            )
        if self.rule == "argmax":
            return probs.argmax(axis=1).astype(np.int64)
        if len(class_names) != 2:
            raise DecisionError(
                f"a threshold decision ({self.describe()}) applies to the binary task only, "
                f"not to classes {list(class_names)}"
            )
        if self.positive_class not in class_names or self.threshold is None:
            raise DecisionError(
                f"the decision's positive class {self.positive_class!r} is not one of {list(class_names)}"
            )
        positive = list(class_names).index(self.positive_class)
        return np.where(probs[:, positive] >= self.threshold, positive, 1 - positive).astype(np.int64)

    def describe(self) -> str:
        """The decision in words, for reports and cards.

        Returns:
            e.g. ``"P(COVID-19) >= 0.4312 (youden on val)"``, ``"P(COVID-19) >= 0.3100
            (min_sensitivity 0.95 on val)"``, ``"P(COVID-19) >= 0.5000 (fixed)"`` or
            ``"argmax (multiclass)"``.
        """
        if self.rule == "argmax":
            return "argmax (multiclass)"
        how = self.rule if self.rule_value is None or self.rule == "fixed" else f"{self.rule} {self.rule_value:g}"
        where = "" if self.rule == "fixed" else f" on {self.chosen_on}"
        return f"P({self.positive_class}) >= {self.threshold:.4f} ({how}{where})"


ARGMAX = Decision(rule="argmax")


def choose_decision(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
    rule: ThresholdRule,
) -> Decision:
    """The decision of a task: argmax for more than two classes, else a threshold chosen on these arrays.

    Pass the validation split: the threshold is chosen there and applied unchanged to test
    and external data. The positive class is class index 1 (COVID-19 in the binary task).
    The candidate thresholds are the distinct values of P(positive) in the arrays (the
    points of the ROC curve); an image is called positive when P(positive) >= threshold.

    - ``youden``: the threshold with the largest sensitivity + specificity - 1. Ties go to
      the highest such threshold (the first maximum walking the ROC curve from its
      strictest end: the fewest positive calls among equally good points).
    - ``min_sensitivity``: the highest threshold whose sensitivity is at least
      ``rule.value``. It always exists when the split has a positive image (the lowest
      positive score reaches sensitivity 1), so the only failure is a split without one.
    - ``fixed``: ``rule.value`` itself, whatever the arrays (``chosen_on="config"``).

    Args:
        y_true: (N,) int class indices of the validation images.
        probabilities: (N, C) float class probabilities (binary: column 1 is P(COVID-19)).
        class_names: the C class names in model output order.
        rule: the configured rule (EvaluationConfig.threshold).

    Returns:
        Decision(rule="argmax") when C != 2; else the threshold Decision on class_names[1].

    Raises:
        MetricsInputError: the arrays do not fit the classes (see check_predictions).
        DecisionError: ``youden`` without images of both classes, or ``min_sensitivity``
            without a positive image, in the given split.
    """
    if len(class_names) != 2:
        return ARGMAX
    positive_class = class_names[1]
    if rule.rule == "fixed":
        return Decision(
            rule="fixed", rule_value=rule.value, threshold=rule.value, positive_class=positive_class, chosen_on="config"
        )
    labels, probs = check_predictions(y_true, probabilities, class_names)
    scores = probs[:, 1]
    positive = labels == 1
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or (rule.rule == "youden" and n_negative == 0):
        missing = positive_class if n_positive == 0 else class_names[0]
        raise DecisionError(
            f"cannot choose the {rule.rule} threshold on P({positive_class}): the validation split has no "
            f"{missing} images (it has {n_positive} {positive_class} and {n_negative} {class_names[0]}); "
            "use evaluation.threshold: {rule: fixed, value: ...} or a split with both classes"
        )
    # Distinct scores from the highest down; tp/fp: positives/negatives called positive at each.
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    thresholds = sorted_scores[last_of_value]
    true_positives = np.cumsum(positive[order])[last_of_value]
    if rule.rule == "youden":
        false_positives = np.cumsum(~positive[order])[last_of_value]
        # sensitivity + specificity - 1 = TP/P - FP/N, compared exactly as TP*N - FP*P (integers) so that
        # ties are ties; np.argmax takes the first maximum: the highest threshold.
        best = int(np.argmax(true_positives * n_negative - false_positives * n_positive))
    else:
        best = int(np.flatnonzero(true_positives / n_positive >= rule.value - 1e-12)[0])
    return Decision(
        rule=rule.rule,
        rule_value=rule.value,
        threshold=float(thresholds[best]),
        positive_class=positive_class,
        chosen_on="val",
    )


# ---------------------------------------------------------------- formulas (batched)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN (undefined) where the denominator is 0."""
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _nan_average(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The mean of each row over its defined (non-NaN) entries, optionally weighted.

    Args:
        values: (B, C) float, NaN where undefined.
        weights: (B, C) non-negative weights, or None for the plain mean. A row whose defined
            entries all weigh 0 gets their plain mean (scikit-learn's ``_nanaverage``).

    Returns:
        (B,) float64; NaN for a row without a defined entry.
    """
    defined = ~np.isnan(values)
    filled = np.where(defined, values, 0.0)
    mean = _ratio(filled.sum(axis=1), defined.sum(axis=1))
    if weights is None:
        return mean
    weights = np.where(defined, weights, 0.0)
    weighted = _ratio((filled * weights).sum(axis=1), weights.sum(axis=1))
    return np.where(np.isnan(weighted), mean, weighted)


def confusion_statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The confusion-count metrics of a batch of confusion matrices (one per resample).

    Each class is taken one-vs-rest: TP = counts[c, c], FN = rest of row c, FP = rest of
    column c, TN = everything else. A ratio with denominator 0 is undefined (NaN); macro
    averages and balanced accuracy are NaN-means over the classes, weighted averages weigh the
    defined classes by support (module docstring: scikit-learn's ``zero_division=np.nan``).

    Args:
        counts: (B, C, C) float or int (weighted) counts, ``counts[b, i, j]`` images of class i
            predicted j in batch item b.

    Returns:
        {key: (B,) float64} for the keys of COUNT_METRICS, and ``"{stat}:{index}"`` for
        each class index and each stat of COUNT_CLASS_STATS (class indices, not names); NaN
        where undefined.
    """
    counts = np.asarray(counts, dtype=float)
    n_classes = counts.shape[1]
    tp = np.diagonal(counts, axis1=1, axis2=2)  # (B, C)
    support = counts.sum(axis=2)
    predicted = counts.sum(axis=1)
    total = support.sum(axis=1)  # (B,)
    fn = support - tp
    fp = predicted - tp
    tn = total[:, None] - tp - fn - fp
    per_class = {
        "sensitivity": _ratio(tp, support),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, predicted),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    values = {
        "accuracy": _ratio(tp.sum(axis=1), total),
        "balanced_accuracy": _nan_average(per_class["sensitivity"]),
        "precision_macro": _nan_average(per_class["ppv"]),
        "recall_macro": _nan_average(per_class["sensitivity"]),
        "f1_macro": _nan_average(per_class["f1"]),
        "precision_weighted": _nan_average(per_class["ppv"], support),
        "recall_weighted": _nan_average(per_class["sensitivity"], support),
        "f1_weighted": _nan_average(per_class["f1"], support),
        "specificity_macro": _nan_average(per_class["specificity"]),
    }
    for stat, array in per_class.items():
        for index in range(n_classes):
            values[f"{stat}:{index}"] = array[:, index]
    return values


def calibration_bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width bin of each probability: bin b holds [b/n_bins, (b+1)/n_bins), the last one also 1.0.

    Args:
        values: (N,) float probabilities in 0..1.
        n_bins: the number of equal-width bins over 0..1.

    Returns:
        (N,) int64 bin indices in 0..n_bins-1.
    """
    return np.clip((np.asarray(values, dtype=float) * n_bins).astype(np.int64), 0, n_bins - 1)


def calibration_statistics(
    weights: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray, n_bins: int
) -> dict[str, np.ndarray]:
    """Brier score, ECE and MCE for a batch of image weightings (1 row of ones: the split itself).

    Brier (multiclass form): the weighted mean over images of sum over classes of
    (p_c - 1[y = c])^2; 0 is perfect, 2 the worst. ECE and MCE use the top-class
    confidence (the largest probability) and whether the argmax class is the true one,
    in `n_bins` equal-width confidence bins (calibration_bin_index; Guo et al., "On
    Calibration of Modern Neural Networks", ICML 2017): ECE = sum over bins of
    (weight in bin / total weight) * |accuracy in bin - mean confidence in bin|; MCE =
    the largest |accuracy - mean confidence| over non-empty bins. Calibration is a
    property of the probabilities, so it does not depend on the decision threshold.

    Args:
        weights: (B, N) int or float, how often each image counts in each batch item.
        y_true: (N,) int class indices.
        probabilities: (N, C) float class probabilities.
        n_bins: equal-width confidence bins over 0..1.

    Returns:
        {"brier": (B,), "ece": (B,), "mce": (B,)} float64; nan where a row's weights sum to 0.
    """
    n_images, n_classes = probabilities.shape
    onehot = np.zeros((n_images, n_classes))
    onehot[np.arange(n_images), y_true] = 1.0
    brier = ((probabilities - onehot) ** 2).sum(axis=1)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    bins = calibration_bin_index(confidence, n_bins)
    # One matmul: per bin the weight, the weighted confidence and the weighted hits; then Brier and total.
    design = np.zeros((n_images, 3 * n_bins + 2))
    rows = np.arange(n_images)
    design[rows, bins] = 1.0
    design[rows, n_bins + bins] = confidence
    design[rows, 2 * n_bins + bins] = correct
    design[:, 3 * n_bins] = brier
    design[:, 3 * n_bins + 1] = 1.0
    sums = np.asarray(weights, dtype=float) @ design
    count, confidence_sum, hit_sum = sums[:, :n_bins], sums[:, n_bins : 2 * n_bins], sums[:, 2 * n_bins : 3 * n_bins]
    total = sums[:, 3 * n_bins + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(hit_sum - confidence_sum)
        ece = gap.sum(axis=1) / total
        brier_mean = sums[:, 3 * n_bins] / total
        per_bin = np.where(count > 0, gap / np.where(count > 0, count, 1), -np.inf)
        mce = per_bin.max(axis=1)
    mce = np.where(total > 0, mce, np.nan)
    return {"brier": brier_mean, "ece": ece, "mce": mce}


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence: how far a stated probability is from the hit rate.

    ECE = sum over bins b of (|b| / N) * |accuracy(b) - mean confidence(b)|, with equal-width
    confidence bins (calibration_statistics; Guo et al., ICML 2017).

    Args:
        y_true: (N,) int class indices.
        probabilities: (N, C) float class probabilities; the confidence is the row maximum.
        n_bins: equal-width bins over 0..1.

    Returns:
        The ECE, a fraction in 0..1 (0.0 for an empty split).
    """
    labels = np.asarray(y_true, dtype=np.int64)
    if len(labels) == 0:
        return 0.0
    probs = np.asarray(probabilities, dtype=float)
    return float(calibration_statistics(np.ones((1, len(labels))), labels, probs, n_bins)["ece"][0])


# ---------------------------------------------------------------- one split


class ClassMetrics(BaseModel):
    """One class, one-vs-rest at the decision, plus its threshold-free ROC-AUC and PR-AUC.

    A metric whose denominator is 0 in this split is None (undefined; module docstring), never 0.
    """

    model_config = ConfigDict(frozen=True)

    sensitivity: float | None  # recall: TP / (TP + FN); None without images of the class
    specificity: float | None  # TN / (TN + FP); None when every image is of the class
    ppv: float | None  # precision: TP / (TP + FP); None when the class is never predicted
    npv: float | None  # TN / (TN + FN); None when the class is predicted for every image
    f1: float | None  # 2 TP / (2 TP + FP + FN); None when the class is neither present nor predicted
    support: int  # images of this class in the split
    roc_auc: float | None  # one-vs-rest, from P(class); None without images of the class or of the rest
    pr_auc: float | None  # average precision of P(class); None without images of the class

    @property
    def precision(self) -> float | None:
        """PPV under its other name (the paper's); None when the class is never predicted."""
        return self.ppv

    @property
    def recall(self) -> float | None:
        """Sensitivity under its other name (the paper's); None without images of the class."""
        return self.sensitivity


class ReliabilityBin(BaseModel):
    """One bin of a class's reliability diagram: images whose P(class) falls in [low, high)."""

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    count: int
    mean_confidence: float | None  # mean P(class) in the bin; None when empty
    observed_rate: float | None  # fraction of the bin's images that are of the class; None when empty


class SplitMetrics(BaseModel):
    """The metrics of one split at one decision (see the module docstring for the conventions).

    Macro averages are unweighted means over the classes where the metric is defined,
    weighted averages weigh those classes by support; a metric that is undefined is None
    (module docstring). The averages are None only when no class defines them, which
    cannot happen with two classes or more; ``accuracy`` is defined for any non-empty split.
    ``confusion_matrix[i][j]`` counts images of class i predicted as class j, in
    ``class_names`` order. ``brier`` is the multiclass Brier score (mean over images of
    the sum over classes of (p - onehot)^2). ``ece`` and ``mce`` are the expected and
    maximum calibration errors of the top-class confidence over ``calibration_bins``
    equal-width bins (Guo et al. 2017). ``reliability[class]`` bins P(class) the same way.
    """

    model_config = ConfigDict(frozen=True)

    accuracy: float
    balanced_accuracy: float | None
    precision_macro: float | None
    recall_macro: float | None
    f1_macro: float | None
    precision_weighted: float | None
    recall_weighted: float | None
    f1_weighted: float | None
    specificity_macro: float | None
    roc_auc_macro: float | None
    pr_auc_macro: float | None
    brier: float
    ece: float
    mce: float
    calibration_bins: int
    reliability: dict[str, list[ReliabilityBin]]
    n_images: int
    n_patients: int | None
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    decision: Decision

    def scalar(self, key: str) -> float:
        """One metric by flat key (metric_keys).

        Args:
            key: an overall key of SCALAR_METRICS (``f1_macro``) or ``"{stat}:{class}"``
                (``sensitivity:COVID-19``).

        Returns:
            Its value; float('nan') when it is undefined (None).

        Raises:
            KeyError: `key` is not a metric of these classes (the message lists the valid keys).
        """
        if key in SCALAR_METRICS:
            value = getattr(self, key)
        else:
            stat, _, name = key.partition(":")
            if stat not in PER_CLASS_STATS or name not in self.per_class:
                raise KeyError(f"unknown metric {key!r}; valid: {', '.join(metric_keys(self.class_names))}")
            value = getattr(self.per_class[name], stat)
        return math.nan if value is None else float(value)


def _reliability(y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], n_bins: int):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    diagram = {}
    for index, name in enumerate(class_names):
        bins = calibration_bin_index(probabilities[:, index], n_bins)
        count = np.bincount(bins, minlength=n_bins)
        confidence = np.bincount(bins, weights=probabilities[:, index], minlength=n_bins)
        observed = np.bincount(bins, weights=(y_true == index).astype(float), minlength=n_bins)
        diagram[name] = [
            ReliabilityBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=int(count[b]),
                mean_confidence=float(confidence[b] / count[b]) if count[b] else None,
                observed_rate=float(observed[b] / count[b]) if count[b] else None,
            )
            for b in range(n_bins)
        ]
    return diagram


def _threshold_free(y_true: np.ndarray, probabilities: np.ndarray, index: int) -> tuple[float | None, float | None]:
    """One-vs-rest ROC-AUC and average precision of class `index` (None where undefined).

    The scores are sorted once (highest first); at the end of each run of equal scores,
    TP and FP count the positive and negative images called positive. ROC-AUC is the
    trapezoidal area under (FP / N, TP / P), tied scores counting half (scikit-learn's
    ``roc_auc_score``), summed in integers; average precision is scikit-learn's step form,
    the sum over runs of (TP step / P) x TP / (TP + FP). The values are scikit-learn's (to
    rounding) without its per-call input validation, which took a few ms per call: most
    of the cost of a split's point metrics and of every slice's (bench/evaluation_overhead.py).
    """
    positive = y_true == index
    n_positive = int(positive.sum())
    n_negative = len(y_true) - n_positive
    if n_positive == 0:
        return None, None
    scores = probabilities[:, index]
    order = np.argsort(-scores, kind="stable")
    last_of_run = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    true_positives = np.cumsum(positive[order], dtype=np.int64)[last_of_run]
    false_positives = last_of_run + 1 - true_positives
    true_steps = np.diff(true_positives, prepend=0)
    pr = float(np.sum(true_steps * (true_positives / (true_positives + false_positives))) / n_positive)
    if n_negative == 0:
        return None, pr
    # Twice the area: each FP step times the sum of the TP counts at its two ends.
    twice_area = int(np.sum(np.diff(false_positives, prepend=0) * (2 * true_positives - true_steps)))
    return twice_area / (2 * n_positive * n_negative), pr


def _defined_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
    decision: Decision | None = None,
    n_bins: int = 10,
    patient_ids: Sequence[str] | None = None,
) -> SplitMetrics:
    """The metrics of one split from integer labels and class probabilities.

    Args:
        y_true: (N,) int class indices into `class_names`.
        probabilities: (N, C) float probabilities, one column per class (binary: column 1 is
            P(COVID-19)).
        class_names: the C class names in model output order.
        decision: how probabilities become a class (choose_decision); None: argmax.
        n_bins: equal-width bins over 0..1 for ECE, MCE and the reliability diagrams.
        patient_ids: (N,) the patient of each image, to count patients; None: not counted.

    Returns:
        SplitMetrics: the overall, per-class and calibration metrics (None where undefined,
        module docstring), the C x C confusion matrix (counts) and the decision.

    Raises:
        MetricsInputError: the arrays do not fit the classes (check_predictions), or
            `patient_ids` has another length than `y_true`.
        DecisionError: the decision does not apply to these classes.
    """
    labels, probs = check_predictions(y_true, probabilities, class_names)
    decision = decision or ARGMAX
    n_images, n_classes = probs.shape
    if patient_ids is not None and len(patient_ids) != n_images:
        raise MetricsInputError(f"patient_ids has {len(patient_ids)} entries for {n_images} images")
    predicted = decision.predict(probs, class_names)
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    counts = confusion_statistics(matrix[None])
    calibration = calibration_statistics(np.ones((1, n_images)), labels, probs, n_bins)
    threshold_free = [_threshold_free(labels, probs, index) for index in range(n_classes)]
    per_class = {
        name: ClassMetrics(
            **{stat: _defined_or_none(counts[f"{stat}:{index}"][0]) for stat in COUNT_CLASS_STATS},
            support=int(matrix[index].sum()),
            roc_auc=threshold_free[index][0],
            pr_auc=threshold_free[index][1],
        )
        for index, name in enumerate(class_names)
    }
    return SplitMetrics(
        **{key: _defined_or_none(counts[key][0]) for key in COUNT_METRICS},
        roc_auc_macro=_mean_defined([roc for roc, _ in threshold_free]),
        pr_auc_macro=_mean_defined([pr for _, pr in threshold_free]),
        **{key: float(calibration[key][0]) for key in LOWER_IS_BETTER},
        calibration_bins=n_bins,
        reliability=_reliability(labels, probs, class_names, n_bins),
        n_images=n_images,
        n_patients=None if patient_ids is None else len(set(patient_ids)),
        per_class=per_class,
        confusion_matrix=matrix.tolist(),
        class_names=list(class_names),
        decision=decision,
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./]")


def flat_metrics(metrics: SplitMetrics, prefix: str = "") -> dict[str, float]:
    """Every defined metric under a key MLflow accepts, for ``mlflow.log_metrics``.

    Args:
        metrics: one split's metrics.
        prefix: prepended to every key (``"test_"``).

    Returns:
        {"<prefix>accuracy": ..., "<prefix>sensitivity_COVID-19": ..., "<prefix>n_images": ...}: the
        keys of metric_keys with ``:``, spaces and any other character MLflow rejects turned
        into ``_``; undefined (None / NaN) metrics are left out.
    """
    flat = {}
    for key in metric_keys(metrics.class_names):
        value = metrics.scalar(key)
        if not math.isnan(value):
            flat[_UNSAFE.sub("_", f"{prefix}{key}")] = value
    flat[f"{prefix}n_images"] = float(metrics.n_images)
    if metrics.n_patients is not None:
        flat[f"{prefix}n_patients"] = float(metrics.n_patients)
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
