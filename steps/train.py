from typing import Annotated, Any

import keras
import mlflow
import numpy as np
import pandas as pd
from zenml import step
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings
from zenml.logger import get_logger

from components.backbones import build_classifier
from components.tracking import log_params_flat, mlflow_epoch_logger
from components.training import fit_classifier, resize_stack, split_arrays
from steps.materializers import KerasModelMaterializer
from steps.names import EXPERIMENT_TRACKER, MODEL, TRAINING_SUMMARY

logger = get_logger(__name__)

# Each backbone gets its own nested MLflow run under the pipeline run.
NESTED_RUN = {"experiment_tracker": MLFlowExperimentTrackerSettings(nested=True)}


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN, output_materializers={MODEL: KerasModelMaterializer})
def train_backbone(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    split_manifest: pd.DataFrame,
    backbone: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
) -> tuple[Annotated[keras.Model, MODEL], Annotated[dict, TRAINING_SUMMARY]]:
    """Train one backbone with the paper's head; EarlyStopping on val_loss."""
    size = backbone["image_size"]
    val_images, val_labels = split_arrays(split_manifest, "val", class_names, size)
    model = build_classifier(
        backbone["name"], len(class_names), size, weights=backbone["weights"], alpha=backbone["alpha"]
    )
    log_params_flat({"backbone": backbone, "training": training, "seed": seed, "train_images": len(train_images)})
    summary = fit_classifier(
        model, (resize_stack(train_images, size), train_labels), (val_images, val_labels),
        num_classes=len(class_names), epochs=training["epochs"], batch_size=training["batch_size"],
        learning_rate=training["learning_rate"], patience=training["patience"], seed=seed,
        lr_schedule=training["lr_schedule"],
        callbacks=[mlflow_epoch_logger()],
    )
    mlflow.log_metrics({"best_epoch": summary["best_epoch"], "train_images_per_second": summary["images_per_second"]})
    logger.info("%s: best epoch %d of %d, %.1f images/s", backbone["name"], summary["best_epoch"],
                summary["epochs_run"], summary["images_per_second"])
    return model, {"backbone": backbone, **summary}
