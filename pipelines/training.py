"""The training pipeline: data steps (ingest, validate, split, report, gate) -> augment -> train xN -> evaluate -> register -> promote.

It only connects steps. `run` is the validated run config as plain JSON
(`RunConfig.model_dump(mode="json")`); the backbone loop unrolls at compile
time into one train and one evaluate step per backbone.
"""

from typing import Any

from zenml import pipeline

from components.augmentation import resolve_operations
from components.labels import TASK_LABELS
from steps.augment import augment_training_data
from pipelines.data import data_steps
from steps.evaluate import evaluate_model
from steps.promote import promote_model
from steps.register import register_best_model
from steps.train import train_backbone

PIPELINE_NAME = "cxr_training"


@pipeline(name=PIPELINE_NAME)
def training_pipeline(run: dict[str, Any], docs_dir: str, reports_dir: str) -> None:
    class_names = list(TASK_LABELS[run["task"]])
    seed = run["seed"]
    split = data_steps(run, docs_dir, reports_dir)
    train_images, train_labels, _ = augment_training_data(
        split, class_names=class_names,
        image_size=max(backbone["image_size"] for backbone in run["backbones"]),
        operations=resolve_operations(run["augmentation"]["preset"], run["augmentation"]["operations"]),
        copies_per_image=run["augmentation"]["copies_per_image"], seed=seed, after="data_gate",
    )
    models, evaluations = [], []
    for backbone in run["backbones"]:
        model, _ = train_backbone(
            train_images, train_labels, split, backbone=backbone, class_names=class_names,
            training=run["training"], seed=seed, id=f"train_{backbone['name']}",
        )
        models.append(model)
        evaluations.append(
            evaluate_model(model, split, backbone=backbone, class_names=class_names, id=f"evaluate_{backbone['name']}")
        )
    registration = register_best_model(models, evaluations, task=run["task"], registry=run["registry"], run_name=run["name"])
    promote_model(registration, registry=run["registry"])
