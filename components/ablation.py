"""The paper's ablation (its Table 4): {augmentation on, off} x {transfer on, off} for one backbone.

Pure functions, no ZenML: which variants to train (`ablation_plan`), which run
config the ablation uses (`ablation_config`), the uncertainty of the results
(`ablation_intervals`: each variant's F1 CI from the patient bootstrap, and the
paired-bootstrap CI of its difference from the full model) and the table of
results (`ablation_table`). "Transfer off" trains the backbone from scratch
(`weights: none`); "transfer on" uses the backbone's configured weights
(`imagenet`, or a weights file). "Augmentation off" trains on the original
training images only (preset `none`, 0 copies per image).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.assessment import Predictions
from components.augmentation import enabled_operations, resolve_operations
from components.bootstrap import Difference, bootstrap_weights, metric_intervals, paired_differences
from components.config import (
    AugmentationConfig,
    BackboneConfig,
    ConfigError,
    EvaluationConfig,
    RunConfig,
    parse_run_config,
)
from components.labels import Task
from components.metrics import Decision, Interval


@dataclass(frozen=True)
class Variant:
    """One row of the paper's Table 4: augmentation on or off, transfer learning on or off."""

    key: str  # used in step ids: train_<key>, evaluate_<key>
    label: str  # the row label in the paper's table
    augmentation: bool
    transfer: bool


FULL = "full"
VARIANTS: tuple[Variant, ...] = (
    Variant(FULL, "Full model", augmentation=True, transfer=True),
    Variant("no_augmentation", "Without augmentation", augmentation=False, transfer=True),
    Variant("no_transfer", "Without transfer learning", augmentation=True, transfer=False),
    Variant("no_both", "Without both", augmentation=False, transfer=False),
)
VARIANTS_BY_KEY = {variant.key: variant for variant in VARIANTS}

# Table columns: (column title, metrics key). F1 first, then its difference from the full model.
F1_COLUMN = "F1 (macro)"
DELTA_COLUMN = "Δ F1 vs full"
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    (F1_COLUMN, "f1_macro"),
    ("Accuracy", "accuracy"),
    ("Precision (macro)", "precision_macro"),
    ("Recall (macro)", "recall_macro"),
)
COLUMNS = (F1_COLUMN, DELTA_COLUMN, *(title for title, _ in METRIC_COLUMNS[1:]))
# With intervals (ablation_table(..., intervals)): the bounds follow their estimate, named for the level
# ("F1 95% CI low"); Markdown shows each pair as one "[low, high]" column ("F1 95% CI").
CI_LOW, CI_HIGH = " CI low", " CI high"


def ablation_config(config: RunConfig, backbone: str | None = None, task: str | None = None) -> RunConfig:
    """The run config the ablation trains: one backbone (the first, or `backbone`), `task` if given.

    Raises ConfigError when the backbone is not in the config, or when the full
    model would equal one of its ablations (weights `none`, or no augmentation).
    """
    data = config.model_dump(mode="json")
    names = [entry["name"] for entry in data["backbones"]]
    if backbone is None:
        chosen = data["backbones"][0]
    elif backbone in names:
        chosen = data["backbones"][names.index(backbone)]
    else:
        raise ConfigError(f"backbone {backbone!r} is not in the run config; configured: {', '.join(names)}")
    weights = chosen["weights"]
    if weights not in ("imagenet", "none", "None", "") and "://" not in weights:
        path = Path(weights).expanduser().resolve()  # absolute: steps may run in another folder
        if not path.is_file():
            raise ConfigError(
                f"weights file {weights!r} for {chosen['name']} (the ablation's 'with transfer' variants) does not "
                "exist; see configs/ablation-quick.yaml for how to produce one, or use `weights: imagenet`"
            )
        chosen = {**chosen, "weights": str(path)}
    data["backbones"] = [chosen]
    if task is not None:
        data["task"] = task
    narrowed = parse_run_config(data, origin="(ablation)")
    ablation_plan(narrowed.backbones[0], narrowed.augmentation)
    return narrowed


class PlannedVariant(BaseModel):
    """One variant of the ablation and the backbone config it trains (weights `none` when transfer is off)."""

    key: str  # used in step ids: train_<key>, evaluate_<key>
    label: str  # the row label in the paper's table
    augmentation: bool
    transfer: bool
    backbone: BackboneConfig


class AblationSummary(BaseModel):
    """The ablation's result (the ZenML artifact `ablation_summary`): one row per variant, on one split.

    Each row maps ``Variant`` to the paper's row label and every column of
    COLUMNS to its value (NaN where a metric is missing).
    """

    backbone: str
    task: Task
    split: str
    n_images: int
    rows: list[dict[str, str | float | None]]  # None: NaN stored as JSON null
    mlflow_run_id: str | None


