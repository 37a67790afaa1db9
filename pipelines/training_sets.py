"""Compile-time helpers shared by the training and ablation pipelines: the augment step that
the config's augmentation mode calls for, and the train step that consumes its output.

in_memory and on_the_fly pass arrays (on_the_fly: the originals, which the
train step augments each epoch); offline passes a shard set.
"""

from typing import Any

from components.augmentation import resolve_operations
from steps.augment import augment_training_data, expand_training_data
from steps.train import train_backbone, train_backbone_on_shards


def training_set(
    split,
    augmentation: dict[str, Any],
    class_names: list[str],
    image_size: int,
    seed: int,
    augment: bool = True,
    step_id: str | None = None,
) -> dict[str, Any]:
    """Call the augment step for `augmentation["mode"]`; augment=False: the originals only."""
    operations = resolve_operations(
        augmentation["preset"] if augment else "none", augmentation["operations"] if augment else {}
    )
    copies = augmentation["copies_per_image"] if augment else 0
    mode = augmentation["mode"] if augment else "in_memory"
    ids = {"id": step_id} if step_id else {}
    if mode == "offline":
        shards, _ = expand_training_data(
            split,
            class_names=class_names,
            image_size=image_size,
            operations=operations,
            copies_per_image=copies,
            seed=seed,
            workers=augmentation["workers"],
            images_per_shard=augmentation["images_per_shard"],
            after="data_gate",
            **ids,
        )
        return {"shards": shards}
    images, labels, _ = augment_training_data(
        split,
        class_names=class_names,
        image_size=image_size,
        operations=operations,
        copies_per_image=copies,
        seed=seed,
        expand=mode == "in_memory",
        after="data_gate",
        **ids,
    )
    on_the_fly = None
    if mode == "on_the_fly":
        on_the_fly = {"operations": operations, "copies_per_image": copies, "workers": augmentation["workers"]}
    return {"arrays": (images, labels), "on_the_fly": on_the_fly}


def train_on(
    training_set: dict[str, Any],
    split,
    backbone: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
    step_id: str,
):
    """The train step for a training_set(); returns its (model, summary) outputs."""
    if "shards" in training_set:
        return train_backbone_on_shards(
            training_set["shards"],
            split,
            backbone=backbone,
            class_names=class_names,
            training=training,
            seed=seed,
            id=step_id,
        )
    images, labels = training_set["arrays"]
    return train_backbone(
        images,
        labels,
        split,
        backbone=backbone,
        class_names=class_names,
        training=training,
        seed=seed,
        on_the_fly=training_set["on_the_fly"],
        id=step_id,
    )
