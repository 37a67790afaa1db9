from typing import Annotated, Any

import mlflow
import numpy as np
import pandas as pd
from PIL import Image
from zenml import step
from zenml.logger import get_logger

from components.augmentation import augment_copies, enabled_operations, preview_grid
from components.training import split_arrays
from steps.names import AUGMENTATION_PREVIEW, EXPERIMENT_TRACKER, TRAIN_IMAGES, TRAIN_LABELS

logger = get_logger(__name__)


@step(experiment_tracker=EXPERIMENT_TRACKER)
def augment_training_data(
    split_manifest: pd.DataFrame,
    class_names: list[str],
    image_size: int,
    operations: dict[str, Any],
    copies_per_image: int,
    seed: int,
) -> tuple[
    Annotated[np.ndarray, TRAIN_IMAGES],
    Annotated[np.ndarray, TRAIN_LABELS],
    Annotated[Image.Image, AUGMENTATION_PREVIEW],
]:
    """Training split only: originals plus `copies_per_image` seeded imgaug copies each."""
    originals, labels = split_arrays(split_manifest, "train", class_names, image_size)
    augmented, origin = augment_copies(originals, operations, copies_per_image, seed)
    images = np.concatenate([originals, augmented])
    logger.info(
        "Augmented %d training images into %d (ops: %s)", len(originals), len(images),
        ", ".join(enabled_operations(operations)) or "none",
    )
    preview = Image.fromarray(preview_grid(originals, augmented, origin))
    mlflow.log_image(preview, "augmentation/preview.png")
    mlflow.log_dict(operations, "augmentation/operations.json")
    return images, np.concatenate([labels, labels[origin]]), preview