def ablation_plan(backbone: BackboneConfig, augmentation: AugmentationConfig) -> list[PlannedVariant]:
    """The four variants in the paper's order, each with the backbone config it trains.

    Raises:
        ConfigError: the backbone has no transfer weights (`weights: none`) or
            augmentation is off, so two variants would coincide.
    """
    if backbone.weights in ("none", "None", ""):
        raise ConfigError(
            f"the ablation needs transfer weights for {backbone.name} (weights: imagenet or a weights file); "
            "it has `weights: none`, so 'with transfer' would equal 'without transfer'"
        )
    operations = resolve_operations(augmentation.preset, augmentation.operations)
    if augmentation.copies_per_image < 1 or not enabled_operations(operations):
        raise ConfigError(
            "the ablation needs augmentation on in the run config (preset other than none, copies_per_image >= 1); "
            "otherwise 'with augmentation' would equal 'without augmentation'"
        )
    return [
        PlannedVariant(
            key=variant.key,
            label=variant.label,
            augmentation=variant.augmentation,
            transfer=variant.transfer,
            backbone=backbone if variant.transfer else backbone.model_copy(update={"weights": "none"}),
        )
        for variant in VARIANTS
    ]


class AblationIntervals(BaseModel):
    """The uncertainty of the ablation table: per variant its F1 (macro) CI and the paired CI of ΔF1 vs full.

    Every variant is resampled with the same ``n_resamples`` stratified patient-level
    resamples of the same images (components.bootstrap.bootstrap_weights of the full
    model's rows with ``seed``), so the differences are paired. ``delta`` of the full
    model is exactly 0 with the CI [0, 0] (the difference of a model with itself).
    """

    model_config = ConfigDict(frozen=True)

    split: str
    n_images: int
    n_patients: int
    confidence_level: float
    n_resamples: int
    seed: int
    f1: dict[str, Interval]  # variant key -> CI of its F1 (macro)
    delta: dict[str, Difference]  # variant key -> its F1 (macro) minus the full model's, with the paired CI


def _check_variants(keys: Mapping[str, Any], what: str) -> None:
    unknown = set(keys) - set(VARIANTS_BY_KEY)
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {sorted(unknown)}; valid: {', '.join(VARIANTS_BY_KEY)}")
    if FULL not in keys:
        raise ValueError(f"the ablation table needs the full model's {what} (variant 'full')")


def ablation_intervals(
    predictions: Mapping[str, Predictions],
    decisions: Mapping[str, Decision],
    config: EvaluationConfig,
    seed: int,
) -> AblationIntervals:
    """Each variant's F1 (macro) confidence interval, and the paired CI of its difference from the full model.

    The resamples are the stratified patient-level bootstrap of the full model's images
    (``bootstrap_weights(patient_ids, y_true, config.bootstrap_resamples, seed)``, the same
    resamples as components.assessment.assess of the full model's split with that seed);
    every variant's predictions are reordered to the full model's rows
    (Predictions.aligned) and scored on the same resamples, so ΔF1's interval comes
    from paired differences (components.bootstrap.paired_differences). Each variant
    keeps its own decision (the binary threshold it chose on validation), as in the table.

    Args:
        predictions: variant key (VARIANTS) -> its predictions of one split (the test split),
            all of the same images; the full model's is required.
        decisions: variant key -> the decision its point metrics use (Evaluation.decision).
        config: bootstrap_resamples, confidence_level and calibration_bins.
        seed: seeds the resamples; the same seed gives the same intervals.

    Returns:
        The AblationIntervals, keyed by the given variants.

    Raises:
        ValueError: an unknown variant, no full model, or a variant without a decision.
        PredictionsMismatchError: a variant's predictions are not of the full model's images
            (other images, classes or labels; the message names them).
        MetricsInputError: predictions without images.
    """
    _check_variants(predictions, "predictions")
    missing = [key for key in predictions if key not in decisions]
    if missing:
        raise ValueError(f"no decision given for ablation variant(s) {missing}")
    full = predictions[FULL]
    y_true, full_probabilities = full.arrays()
    weights = bootstrap_weights(full.patient_ids, y_true, config.bootstrap_resamples, seed)
    options = {"level": config.confidence_level, "n_bins": config.calibration_bins, "keys": ["f1_macro"]}
    f1: dict[str, Interval] = {}
    delta: dict[str, Difference] = {}
    for variant in VARIANTS:
        if variant.key not in predictions:
            continue
        _, probabilities = full.aligned(predictions[variant.key]).arrays()
        decision = decisions[variant.key]
        f1[variant.key] = metric_intervals(y_true, probabilities, full.class_names, decision, weights, **options)[
            "f1_macro"
        ]
        if variant.key == FULL:
            delta[FULL] = Difference(point=0.0, low=0.0, high=0.0)  # exactly 0 in every resample
            continue
        delta[variant.key] = paired_differences(
            y_true, probabilities, decision, full_probabilities, decisions[FULL], full.class_names, weights, **options
        )["f1_macro"]
    return AblationIntervals(
        split=full.split,
        n_images=len(full.keys),
        n_patients=len(set(full.patient_ids)),
        confidence_level=config.confidence_level,
        n_resamples=config.bootstrap_resamples,
        seed=seed,
        f1=f1,
        delta=delta,
    )


