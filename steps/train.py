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
from components.checkpoints import CheckpointFolder, checkpoint_key, split_digest
from components.online_augmentation import OnTheFlyData
from components.shards import ShardSet
from components.tracking import log_params_flat, mlflow_epoch_logger
from components.training import ArrayData, TrainingData, resize_stack, split_arrays, train_classifier
from components.workers import resolve_workers
from steps.materializers import KerasModelMaterializer
from steps.names import EXPERIMENT_TRACKER, MODEL, TRAINING_SUMMARY

logger = get_logger(__name__)

# Each backbone gets its own nested MLflow run under the pipeline run.
NESTED_RUN = {"experiment_tracker": MLFlowExperimentTrackerSettings(nested=True)}


def _train_and_log(
    training_data: TrainingData,
    split_manifest: pd.DataFrame,
    backbone: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, dict]:
    """Train one backbone on any training set, with checkpoints and MLflow logging.

    Checkpoints go to <artifact store>/training_checkpoints/<key> after every
    epoch; the key hashes everything that determines the result, so a re-run
    of a killed step resumes there. They are removed once training finishes:
    an identical finished run is served by ZenML's step cache, not by them.
    """
    size = backbone["image_size"]
    val_images, val_labels = split_arrays(split_manifest, "val", class_names, size)
    key = checkpoint_key(backbone, training, seed, class_names, split_digest(split_manifest), training_data.digest())
    folder = f"{Client().active_stack.artifact_store.path.rstrip('/')}/training_checkpoints/{key}"
    log_params_flat(
        {
            "backbone": backbone,
            "training": training,
            "seed": seed,
            "train_images": training_data.count,
            "training_data": type(training_data).__name__,
            "checkpoint_key": key,
        }
    )
    epoch_logger = mlflow_epoch_logger()
    model, summary = train_classifier(
        lambda: build_classifier(
            backbone["name"], len(class_names), size, weights=backbone["weights"], alpha=backbone["alpha"]
        ),
        training_data,
        (val_images, val_labels),
        num_classes=len(class_names),
        training=training,
        seed=seed,
        callbacks=[epoch_logger],
        checkpoint_dir=folder if training.get("checkpoints", True) else None,
        checkpoint_key=key,
        filesystem=fileio,
    )
    mlflow.log_params({"device." + name: value for name, value in summary["device"].items()})
    mlflow.log_metrics(
        {
            "best_epoch": summary["best_epoch"],
            "train_images_per_second": summary["images_per_second"],
            "phase1_epochs": summary["phase1_epochs"],
            "phase2_epochs": summary["phase2_epochs"],
            "resumed_from_epoch": summary["resumed_from_epoch"],
        }
    )
    logger.info(
        "%s: best epoch %d of %d (%d head + %d fine-tuning, resumed after %d), %.1f images/s",
        backbone["name"],
        summary["best_epoch"],
        summary["epochs_run"],
        summary["phase1_epochs"],
        summary["phase2_epochs"],
        summary["resumed_from_epoch"],
        summary["images_per_second"],
    )
    CheckpointFolder(folder, fileio).clear()
    return model, {
        "backbone": backbone,
        "training_data": type(training_data).__name__,
        "train_images": training_data.count,
        "mlflow_logging_seconds": epoch_logger.seconds,
        **summary,
    }


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN, output_materializers={MODEL: KerasModelMaterializer})
def train_backbone(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    split_manifest: pd.DataFrame,
    backbone: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
    on_the_fly: dict[str, Any] | None = None,
) -> tuple[Annotated[keras.Model, MODEL], Annotated[dict, TRAINING_SUMMARY]]:
    """Train one backbone with the paper's head on in-memory images (head first, then optional fine-tuning).

    on_the_fly ({operations, copies_per_image, workers}): the images are the
    originals, augmented afresh every epoch by worker processes.
    """
    images = resize_stack(train_images, backbone["image_size"])
    if on_the_fly:
        training_data = OnTheFlyData(
            images,
            train_labels,
            on_the_fly["operations"],
            on_the_fly["copies_per_image"],
            seed,
            workers=resolve_workers(on_the_fly["workers"]),
        )
    else:
        training_data = ArrayData(images, train_labels)
    # ZenML reads a tuple return from the source: unpack, then return both.
    model, summary = _train_and_log(training_data, split_manifest, backbone, class_names, training, seed)
    return model, summary


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN, output_materializers={MODEL: KerasModelMaterializer})
def train_backbone_on_shards(
    train_shards: ShardSet,
    split_manifest: pd.DataFrame,
    backbone: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
) -> tuple[Annotated[keras.Model, MODEL], Annotated[dict, TRAINING_SUMMARY]]:
    """Train one backbone with the paper's head on offline-expanded shards, read from disk by tf.data."""
    model, summary = _train_and_log(
        train_shards.at_size(backbone["image_size"]), split_manifest, backbone, class_names, training, seed
    )
    return model, summary
