"""Confidence intervals from a stratified bootstrap that resamples patients, vectorised over resamples.

Several images of one patient are not independent: a resample draws patients (with
replacement, within the stratum of their class), and a drawn patient brings all of
its images. One resample is a row of integer weights over the images (how many times
each image is drawn), so the B resamples are one (B, N) matrix (`bootstrap_weights`),
built once and shared: by every metric, and by the candidate and the baseline (the
champion) in a paired comparison (`paired_differences`).

Every metric is computed for all resamples at once with matrix operations
(`resample_metrics`), never with a Python loop per resample:

- confusion counts: the weights times a one-hot matrix of (true class, predicted class)
  cells, then components.metrics.confusion_statistics;
- Brier, ECE and MCE: the weights times a one-hot matrix of confidence bins
  (components.metrics.calibration_statistics);
- one-vs-rest ROC-AUC and average precision per class: the scores are sorted once; the
  weighted cumulative counts of positives and negatives at each distinct score (one
  cumulative sum across all resamples) give the ROC curve and the precision-recall curve
  of every resample. Tied scores count half (the Mann-Whitney form), which equals the
  trapezoidal area of scikit-learn's ``roc_auc_score``; average precision is
  scikit-learn's step form, sum over thresholds of (recall step) x precision.

The percentile interval (Efron) at ``level`` is read from the resampled values. A
resample where a metric is undefined (NaN, with components.metrics' conventions: ROC-AUC
or sensitivity of a class when no image of it was drawn, ROC-AUC or specificity when only
images of it were, PPV when the class was never predicted, ...) is skipped for that
metric; if it is undefined in every resample the interval is None. A metric undefined on
the split itself is undefined in every resample (a resample draws only the split's
images), so its interval is None too. Binned calibration errors (ECE, MCE) are biased upward
in small samples, resampled ones too: read their intervals as a guide, and compare
models on them with the paired difference. Resampling is memory-bound: the weights of 1,000
resamples of 10,000 images take 40 MB (int32), and the metrics are computed a chunk of
resamples at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.metrics import (
    COUNT_CLASS_STATS,
    COUNT_METRICS,
    LOWER_IS_BETTER,
    Decision,
    Interval,
    MetricsInputError,
    calibration_statistics,
    check_predictions,
    confusion_statistics,
    metric_keys,
)

__all__ = [
    "Difference",
    "bootstrap_weights",
    "metric_intervals",
    "paired_differences",
    "percentile_interval",
    "resample_metrics",
]

# Resamples are processed in chunks of about this many (resample, image) cells: a few
# arrays of this size stay in cache-friendly tens of MB whatever N and B are.
CHUNK_CELLS = 500_000


class Difference(BaseModel):
    """Candidate minus baseline (the champion) on the same resamples: the point difference and its CI.

    For LOWER_IS_BETTER metrics (brier, ece, mce) a negative difference is an improvement.
    All three are None when the metric is undefined for either model.
    """

    model_config = ConfigDict(frozen=True)

    point: float | None
    low: float | None
    high: float | None


def bootstrap_weights(patient_ids: Sequence[str], strata: Sequence[int], n_resamples: int, seed: int) -> np.ndarray:
    """Draw stratified patient-level bootstrap resamples as image weights.

    Each patient's stratum is the most frequent stratum of its images (a tie goes to the
    lowest stratum value). Within each stratum, as many patients as it has are drawn
    uniformly with replacement, so every resample keeps the strata's patient counts;
    a drawn patient brings all of its images, so images of one patient always move together.
    Images with equal ids belong to one patient.

    Args:
        patient_ids: (N,) the patient of each image.
        strata: (N,) int stratum of each image (its class index).
        n_resamples: B, the number of resamples (at least 1).
        seed: seeds numpy's default Generator; the same arguments give the same weights.

    Returns:
        (B, N) int32: ``weights[b, n]`` is how many times image n is drawn in resample b.

    Raises:
        MetricsInputError: no images, `strata` of another length than `patient_ids`, or
            `n_resamples` < 1.
    """
    ids = np.asarray([str(patient) for patient in patient_ids])
    classes = np.asarray(strata, dtype=np.int64)
    if len(ids) == 0:
        raise MetricsInputError("no images to resample (patient_ids is empty)")
    if classes.shape != ids.shape:
        raise MetricsInputError(f"strata has {classes.size} entries for {len(ids)} patient ids")
    if n_resamples < 1:
        raise MetricsInputError(f"n_resamples must be at least 1, got {n_resamples}")
    patients, patient_of_image = np.unique(ids, return_inverse=True)
    stratum_values, stratum_of_image = np.unique(classes, return_inverse=True)
    per_patient = np.zeros((len(patients), len(stratum_values)), dtype=np.int64)
    np.add.at(per_patient, (patient_of_image, stratum_of_image), 1)
    patient_stratum = per_patient.argmax(axis=1)  # first maximum: the lowest stratum wins a tie
    rng = np.random.default_rng(seed)
    patient_counts = np.zeros((n_resamples, len(patients)), dtype=np.int32)
    for stratum in range(len(stratum_values)):
        members = np.flatnonzero(patient_stratum == stratum)
        if len(members) == 0:
            continue
        # B x k draws of k patients; row b's draws are counted by one bincount over offset indices.
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        draws += np.arange(n_resamples)[:, None] * len(members)
        counts = np.bincount(draws.ravel(), minlength=n_resamples * len(members))
        patient_counts[:, members] = counts.reshape(n_resamples, len(members))
    return patient_counts[:, patient_of_image]


def _check_weights(weights: np.ndarray, n_images: int) -> np.ndarray:
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != n_images:
        raise MetricsInputError(f"weights must have shape (B, N) with N = {n_images} images, got {weights.shape}")
    if weights.shape[0] == 0:
        raise MetricsInputError("weights has no resamples (B = 0)")
    if (weights < 0).any():
        raise MetricsInputError("weights must be non-negative counts")
    return weights


def _check_keys(keys: Sequence[str] | None, class_names: Sequence[str]) -> list[str]:
    valid = metric_keys(class_names)
    if keys is None:
        return valid
    unknown = [key for key in keys if key not in valid]
    if unknown:
        raise KeyError(f"unknown metric {unknown[0]!r}; valid: {', '.join(valid)}")
    return list(keys)


class _RankedScores:
    """One class's scores sorted once (highest first), split into its positive and negative images.

    Only the runs of equal scores that hold a positive image matter to ROC-AUC and average
    precision: for each such run g, ``pos_before``/``pos_through`` count the positive images
    sorted before the run / up to its end, ``neg_before``/``neg_through`` the negatives.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray):
        order = np.argsort(-scores, kind="stable")
        sorted_scores, sorted_positive = scores[order], positive[order]
        self.positive_rows = order[sorted_positive]
        self.negative_rows = order[~sorted_positive]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]  # first sorted index of each run
        ends = np.r_[starts[1:], len(scores)]  # one past the last
        positives_before = np.r_[0, np.cumsum(sorted_positive)]  # positives among the first k sorted
        with_positive = positives_before[ends] > positives_before[starts]
        starts, ends = starts[with_positive], ends[with_positive]
        self.pos_before, self.pos_through = positives_before[starts], positives_before[ends]
        self.neg_before, self.neg_through = starts - self.pos_before, ends - self.pos_through

    def curves(self, weights_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ROC-AUC and average precision of every resample.

        Args:
            weights_t: (N, B) int, the resample weights transposed (one row per image).

        Returns:
            (roc_auc, average_precision), each (B,) float64, NaN where undefined.
        """
        n_resamples = weights_t.shape[1]
        zero = np.zeros((1, n_resamples), dtype=np.int64)
        # Cumulative weights down the ranking, one column per resample (row k: the first k images).
        positive = np.concatenate([zero, np.cumsum(weights_t[self.positive_rows], axis=0, dtype=np.int64)])
        negative = np.concatenate([zero, np.cumsum(weights_t[self.negative_rows], axis=0, dtype=np.int64)])
        positives, negatives = positive[-1].astype(float), negative[-1].astype(float)
        true_positive = positive[self.pos_through].astype(float)  # (G, B) at the end of each run
        step = true_positive - positive[self.pos_before]  # the run's positive weight
        negative_through = negative[self.neg_through].astype(float)
        negative_before = negative[self.neg_before]
        # Each positive beats the negatives ranked below its run and ties half with those in it.
        beaten = negatives - 0.5 * (negative_through + negative_before)
        called = true_positive + negative_through
        precision = np.divide(true_positive, called, out=np.zeros_like(called), where=called > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            roc = np.einsum("gb,gb->b", step, beaten) / (positives * negatives)
            average_precision = np.einsum("gb,gb->b", step, precision) / positives
        roc[(positives == 0) | (negatives == 0)] = np.nan
        average_precision[positives == 0] = np.nan
        return roc, average_precision


def resample_metrics(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
    decision: Decision,
    weights: np.ndarray,
    n_bins: int = 10,
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every requested metric for every resample, vectorised over resamples.

    A row of ones reproduces components.metrics.classification_metrics on the split
    itself (same formulas and conventions).

    Args:
        y_true: (N,) int class indices into `class_names`.
        probabilities: (N, C) float class probabilities.
        class_names: the C class names in model output order.
        decision: how probabilities become a class (fixed across resamples).
        weights: (B, N) non-negative int counts, one row per resample (bootstrap_weights).
        n_bins: equal-width confidence bins for ECE and MCE.
        keys: the flat metric keys wanted (metric_keys); None: all of them.

    Returns:
        {key: (B,) float64}, NaN where the metric is undefined in that resample.

    Raises:
        MetricsInputError: arrays that do not fit the classes or each other.
        DecisionError: the decision does not apply to these classes.
        KeyError: an unknown key (the message lists the valid ones).
    """
    labels, probs = check_predictions(y_true, probabilities, class_names)
    weights = _check_weights(weights, len(labels))
    wanted = _check_keys(keys, class_names)
    n_images, n_classes = probs.shape
    index_of = {name: index for index, name in enumerate(class_names)}
    per_class = [key.split(":", 1) for key in wanted if ":" in key]  # [stat, class name]
    need_counts = any(key in COUNT_METRICS for key in wanted) or any(s in COUNT_CLASS_STATS for s, _ in per_class)
    need_calibration = any(key in LOWER_IS_BETTER for key in wanted)
    curve_classes = {index_of[name] for stat, name in per_class if stat in ("roc_auc", "pr_auc")}
    if {"roc_auc_macro", "pr_auc_macro"} & set(wanted):
        curve_classes = set(range(n_classes))
    cell_onehot = None
    if need_counts:
        cell_onehot = np.zeros((n_images, n_classes * n_classes))
        cell_onehot[np.arange(n_images), labels * n_classes + decision.predict(probs, class_names)] = 1.0
    ranked = {index: _RankedScores(probs[:, index], labels == index) for index in sorted(curve_classes)}

    n_resamples = weights.shape[0]
    out = {key: np.empty(n_resamples) for key in wanted}
    chunk = max(1, CHUNK_CELLS // n_images)
    for start in range(0, n_resamples, chunk):
        block = weights[start : start + chunk]
        rows = slice(start, start + len(block))
        values: dict[str, np.ndarray] = {}
        if need_counts:
            counts = (block.astype(float) @ cell_onehot).reshape(len(block), n_classes, n_classes)
            for key, array in confusion_statistics(counts).items():
                stat, _, index = key.partition(":")
                values[f"{stat}:{class_names[int(index)]}" if index else key] = array
        if need_calibration:
            values.update(calibration_statistics(block, labels, probs, n_bins))
        if curve_classes:
            block_t = np.ascontiguousarray(block.T)
            roc = np.full((len(block), n_classes), np.nan)
            average_precision = np.full((len(block), n_classes), np.nan)
            for index, scores in ranked.items():
                roc[:, index], average_precision[:, index] = scores.curves(block_t)
                values[f"roc_auc:{class_names[index]}"] = roc[:, index]
                values[f"pr_auc:{class_names[index]}"] = average_precision[:, index]
            for key, array in (("roc_auc_macro", roc), ("pr_auc_macro", average_precision)):
                defined = ~np.isnan(array)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values[key] = np.where(defined, array, 0.0).sum(axis=1) / defined.sum(axis=1)
        for key in wanted:
            out[key][rows] = values[key]
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """The percentile bootstrap interval of one metric, skipping undefined (NaN) resamples.

    Args:
        values: (B,) float resampled values; NaN where undefined.
        level: the coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles (linear interpolation).

    Returns:
        Interval(low, high); both None when every value is NaN.
    """
    values = np.asarray(values, dtype=float)
    defined = values[~np.isnan(values)]
    if len(defined) == 0:
        return Interval(low=None, high=None)
    low, high = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return Interval(low=float(low), high=float(high))


def metric_intervals(
    y_true: np.ndarray | Sequence[int],
    probabilities: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
    decision: Decision,
    weights: np.ndarray,
    level: float = 0.95,
    n_bins: int = 10,
    keys: Sequence[str] | None = None,
) -> dict[str, Interval]:
    """Percentile confidence intervals of the metrics over bootstrap resamples.

    Args:
        y_true: (N,) int class indices into `class_names`.
        probabilities: (N, C) float class probabilities.
        class_names: the C class names in model output order.
        decision: how probabilities become a class (the one the point estimates use).
        weights: (B, N) int resample weights (bootstrap_weights).
        level: the intervals' coverage (0.95: 2.5th to 97.5th percentile).
        n_bins: equal-width confidence bins for ECE and MCE.
        keys: the flat metric keys wanted; None: every key of metric_keys(class_names).

    Returns:
        {key: Interval}; an interval's bounds are None when the metric is undefined in every resample.

    Raises:
        MetricsInputError: arrays that do not fit the classes or each other.
        DecisionError: the decision does not apply to these classes.
        KeyError: an unknown key.
    """
    values = resample_metrics(y_true, probabilities, class_names, decision, weights, n_bins, keys)
    return {key: percentile_interval(array, level) for key, array in values.items()}


def paired_differences(
    y_true: np.ndarray | Sequence[int],
    candidate_probabilities: np.ndarray | Sequence[Sequence[float]],
    candidate_decision: Decision,
    baseline_probabilities: np.ndarray | Sequence[Sequence[float]],
    baseline_decision: Decision,
    class_names: Sequence[str],
    weights: np.ndarray,
    level: float = 0.95,
    n_bins: int = 10,
    keys: Sequence[str] | None = None,
) -> dict[str, Difference]:
    """Candidate minus baseline for each metric, with a paired bootstrap CI (the same resamples for both).

    Both models' predictions must be for the same images in the same order
    (components.assessment.Predictions.aligned). Each model keeps its own decision. The
    point difference is taken on the split itself; the interval is the percentile
    interval of the per-resample differences, over the resamples where the metric is
    defined for both models.

    Args:
        y_true: (N,) int class indices into `class_names`.
        candidate_probabilities: (N, C) float, the candidate's class probabilities.
        candidate_decision: the candidate's decision.
        baseline_probabilities: (N, C) float, the baseline's (champion's) probabilities for the same images.
        baseline_decision: the baseline's decision.
        class_names: the C class names in model output order.
        weights: (B, N) int resample weights (bootstrap_weights).
        level: the intervals' coverage.
        n_bins: equal-width confidence bins for ECE and MCE.
        keys: the flat metric keys wanted; None: all of them.

    Returns:
        {key: Difference(point, low, high)}: all None when undefined for either model.

    Raises:
        MetricsInputError: arrays that do not fit the classes or each other.
        DecisionError: a decision does not apply to these classes.
        KeyError: an unknown key.
    """
    ones = np.ones((1, len(np.asarray(y_true))), dtype=np.int32)
    args = (class_names,)
    candidate = resample_metrics(y_true, candidate_probabilities, *args, candidate_decision, weights, n_bins, keys)
    baseline = resample_metrics(y_true, baseline_probabilities, *args, baseline_decision, weights, n_bins, keys)
    candidate_point = resample_metrics(y_true, candidate_probabilities, *args, candidate_decision, ones, n_bins, keys)
    baseline_point = resample_metrics(y_true, baseline_probabilities, *args, baseline_decision, ones, n_bins, keys)
    differences = {}
    for key in candidate:
        point = float(candidate_point[key][0] - baseline_point[key][0])
        if np.isnan(point):
            differences[key] = Difference(point=None, low=None, high=None)
            continue
        interval = percentile_interval(candidate[key] - baseline[key], level)
        differences[key] = Difference(point=point, low=interval.low, high=interval.high)
    return differences
