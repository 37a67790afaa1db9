"""Great Expectations on the manifest and on the split, then the data steward's report and the gate.

Validation steps never fail the run themselves: the steward's report is built
from both validations first, and `data_gate` stops the run afterwards when a
blocking expectation failed. A blocked run thus still leaves its report.
The reports and the steward summary are pydantic models (ZenML's pydantic
materializer stores them as JSON and shows them in the dashboard).
"""

import logging
from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import CSVString, HTMLString

from components.data_decisions import validation_from_summary, version_tags
from components.labels import Task
from components.manifest import dataset_version
from components.splitting import TRAINING, DataPurpose
from components.steward_report import SUMMARY_HTML, StewardSummary, build_summary, write_steward_report
from components.validation import (
    ValidationConfig,
    ValidationReport,
    raise_if_blocking,
    validate_manifest,
    validate_split,
)
from steps.names import (
    DATA_DOCS_INDEX,
    EXCLUDED_ROWS,
    EXPERIMENT_TRACKER,
    SPLIT_VALIDATION_REPORT,
    STEWARD_REPORT,
    STEWARD_SUMMARY,
    VALIDATION_REPORT,
)

logger = get_logger(__name__)


def _quiet_gx() -> None:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _run_folder(folder: str) -> Path:
    """`folder`/<pipeline run>: one Data Docs site and one report folder per run (a shared site
    would re-render every earlier run's results on each build, growing without bound)."""
    return Path(folder) / get_step_context().pipeline_run.name


def _log_report(report: ValidationReport, metric: str) -> None:
    logger.info("Data validation (%s):\n%s", report.stage, report.summary)
    mlflow.log_dict(report.model_dump(mode="json"), f"data_validation/{report.stage}_report.json")
    mlflow.log_metric(metric, float(report.success))


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def validate_data(
    manifest: pd.DataFrame, task: Task, docs_dir: str, checks: ValidationConfig, purpose: DataPurpose = TRAINING
) -> tuple[Annotated[ValidationReport, VALIDATION_REPORT], Annotated[str, DATA_DOCS_INDEX]]:
    """The manifest suite (files, labels, duplicates, sources, views); reports, never raises.
    Purpose "evaluation" skips the training thresholds (components.validation.validate_manifest)."""
    _quiet_gx()
    report = validate_manifest(manifest, task, _run_folder(docs_dir), checks, purpose=purpose)
    _log_report(report, "data_validation_success")
    return report, report.data_docs_index


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def validate_data_split(
    split_manifest: pd.DataFrame, task: Task, docs_dir: str, checks: ValidationConfig, purpose: DataPurpose = TRAINING
) -> Annotated[ValidationReport, SPLIT_VALIDATION_REPORT]:
    """The split suite (patient and near-duplicate leaks, external included; images per class and
    training split); never raises. Purpose "evaluation": every row external, no per-split minimum."""
    _quiet_gx()
    report = validate_split(split_manifest, task, _run_folder(docs_dir), checks, purpose=purpose)
    _log_report(report, "split_validation_success")
    return report


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def steward_report(
    manifest: pd.DataFrame,
    manifest_report: ValidationReport,
    split_manifest: pd.DataFrame,
    split_report: ValidationReport,
    task: Task,
    reports_dir: str,
    purpose: DataPurpose = TRAINING,
) -> tuple[
    Annotated[StewardSummary, STEWARD_SUMMARY],
    Annotated[HTMLString, STEWARD_REPORT],
    Annotated[CSVString, EXCLUDED_ROWS],
]:
    """One page for data stewards (HTML + JSON) and the excluded rows (CSV), as artifacts,
    in MLflow and in `reports_dir/<pipeline run>/`."""
    version = dataset_version(manifest)
    summary = build_summary(
        manifest, task, manifest_report, split_manifest, split_report, dataset_version=version, purpose=purpose
    )
    folder = _run_folder(reports_dir).resolve()
    files = write_steward_report(summary, manifest, folder)
    for name, text in files.by_name().items():
        mlflow.log_text(text, f"data_validation/{name}")
    mlflow.log_artifacts(str(Path(manifest_report.data_docs_index).parent), "data_validation/data_docs")
    # The dataset version on the MLflow run: `cxr data versions` finds it from any work folder on the server.
    mlflow.set_tags(version_tags(validation_from_summary(summary.model_dump(mode="json"), folder.name)))
    metadata = {"reports_folder": str(folder), "blocked": not summary.success}
    log_metadata(metadata=metadata, artifact_name=STEWARD_SUMMARY, infer_artifact=True)
    logger.info("Steward report: %s", folder / SUMMARY_HTML)
    return summary, HTMLString(files.html), CSVString(files.csv)


@step(enable_cache=False)
def data_gate(manifest_report: ValidationReport, split_report: ValidationReport) -> None:
    """Stop the run when a blocking expectation failed in either validation."""
    for report in (manifest_report, split_report):
        raise_if_blocking(report)
