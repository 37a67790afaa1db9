"""The evaluation card of a registered version on a labelled drop: shared by `cxr evaluate` and `cxr predict-batch`.

``evaluate_on_drop`` leaves out the images the version trained or was selected on (components.leakage,
when its images are recorded), has the caller predict the rest (in-process with the registered model
for `cxr evaluate`; the batch's own forward pass for `cxr predict-batch`), assesses each source with
the version's recorded decision rule and writes the card.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.assessment import Assessment, Predictions, assess
from components.config import EvaluationConfig
from components.evaluation import predictions_from
from components.evaluation_card import EvaluationCard, build_card, make_examples, write_card
from components.leakage import ExcludedImage, overlap_with
from components.registered_evaluation import (
    ModelReference,
    NothingUnseenError,
    evaluation_summary,
    pooled_predictions,
)
from components.registry import TAG_BACKBONE, TAG_DATASET_VERSION, decision_of, load_evidence, split_fingerprint
from components.splitting import EXTERNAL

__all__ = ["DropEvaluation", "evaluate_on_drop"]


@dataclass(frozen=True)
class DropEvaluation:
    """A written card: the card, its files, what was assessed and what was left out."""

    card: EvaluationCard
    html: Path
    json: Path
    assessments: list[Assessment]
    predictions: list[Predictions]
    left_out: list[ExcludedImage]


def evaluate_on_drop(
    client: Any,
    reference: ModelReference,
    version: Any,
    rows_by_split: list[tuple[str, pd.DataFrame]],
    predict: Callable[[list[Predictions]], list[Predictions]],
    class_names: list[str],
    task: str,
    evaluation: EvaluationConfig,
    seed: int,
    run_name: str,
    data_version: str,
    folder: Path,
) -> DropEvaluation:
    """Assess a registered version on each labelled source of a drop and write its evaluation card.

    Args:
        client: MLflow client of the registry (the version's evidence is read through it).
        reference: the model reference as given (models:/name@alias or /version).
        version: the resolved mlflow ModelVersion.
        rows_by_split: ("external:<source>", labelled manifest rows) per source.
        predict: fills Predictions whose probabilities are zeros with the version's probabilities,
            same images, same order.
        class_names: the model's classes, in output order.
        task: "binary" or "multiclass".
        evaluation: the run config's evaluation section (bootstrap, slices, examples).
        seed: the bootstrap's seed.
        run_name: the run config's name.
        data_version: the drop's dataset version.
        folder: where the card's HTML and JSON are written.

    Returns:
        The DropEvaluation.

    Raises:
        NothingUnseenError: every image was in the version's training or validation data.
    """
    number = str(version.version)
    empty = [
        predictions_from(rows, name, class_names, np.zeros((len(rows), len(class_names))))
        for name, rows in rows_by_split
    ]
    evidence = load_evidence(client, version)
    seen = None if evidence is None else evidence.images
    left_out: list[ExcludedImage] = []
    if seen is not None:
        overlaps = [
            overlap_with(p, rows["phash"].fillna("").astype(str).tolist(), seen, number)
            for p, (_, rows) in zip(empty, rows_by_split, strict=True)
        ]
        left_out = [image for overlap in overlaps for image in overlap.excluded]
        empty = [p.subset(o.kept) for p, o in zip(empty, overlaps, strict=True) if o.kept]
        if not empty:
            raise NothingUnseenError(
                f"every one of the {len(left_out)} images of this drop was in the training or validation data of "
                f"{reference.name} v{number} (same bytes, same patient or a near-copy): nothing left to evaluate it on"
            )
    predictions = predict(empty)
    decision = decision_of(version)
    assessments = [assess(p, decision, evaluation, seed) for p in predictions]
    pooled = pooled_predictions(predictions, EXTERNAL)
    card = build_card(
        model_name=reference.name,
        model_version=number,
        backbone=(version.tags or {}).get(TAG_BACKBONE, "unknown"),
        task=task,
        dataset_version=data_version,
        test_fingerprint=split_fingerprint(pooled.keys),
        decision=decision,
        run_name=run_name,
        assessments=assessments,
        examples=make_examples(pooled, decision, evaluation.card_examples),
        decision_summary=evaluation_summary(
            reference,
            number,
            data_version,
            decision.describe(),
            (version.tags or {}).get(TAG_DATASET_VERSION),
            images_recorded=seen is not None,
            n_left_out=len(left_out),
        ),
        left_out=left_out,
        left_out_note=(
            f"Left out of this evaluation: {reference.name} v{number} trained or was selected on these images "
            "(or their patients, or near-copies)."
        ),
    )
    html_path, json_path = write_card(card, {p.split: p for p in predictions}, folder)
    return DropEvaluation(card, html_path, json_path, assessments, predictions, left_out)