def ci_columns(title: str, level: float) -> tuple[str, str]:
    """The table's columns of the bounds of a CI: ("F1 95% CI low", "F1 95% CI high") for ("F1", 0.95)."""
    name = f"{title} {level * 100:g}%"
    return name + CI_LOW, name + CI_HIGH


def _bound(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def ablation_table(
    metrics: dict[str, dict[str, Any]], intervals: AblationIntervals | None = None
) -> tuple[pd.DataFrame, str]:
    """{variant key: metrics dict (f1_macro, accuracy, ...)} -> (DataFrame, Markdown table).

    Rows are the paper's variants in its order (those given; the full model is
    required); columns: F1 (macro), Δ F1 vs full, accuracy, precision, recall.
    A metric missing from a variant's dict is left empty (NaN). With `intervals`
    (ablation_intervals) the F1 column is followed by its CI's bounds
    (``"F1 95% CI low"``, ``"F1 95% CI high"``) and the Δ column by the paired CI's
    (``"Δ F1 95% CI low"``, ...); the Markdown shows each pair as ``[low, high]``.

    Raises:
        ValueError: an unknown variant or no full model (in `metrics`), or `intervals`
            that lack a variant of `metrics`.
    """
    _check_variants(metrics, "metrics")
    if intervals is not None:
        lacking = [key for key in metrics if key not in intervals.f1 or key not in intervals.delta]
        if lacking:
            raise ValueError(f"the ablation intervals have no entry for variant(s) {lacking}")
    full_f1 = float(metrics[FULL]["f1_macro"])
    columns = list(COLUMNS)
    if intervals is not None:
        f1_bounds = ci_columns("F1", intervals.confidence_level)
        delta_bounds = ci_columns("Δ F1", intervals.confidence_level)
        columns[columns.index(F1_COLUMN) + 1 : columns.index(F1_COLUMN) + 1] = f1_bounds
        columns[columns.index(DELTA_COLUMN) + 1 : columns.index(DELTA_COLUMN) + 1] = delta_bounds
    rows = []
    for variant in VARIANTS:
        if variant.key not in metrics:
            continue
        values = metrics[variant.key]
        row: dict[str, Any] = {"Variant": variant.label}
        for title, key in METRIC_COLUMNS:
            row[title] = float(values[key]) if values.get(key) is not None else float("nan")
        row[DELTA_COLUMN] = row[F1_COLUMN] - full_f1
        if intervals is not None:
            f1, delta = intervals.f1[variant.key], intervals.delta[variant.key]
            row.update(zip(f1_bounds, (_bound(f1.low), _bound(f1.high)), strict=True))
            row.update(zip(delta_bounds, (_bound(delta.low), _bound(delta.high)), strict=True))
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("Variant")[columns]
    frame.loc[VARIANTS_BY_KEY[FULL].label, DELTA_COLUMN] = 0.0  # exactly 0, not f - f
    return frame, to_markdown(frame)


def _number(column: str, value: float) -> str:
    if pd.isna(value):
        return "–"
    if column.startswith("Δ"):
        return "0.0000" if value == 0 else f"{value:+.4f}"
    return f"{value:.4f}"


def _markdown_columns(frame: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(header, frame columns) per Markdown column: a CI's low and high bounds become one column."""
    out: list[tuple[str, list[str]]] = []
    for column in frame.columns:
        if column.endswith(CI_HIGH) and out and out[-1][1][0] == column.removesuffix(CI_HIGH) + CI_LOW:
            out[-1] = (column.removesuffix(CI_HIGH) + " CI", [out[-1][1][0], column])
        else:
            out.append((column, [column]))
    return out


def _cell(columns: list[str], row: pd.Series) -> str:
    if len(columns) == 1:
        return _number(columns[0], row[columns[0]])
    low, high = (row[column] for column in columns)
    if pd.isna(low) or pd.isna(high):
        return "–"
    return f"[{_number(columns[0], low)}, {_number(columns[1], high)}]"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency); numbers to 4 decimals.

    A pair of columns "<name> CI low", "<name> CI high" (ablation_table with intervals)
    is shown as one column "<name> CI" holding ``[low, high]`` ("–" when undefined).
    """
    columns = _markdown_columns(frame)
    header = [frame.index.name or "", *(title for title, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([str(label), *(_cell(names, row) for _, names in columns)]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame) -> str:
    """The ablation table as CSV text (floats to 6 decimals, the variant label as first column).

    With intervals, each CI bound is its own column ("F1 95% CI low", ...); NaN is an empty field.
    """
    buffer = io.StringIO()
    frame.to_csv(buffer, float_format="%.6f")
    return buffer.getvalue()
