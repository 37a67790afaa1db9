"""Data pipeline: ingest -> validate manifest -> split -> validate split -> steward report -> gate.

`data_steps` is shared by the training pipeline and by `cxr_data_validation`,
which stewards run alone (`cxr validate`) to review a new data drop.
"""

from zenml import pipeline
from zenml.steps.entrypoint_function_utils import StepArtifact

from components.config import RunConfig
from steps.ingest import ingest_data
from steps.names import STEWARD_STEP
from steps.split import split_data
from steps.validate import data_gate, steward_report, validate_data, validate_data_split

PIPELINE_NAME = "cxr_data_validation"


def data_steps(run: RunConfig, docs_dir: str, reports_dir: str) -> StepArtifact:
    """Call inside a pipeline; returns the split manifest. Steps that train must run `after="data_gate"`."""
    task, seed, checks = run.task, run.seed, run.validation
    manifest = ingest_data(data=run.data, task=task, seed=seed)
    manifest_report, _ = validate_data(manifest, task=task, docs_dir=docs_dir, checks=checks)
    split = split_data(
        manifest, split=run.split, seed=seed, near_duplicate_max_distance=checks.near_duplicate_max_distance
    )
    split_report = validate_data_split(split, task=task, docs_dir=docs_dir, checks=checks)
    steward_report(manifest, manifest_report, split, split_report, task=task, reports_dir=reports_dir)
    data_gate(manifest_report, split_report, after=STEWARD_STEP)
    return split


@pipeline(name=PIPELINE_NAME)
def data_validation_pipeline(run: RunConfig, docs_dir: str, reports_dir: str) -> None:
    data_steps(run, docs_dir, reports_dir)
