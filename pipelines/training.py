"""The training pipeline.

Data steps (ingest, validate, split, report, gate) -> augment -> train xN -> evaluate -> register ->
promote (the champion re-evaluated on this run's test split and external sources, the gate, the card).

The augment step follows `augmentation.mode` (pipelines/training_sets.py):
in-memory arrays, offline shards in the artifact store, or originals that
the train steps augment on the fly.

It only connects steps. `run` is the validated RunConfig (ZenML records it in
the run's configuration); the backbone loop unrolls at compile time into one
train and one evaluate step per backbone.
"""

from zenml import pipeline

from components.config import RunConfig
from pipelines.data import data_artifacts
from pipelines.training_sets import train_on, training_set
from steps.deploy import deploy_model
from steps.evaluate import evaluate_model
from steps.names import evaluate_step_id, train_step_id
from steps.promote import promote_model
from steps.register import register_best_model

PIPELINE_NAME = "cxr_training"


@pipeline(name=PIPELINE_NAME)
def training_pipeline(run: RunConfig, docs_dir: str, reports_dir: str) -> None:
    class_names = list(run.class_names)
    manifest, split = data_artifacts(run, docs_dir, reports_dir)
    train_set = training_set(split, run.augmentation, class_names, image_size=run.largest_image_size, seed=run.seed)
    models, evaluations = [], []
    for backbone in run.backbones:
        model, _ = train_on(
            train_set, split, backbone, class_names, run.training, run.seed, step_id=train_step_id(backbone.name)
        )
        models.append(model)
        evaluations.append(
            evaluate_model(
                model,
                split,
                backbone=backbone,
                class_names=class_names,
                evaluation=run.evaluation,
                id=evaluate_step_id(backbone.name),
            )
        )
    registration = register_best_model(
        models,
        evaluations,
        manifest,
        split,
        task=run.task,
        registry=run.registry,
        evaluation=run.evaluation,
        run_name=run.name,
        seed=run.seed,
        near_duplicate_max_distance=run.validation.near_duplicate_max_distance,
        canary_images=run.deployment.canary_images,
    )
    promotion, _, _ = promote_model(registration, class_names=class_names, run_name=run.name, reports_dir=reports_dir)
    deploy_model(promotion, deployment=run.deployment)
