"""Batch inference (`cxr predict-batch`, pipelines/batch_inference.py): pure pieces.

A batch is a data drop of new images, labelled or not (the ``images`` source kind holds
unlabelled files; any other kind may be scored too). Its rows are the ingest's manifest with
three changes (``inference_manifest``): a row excluded only for its label (unlabelled, unknown
finding, finding outside the task) is scored, with no reference label; byte-identical repeats
among those rows are excluded as duplicates (ingest marks duplicates among labelled rows only);
an image below the validation minimum (``validation.min_width`` x ``min_height``, the same limit
as training and serving) is excluded as too small. Every excluded row stays listed with its
reason.

Scoring (``score_images``) is one forward pass of the registered Keras model per chunk of
decoded images: the class probabilities and the penultimate-layer embedding together
(components.ood.with_embedding), as the served model computes them, with the same
preprocessing (components.imaging.load_images, as evaluation). The embedding feeds the input
drift check (components.drift) and the out-of-distribution score (components.ood).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.labels import EXCLUDE_OUT_OF_TASK, EXCLUDE_UNKNOWN_FINDING, EXCLUDE_UNLABELLED
from components.manifest import included, mark_duplicates

__all__ = [
    "BATCH_COLUMNS",
    "EXCLUDE_TOO_SMALL",
    "LABEL_REASONS",
    "BatchSummary",
    "ScoredImages",
    "inference_manifest",
    "predictions_table",
    "score_images",
]

EXCLUDE_TOO_SMALL = "image too small"
# Reasons that only say the label is missing or outside the task: such an image is still scored.
LABEL_REASONS = frozenset({EXCLUDE_UNLABELLED, EXCLUDE_UNKNOWN_FINDING, EXCLUDE_OUT_OF_TASK})
# The leading columns of a predictions table; one prob_<class> column per class follows `patient_id`.
BATCH_COLUMNS = ("uri", "source", "patient_id")


def inference_manifest(manifest: pd.DataFrame, min_width: int, min_height: int) -> pd.DataFrame:
    """The manifest of a batch: label-only exclusions lifted, duplicates and too-small images excluded.

    Args:
        manifest: the ingest's manifest (components.manifest.MANIFEST_COLUMNS).
        min_width: minimum width in pixels (ValidationConfig.min_width).
        min_height: minimum height in pixels (ValidationConfig.min_height).

    Returns:
        A copy with the same rows and columns. Rows to score have ``exclusion_reason`` "" (their
        ``label`` is the reference label, "" when unknown); every other row keeps or gets its reason
        and a detail.
    """
    result = manifest.copy()
    label_only = result["exclusion_reason"].isin(LABEL_REASONS)
    result.loc[label_only, ["exclusion_reason", "exclusion_detail", "label"]] = ""
    small = (result["exclusion_reason"] == "") & ((result["width"] < min_width) | (result["height"] < min_height))
    result.loc[small, "exclusion_reason"] = EXCLUDE_TOO_SMALL
    result.loc[small, "exclusion_detail"] = [
        f"{w} x {h} px, below the minimum {min_width} x {min_height} px (validation.min_width, min_height)"
        for w, h in zip(result.loc[small, "width"], result.loc[small, "height"], strict=True)
    ]
    return mark_duplicates(result)


@dataclass(frozen=True)
class ScoredImages:
    """One forward pass over a batch's images.

    Attributes:
        probabilities: float64 (N, C) class probabilities (rows sum to 1).
        embeddings: float32 (N, D) penultimate-layer embeddings (components.ood.embedding_layer).
        grays: uint8 (N, S, S) the model-input images (for image statistics and the report).
    """

    probabilities: np.ndarray
    embeddings: np.ndarray
    grays: np.ndarray


def score_images(model: Any, uris: list[str], image_size: int, num_classes: int, batch_size: int = 64) -> ScoredImages:
    """Decode, resize and run a classifier on images, `batch_size` at a time.

    Args:
        model: the Keras classifier (components.backbones.build_classifier), e.g. the registered pyfunc's
            ``unwrap_python_model().model``.
        uris: local paths or ``s3://`` URIs of decodable images (the manifest's used rows).
        image_size: the model's input side S in pixels.
        num_classes: the task's classes (2: one sigmoid output).
        batch_size: images decoded and predicted together (memory: about batch_size x S x S x 12 bytes).

    Returns:
        ScoredImages (N = len(uris)).

    Raises:
        MissingFileError, StorageError, ImageDecodeError: a file cannot be read or decoded
            (components.imaging.load_images; the message names it).
        OodReferenceError: the model has no embedding layer.
    """
    from components.backbones import probabilities
    from components.imaging import load_images
    from components.ood import embedding_layer, with_embedding

    runner = with_embedding(model, embedding_layer(model))
    dimension = int(runner.outputs[1].shape[-1])
    probs, embeddings, grays = [], [], np.zeros((len(uris), image_size, image_size), dtype=np.uint8)
    for start in range(0, len(uris), batch_size):
        chunk = load_images(uris[start : start + batch_size], image_size)
        grays[start : start + len(chunk)] = chunk
        output, embedding = runner.predict_on_batch(np.repeat(chunk.astype(np.float32)[..., None], 3, axis=3))
        probs.append(probabilities(output, num_classes))
        embeddings.append(np.asarray(embedding, dtype=np.float32))
    if not uris:
        return ScoredImages(np.zeros((0, num_classes)), np.zeros((0, dimension), np.float32), grays)
    return ScoredImages(np.concatenate(probs), np.concatenate(embeddings), grays)


def predictions_table(
    rows: pd.DataFrame,
    probs: np.ndarray,
    class_names: list[str],
    ood_scores: np.ndarray | None,
    ood_threshold: float | None,
    model_version: str,
    dataset_version: str,
) -> pd.DataFrame:
    """The batch's predictions, one row per scored image.

    Args:
        rows: the scored manifest rows (``uri``, ``source``, ``patient_id``, ``label``), N rows.
        probs: float (N, C) class probabilities, in `class_names` order.
        class_names: the model's classes.
        ood_scores: float (N,) out-of-distribution scores (components.ood), or None when the model
            has no OOD reference.
        ood_threshold: scores above it are flagged ``ood``; None without a reference.
        model_version: ``<name>/<version>`` of the registered model.
        dataset_version: the batch's dataset version (components.manifest.dataset_version).

    Returns:
        Columns uri, source, patient_id, prob_<class> per class (float64), label (argmax class name),
        confidence (max probability), ood_score (float64, NaN without reference), ood (bool),
        reference_label (the drop's own label, "" when unknown), model_version, dataset_version.
    """
    from components.serving import prob_column

    probs = np.asarray(probs, dtype=np.float64)
    table = rows.loc[:, list(BATCH_COLUMNS)].reset_index(drop=True).astype(str)
    for index, name in enumerate(class_names):
        table[prob_column(name)] = probs[:, index] if len(probs) else np.zeros(0)
    table["label"] = [class_names[i] for i in probs.argmax(axis=1)] if len(probs) else []
    table["confidence"] = probs.max(axis=1) if len(probs) else np.zeros(0)
    scores = np.full(len(table), np.nan) if ood_scores is None else np.asarray(ood_scores, dtype=np.float64)
    table["ood_score"] = scores
    table["ood"] = scores > ood_threshold if ood_threshold is not None else np.zeros(len(table), dtype=bool)
    table["reference_label"] = rows["label"].astype(str).to_numpy()
    table["model_version"] = model_version
    table["dataset_version"] = dataset_version
    return table


class BatchSummary(BaseModel):
    """What `cxr predict-batch` prints and writes with --summary-json."""

    model_config = ConfigDict(extra="forbid")

    run_name: str
    model_uri: str  # as configured or given: models:/<name>@<alias> or models:/<name>/<version>
    model_name: str
    version: str  # resolved when the run started
    dataset_version: str
    images: int  # rows of the drop's manifest
    scored: int  # usable images (checked for drift; predicted unless a blocking drift stopped the run)
    # Of those, images the version trained or was selected on (None: its images are not recorded): drift
    # against them is expected, their embeddings sit closer to the class means than new images'.
    seen_by_version: int | None = None
    excluded: dict[str, int]  # reason -> rows
    predicted: dict[str, int]  # class -> images
    ood_flagged: int
    input_drift: str  # verdict: blocked / warning / passed / not checked
    input_drift_summary: str
    blocking_features: list[str] = []
    output_drift: str
    output_drift_summary: str
    predictions_parquet: str | None  # None when a blocking drift stopped the run before predictions were written
    predictions_csv: str | None
    report: str
    evaluation_card: str | None = None  # the card on the labelled rows (None: no labelled row it had not seen)
    mlflow_run_id: str | None


def used_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows of an inference manifest that are scored (no exclusion reason), re-indexed from 0."""
    return included(manifest)
