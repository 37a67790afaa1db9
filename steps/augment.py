import tempfile
from typing import Annotated, Any

import mlflow
import numpy as np
import pandas as pd
from PIL import Image
from zenml import step
from zenml.logger import get_logger

from components.augmentation import augment_copies, enabled_operations, preview_grid
from components.shards import ShardSet, write_shards
from components.training import split_arrays
from components.workers import resolve_workers
from steps.names import AUGMENTATION_PREVIEW, EXPERIMENT_TRACKER, TRAIN_IMAGES, TRAIN_LABELS, TRAIN_SHARDS
from steps.shard_materializer import ShardSetMaterializer

logger = get_logger(__name__)

PREVIEW_ORIGINALS = 6
PREVIEW_COPIES = 4


def _log_preview(preview: Image.Image, operations: dict[str, Any]) -> None:
    mlflow.log_image(preview, "augmentation/preview.png")
    mlflow.log_dict(operations, "augmentation/operations.json")


def _sample_preview(originals: np.ndarray, operations: dict[str, Any], seed: int) -> Image.Image:
    """What the augmentation makes of the first few originals (the set itself is not in memory)."""
    sample = originals[:PREVIEW_ORIGINALS]
    augmented, origin = augment_copies(sample, operations, PREVIEW_COPIES, seed)
    return Image.fromarray(preview_grid(sample, augmented, origin))


@step(experiment_tracker=EXPERIMENT_TRACKER)
def augment_training_data(
    split_manifest: pd.DataFrame,
    class_names: list[str],
    image_size: int,
    operations: dict[str, Any],
    copies_per_image: int,
    seed: int,
    expand: bool = True,
) -> tuple[
    Annotated[np.ndarray, TRAIN_IMAGES],
    Annotated[np.ndarray, TRAIN_LABELS],
    Annotated[Image.Image, AUGMENTATION_PREVIEW],
]:
    """Training split only: originals plus `copies_per_image` seeded imgaug copies each, in memory.

    expand=False (on-the-fly mode): the originals alone, since the train step
    augments them each epoch; the preview shows a sample of what it will make.
    """
    originals, labels = split_arrays(split_manifest, "train", class_names, image_size)
    if not expand:
        preview = _sample_preview(originals, operations, seed)
        _log_preview(preview, operations)
        logger.info("%d training originals; augmented on the fly by the train steps", len(originals))
        return originals, labels, preview
    augmented, origin = augment_copies(originals, operations, copies_per_image, seed)
    images = np.concatenate([originals, augmented])
    logger.info(
        "Augmented %d training images into %d (ops: %s)",
        len(originals),
        len(images),
        ", ".join(enabled_operations(operations)) or "none",
    )
    preview = Image.fromarray(preview_grid(originals, augmented, origin))
    _log_preview(preview, operations)
    return images, np.concatenate([labels, labels[origin]]), preview


@step(experiment_tracker=EXPERIMENT_TRACKER, output_materializers={TRAIN_SHARDS: ShardSetMaterializer})
def expand_training_data(
    split_manifest: pd.DataFrame,
    class_names: list[str],
    image_size: int,
    operations: dict[str, Any],
    copies_per_image: int,
    seed: int,
    workers: int = 0,
    images_per_shard: int = 2048,
) -> tuple[Annotated[ShardSet, TRAIN_SHARDS], Annotated[Image.Image, AUGMENTATION_PREVIEW]]:
    """Offline expansion: originals plus `copies_per_image` copies each, streamed into TFRecord shards.

    Memory holds the originals and a few chunks in flight; the shards go to a
    scratch folder and the materializer moves them into the artifact store.
    """
    originals, labels = split_arrays(split_manifest, "train", class_names, image_size)
    workers = resolve_workers(workers)
    folder = tempfile.mkdtemp(prefix="cxr-shards-")
    index = write_shards(
        originals,
        labels,
        operations,
        copies_per_image,
        seed,
        folder,
        images_per_shard=images_per_shard,
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
    preview = _sample_preview(originals, operations, seed)
    _log_preview(preview, operations)
    return ShardSet(folder, index, scratch=True), preview
