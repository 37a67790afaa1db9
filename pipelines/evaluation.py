"""The evaluation pipeline (`cxr evaluate`): a registered model version on an evaluation drop.

Data steps with purpose "evaluation" (ingest, validate, no split: every used row
external, report, gate) -> evaluate the version on each source with the decision
rule recorded on it, write and log the evaluation card (steps/evaluate_registered.py).
Nothing is trained and no alias moves.
"""

from zenml import pipeline

from components.config import RunConfig
from components.splitting import EVALUATION
from pipelines.data import data_artifacts
from steps.evaluate_registered import evaluate_registered_model
from steps.names import DATA_GATE_STEP

PIPELINE_NAME = "cxr_evaluation"


@pipeline(name=PIPELINE_NAME)
def evaluation_pipeline(run: RunConfig, model_uri: str, docs_dir: str, reports_dir: str) -> None:
    manifest, split = data_artifacts(run, docs_dir, reports_dir, purpose=EVALUATION)
    evaluate_registered_model(
        manifest,
        split,
        model_uri=model_uri,
        task=run.task,
        evaluation=run.evaluation,
        seed=run.seed,
        run_name=run.name,
        reports_dir=reports_dir,
        after=DATA_GATE_STEP,
    )
