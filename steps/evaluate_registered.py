"""Evaluate a registered model version on an evaluation drop (`cxr evaluate`): assessments, the card, one tag."""

from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from components.assessment import assess
from components.config import EvaluationConfig
from components.evaluation import EXTERNAL_PREFIX, evaluated_splits, predict_with_version, predictions_from
from components.evaluation_card import EvaluationCard, build_card, make_examples, write_card
from components.labels import TASK_LABELS, Task
from components.leakage import overlap_with
from components.manifest import dataset_version
from components.metrics import flat_metrics
from components.registered_evaluation import (
    NothingUnseenError,
    card_folder_name,
    check_model_contract,
    evaluated_on_tag,
    evaluation_summary,
    model_contract,
    parse_model_reference,
    pooled_predictions,
    resolve_model_version,
)
from components.registry import TAG_BACKBONE, TAG_DATASET_VERSION, decision_of, load_evidence, split_fingerprint
from components.splitting import EXTERNAL
from steps.names import EVALUATION_CARD, EVALUATION_CARD_HTML, EXPERIMENT_TRACKER

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def evaluate_registered_model(
    manifest: pd.DataFrame,
    split_manifest: pd.DataFrame,
    model_uri: str,
    task: Task,
    evaluation: EvaluationConfig,
    seed: int,
    run_name: str,
    reports_dir: str,
) -> tuple[
    Annotated[EvaluationCard, EVALUATION_CARD],
    Annotated[HTMLString, EVALUATION_CARD_HTML],
]:
    """Assess the version `model_uri` names on each source of the drop with its recorded decision rule.

    Images the version trained or was selected on (its recorded training and validation images,
    components.leakage) are left out and listed on the card with their reason.

    Writes the card under ``<reports_dir>/evaluation/<name>-v<version>-on-<dataset version>/``, logs it
    to this step's MLflow run and tags the version ``evaluated_on.<dataset version>`` with its URI.
    No alias moves.
    """
    client = MlflowClient()
    reference = parse_model_reference(model_uri)
    version = resolve_model_version(client, reference)
    number = str(version.version)
    pinned = f"models:/{reference.name}/{number}"
    class_names = list(TASK_LABELS[task])
    check_model_contract(model_contract(pinned), pinned, task, class_names)
    decision = decision_of(version)
    data_version = dataset_version(manifest)

    rows_by_split = [
        (name, rows) for name, rows in evaluated_splits(split_manifest) if name.startswith(EXTERNAL_PREFIX)
    ]
    empty = [
        predictions_from(rows, name, class_names, np.zeros((len(rows), len(class_names))))
        for name, rows in rows_by_split
    ]
    evidence = load_evidence(client, version)
    seen = None if evidence is None else evidence.images
    left_out = []
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
        if left_out:
            logger.warning(
                "Left out %d image(s) that %s v%s trained or was selected on: %s",
                len(left_out),
                reference.name,
                number,
                "; ".join(o.describe() for o in overlaps if o.excluded),
            )
    logger.info("Predicting with %s (%s) on %s", pinned, model_uri, ", ".join(p.split for p in empty))
    predictions = predict_with_version(pinned, empty)
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
    by_split = {p.split: p for p in predictions}
    folder = Path(reports_dir) / "evaluation" / card_folder_name(reference.name, number, data_version)
    html_path, json_path = write_card(card, by_split, folder)

    for assessment in assessments:
        mlflow.log_metrics(flat_metrics(assessment.metrics, prefix=f"{assessment.split}_"))
    mlflow.log_artifact(str(html_path), "evaluation")
    mlflow.log_artifact(str(json_path), "evaluation")
    run_id = mlflow.active_run().info.run_id
    card_uri = f"runs:/{run_id}/evaluation/{html_path.name}"
    mlflow.set_tags(
        {
            "model_name": reference.name,
            "model_version": number,
            "model_uri": model_uri,
            "dataset_version": data_version,
            "decision": decision.describe(),
        }
    )
    client.set_model_version_tag(reference.name, number, evaluated_on_tag(data_version), card_uri)
    log_metadata(
        metadata={"path": str(html_path), "json": str(json_path), "mlflow": card_uri, "mlflow_run_id": run_id},
        artifact_name=EVALUATION_CARD_HTML,
        infer_artifact=True,
    )
    logger.info("%s version %s on data version %s: card %s", reference.name, number, data_version, html_path)
    return card, HTMLString(html_path.read_text(encoding="utf-8"))
