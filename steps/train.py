from typing import Annotated, Any

import keras
import mlflow
import numpy as np
import pandas as pd
from zenml import step
from zenml.client import Client
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings
from zenml.io import fileio
from zenml.logger import get_logger

from components.backbones import build_classifier
from components.checkpoints import CheckpointFolder, array_digest, checkpoint_key, split_digest
from components.tracking import log_params_flat, mlflow_epoch_logger
from components.training import resize_stack, split_arrays, train_classifier
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
    """Train one backbone with the paper's head (head first, then optional fine-tuning).

    Checkpoints go to <artifact store>/training_checkpoints/<key> after every
    epoch; the key hashes everything that determines the result, so a re-run
    of a killed step resumes there. They are removed once training finishes:
    an identical finished run is served by ZenML's step cache, not by them.
    """
    size = backbone["image_size"]
    val_images, val_labels = split_arrays(split_manifest, "val", class_names, size)
    train_images = resize_stack(train_images, size)
    key = checkpoint_key(backbone, training, seed, class_names, split_digest(split_manifest),
                         array_digest(train_images, train_labels))
    folder = f"{Client().active_stack.artifact_store.path.rstrip('/')}/training_checkpoints/{key}"
    log_params_flat({"backbone": backbone, "training": training, "seed": seed, "train_images": len(train_images),
                     "checkpoint_key": key})
    model, summary = train_classifier(
        lambda: build_classifier(backbone["name"], len(class_names), size, weights=backbone["weights"],
                                 alpha=backbone["alpha"]),
        (train_images, train_labels), (val_images, val_labels), num_classes=len(class_names),
        training=training, seed=seed, callbacks=[mlflow_epoch_logger()],
        checkpoint_dir=folder if training.get("checkpoints", True) else None, checkpoint_key=key,
        filesystem=fileio,
    )
    mlflow.log_params({"device." + name: value for name, value in summary["device"].items()})
    mlflow.log_metrics({"best_epoch": summary["best_epoch"], "train_images_per_second": summary["images_per_second"],
                        "phase1_epochs": summary["phase1_epochs"], "phase2_epochs": summary["phase2_epochs"],
                        "resumed_from_epoch": summary["resumed_from_epoch"]})
    logger.info("%s: best epoch %d of %d (%d head + %d fine-tuning, resumed after %d), %.1f images/s",
                backbone["name"], summary["best_epoch"], summary["epochs_run"], summary["phase1_epochs"],
                summary["phase2_epochs"], summary["resumed_from_epoch"], summary["images_per_second"])
    CheckpointFolder(folder, fileio).clear()
    return model, {"backbone": backbone, **summary}
