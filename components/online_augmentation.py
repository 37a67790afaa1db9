"""On-the-fly augmentation: fresh augmented copies every epoch, made by worker processes.

The alternative to offline expansion (components/shards.py) when disk is
short or when every epoch should see new draws. Each epoch shuffles the
originals, cuts them into chunks and has worker processes augment them
(shards.augmented_chunks: at most 2 x workers chunks in flight, so memory
stays bounded); tf.data only batches what comes back. Augmentation thus runs
outside the training process's GIL, as the input pipeline needs on a GPU node.

An epoch holds the same images as an offline expansion by the same factor:
each original once plus `copies_per_image` augmented copies, drawn anew each
epoch from (seed, epoch) so a run is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.shards import augmented_chunks

SHUFFLE_BUFFER = 4096


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 7_919 + epoch * 104_729) % (2**31 - 1)


@dataclass
class OnTheFlyData:
    """A training.TrainingData whose every epoch is augmented afresh by `workers` processes."""

    images: np.ndarray  # uint8 (N, S, S) originals at the training size
    labels: np.ndarray
    operations: dict[str, Any]
    copies_per_image: int
    seed: int
    workers: int = 1

    @property
    def count(self) -> int:
        return len(self.images) * (1 + self.copies_per_image)

    def label_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes) * (1 + self.copies_per_image)

    def digest(self) -> str:
        from components.checkpoints import array_digest

        recipe = json.dumps([self.operations, self.copies_per_image, self.seed], sort_keys=True)
        return array_digest(self.images, self.labels, np.frombuffer(recipe.encode(), np.uint8))

    def epoch_chunks(self, epoch: int):
        """(images, labels) chunks of one epoch, originals in an epoch-specific order."""
        order = np.random.default_rng(epoch_seed(self.seed, epoch)).permutation(len(self.images))
        return augmented_chunks(
            self.images[order],
            self.labels[order],
            self.operations,
            self.copies_per_image,
            epoch_seed(self.seed, epoch),
            self.workers,
        )

    def dataset(self, batch_size: int, shuffle_seed: int | None, first_epoch: int = 0):
        """tf.data that runs one epoch of epoch_chunks per iteration (Keras iterates once per epoch).

        `first_epoch`: a resumed run continues the epoch numbering, and so the draws.
        """
        import tensorflow as tf

        epochs_started = [0]

        def one_epoch():
            epoch = first_epoch + epochs_started[0]
            epochs_started[0] += 1
            for chunk_images, chunk_labels in self.epoch_chunks(epoch):
                yield chunk_images, chunk_labels.astype(np.int64)  # whole chunks: one Python call each

        side = self.images.shape[1:]
        dataset = (
            tf.data.Dataset.from_generator(
                one_epoch, output_signature=(tf.TensorSpec((None, *side), tf.uint8), tf.TensorSpec((None,), tf.int64))
            )
            .unbatch()
            .apply(tf.data.experimental.assert_cardinality(self.count))
        )
        if shuffle_seed is not None:  # a chunk's originals and copies arrive together; mix them
            dataset = dataset.shuffle(min(SHUFFLE_BUFFER, self.count), seed=shuffle_seed)

        def to_model_input(gray, label):
            return tf.repeat(tf.cast(gray[..., None], tf.float32), 3, axis=-1), label

        return (
            dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
