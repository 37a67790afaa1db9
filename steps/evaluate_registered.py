"""Evaluate a registered model version on an evaluation drop (`cxr evaluate`): assessments, the card, one tag."""

from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from components.config import EvaluationConfig
from components.drop_evaluation import evaluate_on_drop
from components.evaluation import EXTERNAL_PREFIX, evaluated_splits, predict_with_version
from components.evaluation_card import EvaluationCard
from components.labels import TASK_LABELS, Task
from components.manifest import dataset_version
from components.metrics import flat_metrics
from components.registered_evaluation import (
    card_folder_name,
    check_model_contract,
    evaluated_on_tag,
    model_contract,
    parse_model_reference,
    resolve_model_version,
)
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
    rows_by_split = [
        (name, rows) for name, rows in evaluated_splits(split_manifest) if name.startswith(EXTERNAL_PREFIX)
    ]
    data_version = dataset_version(manifest)
    folder = Path(reports_dir) / "evaluation" / card_folder_name(reference.name, number, data_version)

    def predict(empty):
        logger.info("Predicting with %s (%s) on %s", pinned, model_uri, ", ".join(p.split for p in empty))
        return predict_with_version(pinned, empty)

    result = evaluate_on_drop(
        client,
        reference,
        version,
        rows_by_split,
        predict,
        class_names,
        task,
        evaluation,
        seed,
        run_name,
        data_version,
        folder,
    )
    if result.left_out:
        logger.warning(
            "Left out %d image(s) that %s v%s trained or was selected on", len(result.left_out), reference.name, number
        )
    card, assessments, html_path, json_path = result.card, result.assessments, result.html, result.json
    decision = card.decision

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
