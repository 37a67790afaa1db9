"""Batch inference (`cxr predict-batch`): score a drop with a registered model, check drift, write the outputs."""

from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from components.batch import BatchSummary, inference_manifest
from components.batch_inference import (
    BatchDriftError,
    NothingToScoreError,
    batch_folder_name,
    build_page,
    evaluate_labelled,
    load_drift_reference,
    load_registered_classifier,
    run_batch,
    seen_by_version,
)
from components.batch_report import batch_report_html
from components.config import BatchConfig, EvaluationConfig
from components.labels import Task
from components.manifest import dataset_version, exclusion_summary
from components.validation.settings import ValidationConfig
from steps.names import BATCH_PREDICTIONS, BATCH_REPORT, BATCH_SUMMARY, EXPERIMENT_TRACKER

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def predict_batch(
    manifest: pd.DataFrame,
    model_uri: str,
    task: Task,
    validation: ValidationConfig,
    batch: BatchConfig,
    evaluation: EvaluationConfig,
    seed: int,
    run_name: str,
    reports_dir: str,
) -> tuple[
    Annotated[pd.DataFrame, BATCH_PREDICTIONS],
    Annotated[HTMLString, BATCH_REPORT],
    Annotated[BatchSummary, BATCH_SUMMARY],
]:
    """Score every usable image of the drop with the version `model_uri` names (an alias resolved now).

    When rows carry labels, the version's evaluation card on them (per source, images it saw left
    out) is written beside the predictions, from the same forward pass.

    Input drift against the version's drift reference is checked on the forward pass's embeddings
    and image statistics before anything is written; a blocking drift writes the report (no
    predictions) and raises BatchDriftError. Otherwise the predictions (Parquet and CSV), the
    excluded rows (CSV), the drift reports (JSON) and the HTML report are written under
    ``<reports_dir>/batch/<name>-v<version>-on-<dataset version>/`` and logged to this step's MLflow run.
    """
    client = MlflowClient()
    run = get_step_context().pipeline_run.name  # the ZenML run's name, as the dashboard and MLflow show it
    classifier = load_registered_classifier(client, model_uri, task)
    rows = inference_manifest(manifest, validation.min_width, validation.min_height)
    data_version = dataset_version(manifest)
    reference = load_drift_reference(client, classifier)
    folder = Path(reports_dir) / "batch" / batch_folder_name(classifier.name, classifier.version, data_version)
    result = run_batch(classifier, rows, reference, batch, data_version, folder)
    seen = seen_by_version(client, classifier, result.scored_rows)
    card = None
    if not result.input_drift.blocking and result.scored:
        card = evaluate_labelled(
            client, model_uri, classifier, result, task, evaluation, seed, run, data_version, folder / "evaluation"
        )
    page = build_page(classifier, result, batch, run, data_version, seen)
    if card is not None:
        page.outputs.append(("Evaluation card (labelled rows)", str(card.html)))
    report = folder / "report.html"
    report.write_text(batch_report_html(page), encoding="utf-8")

    output_verdict = result.output_drift.verdict if result.output_drift else "not checked"
    mlflow.set_tags(
        {
            "model_name": classifier.name,
            "model_version": classifier.version,
            "model_uri": model_uri,
            "dataset_version": data_version,
            "input_drift": result.input_drift.verdict,
            "output_drift": output_verdict,
        }
    )
    mlflow.log_metrics(
        {"images": len(rows), "scored": result.scored, "ood_flagged": result.ood_flagged, "excluded": result.excluded}
    )
    run_id = mlflow.active_run().info.run_id
    summary = BatchSummary(
        run_name=run,
        model_uri=model_uri,
        model_name=classifier.name,
        version=classifier.version,
        dataset_version=data_version,
        images=len(rows),
        scored=result.scored,
        seen_by_version=seen,
        excluded=exclusion_summary(rows),
        predicted=result.predicted,
        ood_flagged=result.ood_flagged,
        input_drift=result.input_drift.verdict,
        input_drift_summary=result.input_drift.summary(),
        blocking_features=result.input_drift.blocking,
        output_drift=output_verdict,
        output_drift_summary=result.output_drift.summary() if result.output_drift else "",
        predictions_parquet=str(result.parquet) if result.parquet else None,
        predictions_csv=str(result.csv) if result.csv else None,
        report=str(report),
        evaluation_card=str(card.html) if card is not None else None,
        mlflow_run_id=run_id,
    )
    # Written last: a folder without summary.json is a run that did not finish (killed).
    (folder / "summary.json").write_text(summary.model_dump_json(indent=2), encoding="utf-8")
    mlflow.log_artifacts(str(folder), "batch")
    if result.input_drift.blocking:
        raise BatchDriftError(summary)
    if not result.scored:
        raise NothingToScoreError(summary)
    log_metadata(
        metadata={"path": str(report), "mlflow_run_id": run_id, "input_drift": result.input_drift.verdict},
        artifact_name=BATCH_REPORT,
        infer_artifact=True,
    )
    logger.info(
        "%s v%s scored %d image(s) of %s: %s", classifier.name, classifier.version, result.scored, data_version, report
    )
    return result.predictions, HTMLString(report.read_text(encoding="utf-8")), summary
