"""The paper's ablation (its Table 4): {augmentation on, off} x {transfer on, off} for one backbone.

Pure functions, no ZenML: which variants to train (`ablation_plan`), which run
config the ablation uses (`ablation_config`) and the table of results
(`ablation_table`). "Transfer off" trains the backbone from scratch
(`weights: none`); "transfer on" uses the backbone's configured weights
(`imagenet`, or a weights file). "Augmentation off" trains on the original
training images only (preset `none`, 0 copies per image).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from components.augmentation import enabled_operations, resolve_operations
from components.config import AugmentationConfig, BackboneConfig, ConfigError, RunConfig, parse_run_config
from components.labels import Task


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
    rows: list[dict[str, str | float]]
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


def ablation_table(metrics: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, str]:
    """{variant key: metrics dict (f1_macro, accuracy, ...)} -> (DataFrame, Markdown table).

    Rows are the paper's variants in its order (those given; the full model is
    required); columns: F1 (macro), Δ F1 vs full, accuracy, precision, recall.
    A metric missing from a variant's dict is left empty (NaN).
    """
    unknown = set(metrics) - set(VARIANTS_BY_KEY)
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {sorted(unknown)}; valid: {', '.join(VARIANTS_BY_KEY)}")
    if FULL not in metrics:
        raise ValueError("the ablation table needs the full model's metrics (variant 'full')")
    full_f1 = float(metrics[FULL]["f1_macro"])
    rows = []
    for variant in VARIANTS:
        if variant.key not in metrics:
            continue
        values = metrics[variant.key]
        row: dict[str, Any] = {"Variant": variant.label}
        for title, key in METRIC_COLUMNS:
            row[title] = float(values[key]) if values.get(key) is not None else float("nan")
        row[DELTA_COLUMN] = row[F1_COLUMN] - full_f1
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("Variant")[list(COLUMNS)]
    frame.loc[VARIANTS_BY_KEY[FULL].label, DELTA_COLUMN] = 0.0  # exactly 0, not f - f
    return frame, to_markdown(frame)


def _cell(column: str, value: float) -> str:
    if pd.isna(value):
        return "–"
    if column == DELTA_COLUMN:
        return "0.0000" if value == 0 else f"{value:+.4f}"
    return f"{value:.4f}"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency); numbers to 4 decimals."""
    header = [frame.index.name or "", *frame.columns]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(frame.columns)]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([str(label), *(_cell(column, row[column]) for column in frame.columns)]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame) -> str:
    """The ablation table as CSV text (floats to 6 decimals, the variant label as first column)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, float_format="%.6f")
    return buffer.getvalue()
