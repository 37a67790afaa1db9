"""Compile-time helpers shared by the training and ablation pipelines: the augment step that
the config's augmentation mode calls for, and the train step that consumes its output.

in_memory and on_the_fly pass arrays (on_the_fly: the originals, which the
train step augments each epoch); offline passes a shard set.
"""

from dataclasses import dataclass

from zenml.steps.entrypoint_function_utils import StepArtifact

from components.config import AugmentationConfig, BackboneConfig, TrainingConfig
from steps.augment import augment_training_data, expand_training_data
from steps.names import DATA_GATE_STEP
from steps.train import train_backbone, train_backbone_on_shards


@dataclass(frozen=True)
class ArraySet:
    """In-memory training images and labels (outputs of augment_training_data).

    on_the_fly: the images are the originals and the train step augments them
    each epoch with these settings; None: the images are already expanded.
    """

    images: StepArtifact
    labels: StepArtifact
    on_the_fly: AugmentationConfig | None


@dataclass(frozen=True)
class ShardedSet:
    """Offline-expanded TFRecord shards in the artifact store (output of expand_training_data)."""

    shards: StepArtifact


TrainingSet = ArraySet | ShardedSet


def training_set(
    split: StepArtifact,
    augmentation: AugmentationConfig,
    class_names: list[str],
    image_size: int,
    seed: int,
    step_id: str | None = None,
) -> TrainingSet:
    """Call the augment step for `augmentation.mode` (pass `augmentation.disabled()` for the originals only)."""
    inputs = {"class_names": class_names, "image_size": image_size, "augmentation": augmentation, "seed": seed}
    invocation = {"after": DATA_GATE_STEP, **({"id": step_id} if step_id else {})}
    if augmentation.mode == "offline":
        shards, _ = expand_training_data(split, **inputs, **invocation)
        return ShardedSet(shards)
    images, labels, _ = augment_training_data(split, **inputs, **invocation)
    return ArraySet(images, labels, augmentation if augmentation.mode == "on_the_fly" else None)


def train_on(
    training_set: TrainingSet,
    split: StepArtifact,
    backbone: BackboneConfig,
    class_names: list[str],
    training: TrainingConfig,
    seed: int,
    step_id: str,
) -> tuple[StepArtifact, StepArtifact]:
    """The train step for a training_set(); returns its (model, training summary) outputs."""
    common = {"backbone": backbone, "class_names": class_names, "training": training, "seed": seed, "id": step_id}
    if isinstance(training_set, ShardedSet):
        return train_backbone_on_shards(training_set.shards, split, **common)
    return train_backbone(training_set.images, training_set.labels, split, on_the_fly=training_set.on_the_fly, **common)
