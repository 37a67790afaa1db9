import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import step
from zenml.logger import get_logger

from components.validation import raise_if_blocking, validate_manifest
from steps.names import DATA_DOCS_INDEX, EXPERIMENT_TRACKER, VALIDATION_REPORT

logger = get_logger(__name__)


@step(enable_cache=False, experiment_tracker=EXPERIMENT_TRACKER)
def validate_data(
    manifest: pd.DataFrame, task: str, docs_dir: str, checks: dict[str, Any]
) -> tuple[Annotated[dict, VALIDATION_REPORT], Annotated[str, DATA_DOCS_INDEX]]:
    """Great Expectations suite on the manifest; fails the run on a blocking expectation."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    report = validate_manifest(
        manifest, task, docs_dir,
        min_width=checks["min_width"], min_height=checks["min_height"],
        allowed_modes=checks["allowed_modes"], min_images_per_class=checks["min_images_per_class"],
        warning_only=set(checks.get("warning_only", [])),
    )
    logger.info("Data validation:\n%s\nData Docs: %s", report.summary, report.data_docs_index)
    mlflow.log_dict(report.to_dict(), "data_validation/report.json")
    mlflow.log_artifacts(str(Path(report.data_docs_index).parent), "data_validation/data_docs")
    mlflow.log_metric("data_validation_success", float(report.success))
    raise_if_blocking(report)
    return report.to_dict(), report.data_docs_index

