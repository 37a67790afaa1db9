"""Train steps: one per backbone (step id ``train_<Backbone>``, or ``train_<variant>`` in the ablation)."""

from typing import Annotated

import keras
import mlflow
import numpy as np
import pandas as pd
from zenml import step
from zenml.client import Client
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings
from zenml.io import fileio
from zenml.logger import get_logger

from components.augmentation import resolve_operations
from components.backbones import build_classifier
from components.checkpoints import CheckpointFolder, checkpoint_key, split_digest
from components.config import AugmentationConfig, BackboneConfig, TrainingConfig
from components.online_augmentation import OnTheFlyData
from components.shards import ShardSet
from components.tracking import log_params_flat, mlflow_epoch_logger
from components.training import ArrayData, TrainingData, TrainingSummary, resize_stack, split_arrays, train_classifier
from components.workers import resolve_workers
from steps.materializers import KerasModelMaterializer
from steps.names import EXPERIMENT_TRACKER, MODEL, TRAINING_SUMMARY

logger = get_logger(__name__)

# Each backbone gets its own nested MLflow run under the pipeline run.
NESTED_RUN = {"experiment_tracker": MLFlowExperimentTrackerSettings(nested=True)}


def _train_and_log(
    training_data: TrainingData,
    split_manifest: pd.DataFrame,
    backbone: BackboneConfig,
    class_names: list[str],
    training: TrainingConfig,
    seed: int,
) -> tuple[keras.Model, TrainingSummary]:
    """Train one backbone on any training set, with checkpoints and MLflow logging.

    Checkpoints go to <artifact store>/training_checkpoints/<key> after every
    epoch; the key hashes everything that determines the result, so a re-run
    of a killed step resumes there. They are removed once training finishes:
    an identical finished run is served by ZenML's step cache, not by them.
    """
    size = backbone.image_size
    val_images, val_labels = split_arrays(split_manifest, "val", class_names, size)
    backbone_json, training_json = backbone.model_dump(mode="json"), training.model_dump(mode="json")
    key = checkpoint_key(
        backbone_json, training_json, seed, class_names, split_digest(split_manifest), training_data.digest()
    )
    folder = f"{Client().active_stack.artifact_store.path.rstrip('/')}/training_checkpoints/{key}"
    log_params_flat(
        {
            "backbone": backbone_json,
            "training": training_json,
            "seed": seed,
            "train_images": training_data.count,
            "training_data": type(training_data).__name__,
            "checkpoint_key": key,
        }
    )
    epoch_logger = mlflow_epoch_logger()
    model, summary = train_classifier(
        lambda: build_classifier(backbone.name, len(class_names), size, weights=backbone.weights, alpha=backbone.alpha),
        training_data,
        (val_images, val_labels),
        num_classes=len(class_names),
        training=training,
        seed=seed,
        callbacks=[epoch_logger],
        checkpoint_dir=folder if training.checkpoints else None,
        checkpoint_key=key,
        filesystem=fileio,
    )
    result = TrainingSummary(
        backbone=backbone,
        training_data=type(training_data).__name__,
        train_images=training_data.count,
        mlflow_logging_seconds=epoch_logger.seconds,
        **summary,
    )
    mlflow.log_params({"device." + name: value for name, value in result.device.items()})
    mlflow.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "train_images_per_second": result.images_per_second,
            "phase1_epochs": result.phase1_epochs,
            "phase2_epochs": result.phase2_epochs,
            "resumed_from_epoch": result.resumed_from_epoch,
            f"best_{result.monitor}": result.best_monitor_value,
        }
    )
    mlflow.set_tag("monitor", result.monitor)
    logger.info(
        "%s: best epoch %d of %d by %s=%.4f (%d head + %d fine-tuning, resumed after %d), %.1f images/s",
        backbone.name,
        result.best_epoch,
        result.epochs_run,
        result.monitor,
        result.best_monitor_value,
        result.phase1_epochs,
        result.phase2_epochs,
        result.resumed_from_epoch,
        result.images_per_second,
    )
    CheckpointFolder(folder, fileio).clear()
    return model, result


@step(experiment_tracker=EXPERIMENT_TRACKER, settings=NESTED_RUN, output_materializers={MODEL: KerasModelMaterializer})
def train_backbone(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    split_manifest: pd.DataFrame,
    backbone: BackboneConfig,
    class_names: list[str],
    training: TrainingConfig,
    seed: int,
    on_the_fly: AugmentationConfig | None = None,
) -> tuple[Annotated[keras.Model, MODEL], Annotated[TrainingSummary, TRAINING_SUMMARY]]:
    """Train one backbone with the paper's head on in-memory images (head first, then optional fine-tuning).

    on_the_fly: the images are the originals, augmented afresh every epoch by
    `workers` processes making `copies_per_image` copies each.
    """
    images = resize_stack(train_images, backbone.image_size)
    if on_the_fly is not None:
        operations = resolve_operations(on_the_fly.preset, on_the_fly.operations)
        training_data: TrainingData = OnTheFlyData(
            images,
            train_labels,
            operations,
            on_the_fly.copies_per_image,
            seed,
            workers=resolve_workers(on_the_fly.workers),
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
    backbone: BackboneConfig,
    class_names: list[str],
    training: TrainingConfig,
    seed: int,
) -> tuple[Annotated[keras.Model, MODEL], Annotated[TrainingSummary, TRAINING_SUMMARY]]:
    """Train one backbone with the paper's head on offline-expanded shards, read from disk by tf.data."""
    training_data = train_shards.at_size(backbone.image_size)
    model, summary = _train_and_log(training_data, split_manifest, backbone, class_names, training, seed)
    return model, summary
