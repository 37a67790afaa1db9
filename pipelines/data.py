"""Data pipeline: ingest -> validate manifest -> split -> validate split -> steward report -> gate.

`data_steps` is shared by the training pipeline, by `cxr_data_validation`,
which stewards run alone (`cxr validate`) to review a new data drop, and by
the evaluation of a registered model on a data config (`cxr evaluate`).

Its `purpose` (components.splitting.DataPurpose) says what the drop is for:

* ``training``: the rows of ``evaluation.external_sources`` get split
  ``external`` (evaluated only, never trained on or used for model
  selection); the other sources are cut into train/val/test.
* ``evaluation``: every used row gets split ``external``; nothing is split by
  fractions and the training thresholds (images per class, class balance,
  images per class and split) are skipped. Every source must be labelled.
"""

from zenml import pipeline
from zenml.steps.entrypoint_function_utils import StepArtifact

from components.config import RunConfig
from components.splitting import TRAINING, DataPurpose, evaluated_sources
from steps.ingest import ingest_data
from steps.names import STEWARD_STEP
from steps.split import split_data
from steps.validate import data_gate, steward_report, validate_data, validate_data_split

PIPELINE_NAME = "cxr_data_validation"


def data_steps(run: RunConfig, docs_dir: str, reports_dir: str, purpose: DataPurpose = TRAINING) -> StepArtifact:
    """Call inside a pipeline; returns the split manifest (split in train/val/test/external).
    Steps that train or evaluate must run `after="data_gate"`."""
    return data_artifacts(run, docs_dir, reports_dir, purpose)[1]


def data_artifacts(
    run: RunConfig, docs_dir: str, reports_dir: str, purpose: DataPurpose = TRAINING
) -> tuple[StepArtifact, StepArtifact]:
    """data_steps, returning (manifest, split manifest): the manifest gives the dataset version."""
    task, seed, checks = run.task, run.seed, run.validation
    held_out = evaluated_sources([source.name for source in run.data.sources], run.evaluation.external_sources, purpose)
    manifest = ingest_data(data=run.data, task=task, seed=seed, held_out_sources=held_out, purpose=purpose)
    manifest_report, _ = validate_data(manifest, task=task, docs_dir=docs_dir, checks=checks, purpose=purpose)
    split = split_data(
        manifest,
        split=run.split,
        seed=seed,
        near_duplicate_max_distance=checks.near_duplicate_max_distance,
        external_sources=held_out,
        purpose=purpose,
    )
    split_report = validate_data_split(split, task=task, docs_dir=docs_dir, checks=checks, purpose=purpose)
    steward_report(manifest, manifest_report, split, split_report, task=task, reports_dir=reports_dir, purpose=purpose)
    data_gate(manifest_report, split_report, after=STEWARD_STEP)
    return manifest, split


@pipeline(name=PIPELINE_NAME)
def data_validation_pipeline(run: RunConfig, docs_dir: str, reports_dir: str, purpose: DataPurpose = TRAINING) -> None:
    data_steps(run, docs_dir, reports_dir, purpose)
