"""Great Expectations on the manifest and on the split, then the data steward's report and the gate.

Validation steps never fail the run themselves: the steward's report is built
from both validations first, and `data_gate` stops the run afterwards when a
blocking expectation failed. A blocked run thus still leaves its report.
"""

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import CSVString, HTMLString

from components.manifest import dataset_version
from components.steward_report import build_summary, excluded_rows_csv, render_html
from components.validation import raise_if_blocking, validate_manifest, validate_split
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


def _run_docs_dir(docs_dir: str) -> str:
    """One Data Docs site per pipeline run (both suites in it): a shared site would
    re-render every earlier run's results on each build, growing without bound."""
    return str(Path(docs_dir) / get_step_context().pipeline_run.name)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def validate_data(
    manifest: pd.DataFrame, task: str, docs_dir: str, checks: dict[str, Any]
) -> tuple[Annotated[dict, VALIDATION_REPORT], Annotated[str, DATA_DOCS_INDEX]]:
    """The manifest suite (files, labels, duplicates, sources, views); reports, never raises."""
    _quiet_gx()
    report = validate_manifest(manifest, task, _run_docs_dir(docs_dir), **checks)
    logger.info("Data validation (manifest):\n%s", report.summary)
    mlflow.log_dict(report.to_dict(), "data_validation/manifest_report.json")
    mlflow.log_metric("data_validation_success", float(report.success))
    return report.to_dict(), report.data_docs_index


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def validate_data_split(
    split_manifest: pd.DataFrame, task: str, docs_dir: str, checks: dict[str, Any]
) -> Annotated[dict, SPLIT_VALIDATION_REPORT]:
    """The split suite (patient and near-duplicate leaks, images per class and split); never raises."""
    _quiet_gx()
    report = validate_split(split_manifest, task, _run_docs_dir(docs_dir), **checks)
    logger.info("Data validation (split):\n%s", report.summary)
    mlflow.log_dict(report.to_dict(), "data_validation/split_report.json")
    mlflow.log_metric("split_validation_success", float(report.success))
    return report.to_dict()


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def steward_report(
    manifest: pd.DataFrame,
    manifest_report: dict,
    split_manifest: pd.DataFrame,
    split_report: dict,
    task: str,
    reports_dir: str,
) -> tuple[
    Annotated[dict, STEWARD_SUMMARY],
    Annotated[HTMLString, STEWARD_REPORT],
    Annotated[CSVString, EXCLUDED_ROWS],
]:
    """One page for data stewards (HTML + JSON) and the excluded rows (CSV), as artifacts,
    in MLflow and in `reports_dir/<pipeline run>/`."""
    summary = build_summary(
        manifest,
        task,
        manifest_report,
        split_manifest,
        split_report,
        dataset_version=dataset_version(manifest),
    )
    html = render_html(summary)
    excluded_csv = excluded_rows_csv(manifest)  # spreadsheet-safe (no formula injection)
    folder = Path(reports_dir) / get_step_context().pipeline_run.name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"summary.html": html, "summary.json": json.dumps(summary, indent=2), "excluded_rows.csv": excluded_csv}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        mlflow.log_text(text, f"data_validation/{name}")
    mlflow.log_artifacts(str(Path(manifest_report["data_docs_index"]).parent), "data_validation/data_docs")
    log_metadata(
        metadata={"reports_folder": str(folder.resolve()), "blocked": not summary["success"]},
        artifact_name=STEWARD_SUMMARY,
        infer_artifact=True,
    )
    logger.info("Steward report: %s", (folder / "summary.html").resolve())
    return summary, HTMLString(html), CSVString(excluded_csv)


@step(enable_cache=False)
def data_gate(manifest_report: dict, split_report: dict) -> None:
    """Stop the run when a blocking expectation failed in either validation."""
    for report in (manifest_report, split_report):
        raise_if_blocking(report)
