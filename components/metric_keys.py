"""The flat metric keys: what a run config may name (gate floors, primary metric) and SplitMetrics.scalar reads.

Kept apart from components.metrics so that the config schema can check a key
without importing the metric code (which imports the config).
"""

from __future__ import annotations

from collections.abc import Sequence

SCALAR_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "specificity_macro",
    "roc_auc_macro",
    "pr_auc_macro",
    "brier",
    "ece",
    "mce",
)
# Per-class metrics: flat key "{stat}:{class}", e.g. "sensitivity:COVID-19".
PER_CLASS_STATS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc")
LOWER_IS_BETTER = ("brier", "ece", "mce")


def metric_keys(class_names: Sequence[str]) -> list[str]:
    """Every flat metric key for these classes: the overall ones, then ``"{stat}:{class}"`` per class.

    Args:
        class_names: the C class names in model output order.

    Returns:
        SCALAR_METRICS followed by ``f"{stat}:{name}"`` for each class and each stat of PER_CLASS_STATS.
    """
    return list(SCALAR_METRICS) + [f"{stat}:{name}" for name in class_names for stat in PER_CLASS_STATS]
