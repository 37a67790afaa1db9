"""The batch inference pipeline (`cxr predict-batch`): score a drop of new images with a registered model.

ingest (the same adapters and file checks as training; labels optional) -> predict_batch (the
inference manifest: label-only exclusions lifted, duplicates and too-small images excluded; one
in-process forward pass of the version `model_uri` names; input drift against the version's drift
reference, a blocking drift stopping the run before predictions are written; predictions as
Parquet and CSV; output drift; the HTML report), logged to MLflow (experiment cxr_batch_inference).
No alias moves and nothing is trained.
"""

from zenml import pipeline

from components.config import RunConfig
from steps.batch import predict_batch
from steps.ingest import ingest_data

PIPELINE_NAME = "cxr_batch_inference"


@pipeline(name=PIPELINE_NAME)
def batch_inference_pipeline(run: RunConfig, model_uri: str, docs_dir: str, reports_dir: str) -> None:
    manifest = ingest_data(data=run.data, task=run.task, seed=run.seed)
    predict_batch(
        manifest,
        model_uri=model_uri,
        task=run.task,
        validation=run.validation,
        batch=run.batch,
        evaluation=run.evaluation,
        seed=run.seed,
        run_name=run.name,
        reports_dir=reports_dir,
    )
