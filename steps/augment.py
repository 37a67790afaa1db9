"""Augment steps (training split only): in memory, or offline into TFRecord shards."""

import tempfile
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
from PIL import Image
from zenml import step
from zenml.logger import get_logger

from components.augmentation import enabled_operations, expand_training_set, preview_sample
from components.config import AugmentationConfig
from components.shards import ShardSet, write_shards
from components.training import split_arrays
from components.workers import resolve_workers
from steps.names import AUGMENTATION_PREVIEW, EXPERIMENT_TRACKER, TRAIN_IMAGES, TRAIN_LABELS, TRAIN_SHARDS
from steps.shard_materializer import ShardSetMaterializer

logger = get_logger(__name__)


def _preview(originals: np.ndarray, augmentation: AugmentationConfig, seed: int) -> Image.Image:
    """The preview grid of a sample of originals, logged to MLflow with the operations."""
    operations = augmentation.resolved_operations()
    preview = Image.fromarray(preview_sample(originals, operations, seed))
    mlflow.log_image(preview, "augmentation/preview.png")
    mlflow.log_dict(operations, "augmentation/operations.json")
    return preview


@step(experiment_tracker=EXPERIMENT_TRACKER)
def augment_training_data(
    split_manifest: pd.DataFrame,
    class_names: list[str],
    image_size: int,
    augmentation: AugmentationConfig,
    seed: int,
) -> tuple[
    Annotated[np.ndarray, TRAIN_IMAGES],
    Annotated[np.ndarray, TRAIN_LABELS],
    Annotated[Image.Image, AUGMENTATION_PREVIEW],
]:
    """Training split only: originals plus `copies_per_image` seeded imgaug copies each, in memory.

    With mode `on_the_fly`: the originals alone, since the train step augments
    them each epoch; the preview shows a sample of what it will make.
    """
    originals, labels = split_arrays(split_manifest, "train", class_names, image_size)
    operations = augmentation.resolved_operations()
    preview = _preview(originals, augmentation, seed)
    if augmentation.mode == "on_the_fly":
        logger.info("%d training originals; augmented on the fly by the train steps", len(originals))
        return originals, labels, preview
    images, labels = expand_training_set(originals, labels, operations, augmentation.copies_per_image, seed)
    logger.info(
        "Augmented %d training images into %d (ops: %s)",
        len(originals),
        len(images),
        ", ".join(enabled_operations(operations)) or "none",
    )
    return images, labels, preview


@step(experiment_tracker=EXPERIMENT_TRACKER, output_materializers={TRAIN_SHARDS: ShardSetMaterializer})
def expand_training_data(
    split_manifest: pd.DataFrame,
    class_names: list[str],
    image_size: int,
    augmentation: AugmentationConfig,
    seed: int,
) -> tuple[Annotated[ShardSet, TRAIN_SHARDS], Annotated[Image.Image, AUGMENTATION_PREVIEW]]:
    """Offline expansion: originals plus `copies_per_image` copies each, streamed into TFRecord shards.

    Memory holds the originals and a few chunks in flight; the shards go to a
    scratch folder and the materializer moves them into the artifact store.
    """
    originals, labels = split_arrays(split_manifest, "train", class_names, image_size)
    operations = augmentation.resolved_operations()
    workers = resolve_workers(augmentation.workers)
    folder = tempfile.mkdtemp(prefix="cxr-shards-")
    index = write_shards(
        originals,
        labels,
        operations,
        augmentation.copies_per_image,
        seed,
        folder,
        images_per_shard=augmentation.images_per_shard,
        workers=workers,
    )
    logger.info(
        "Expanded %d training images into %d in %d shards with %d workers (ops: %s)",
        len(originals),
        index["images"],
        len(index["shards"]),
        workers,
        ", ".join(enabled_operations(operations)) or "none",
    )
    mlflow.log_params(
        {
            "augmentation.mode": "offline",
            "augmentation.images": index["images"],
            "augmentation.shards": len(index["shards"]),
            "augmentation.workers": workers,
        }
    )
    preview = _preview(originals, augmentation, seed)
    return ShardSet(folder, index, scratch=True), preview
