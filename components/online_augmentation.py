"""On-the-fly augmentation: fresh augmented copies every epoch, made by worker processes.

The alternative to offline expansion (components/shards.py) when disk is
short or when every epoch should see new draws. Each epoch shuffles the
originals, cuts them into chunks and has worker processes augment them
(shards.augmented_chunks: at most 2 x workers chunks in flight, so memory
stays bounded); tf.data only batches what comes back. Augmentation thus runs
outside the training process's GIL, as the input pipeline needs on a GPU node.

An epoch holds the same images as an offline expansion by the same factor:
each original once plus `copies_per_image` augmented copies, drawn anew each
epoch from (seed, epoch) so a run is reproducible; the mixing of originals and
copies is drawn from (seed, epoch) too, so a resumed run's epochs are the
uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.checkpoints import EpochClock, epoch_seed
from components.shards import augmented_chunks

SHUFFLE_BUFFER = 4096


@dataclass
class OnTheFlyData:
    """A training.TrainingData whose every epoch is augmented afresh by `workers` processes.

    Attributes:
        images: uint8 (N, S, S) grayscale originals at the training size S.
        labels: int (N,) class indices into the task's class names.
        operations: resolved augmentation operations (augmentation.resolve_operations).
        copies_per_image: augmented copies of each original per epoch (the original is kept too).
        seed: the run's seed; each epoch draws from epoch_seed(seed, epoch).
        workers: augmenting processes (1: inline).
    """

    images: np.ndarray  # uint8 (N, S, S) originals at the training size
    labels: np.ndarray  # int (N,)
    operations: dict[str, Any]
    copies_per_image: int
    seed: int
    workers: int = 1

    @property
    def count(self) -> int:
        """Images per epoch: each original once plus its augmented copies."""
        return len(self.images) * (1 + self.copies_per_image)

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Images per class in one epoch.

        Args:
            num_classes: length of the result (classes without images count 0).

        Returns:
            int64 array of shape (num_classes,).
        """
        return np.bincount(self.labels, minlength=num_classes) * (1 + self.copies_per_image)

    def digest(self) -> str:
        """A hash of the originals, labels and augmentation recipe (checkpoints.array_digest), for checkpoint keys."""
        from components.checkpoints import array_digest

        recipe = json.dumps([self.operations, self.copies_per_image, self.seed], sort_keys=True)
        return array_digest(self.images, self.labels, np.frombuffer(recipe.encode(), np.uint8))

    def epoch_chunks(self, epoch: int):
        """Augment one epoch in worker processes, chunk by chunk (shards.augmented_chunks).

        Args:
            epoch: 0-based epoch number; it sets the order of the originals and the draws.

        Returns:
            An iterator of (images, labels) pairs: uint8 (n, S, S) and int (n,), a chunk's
            originals, then their copies; `count` images in all.
        """
        order = np.random.default_rng(epoch_seed(self.seed, epoch)).permutation(len(self.images))
        return augmented_chunks(
            self.images[order],
            self.labels[order],
            self.operations,
            self.copies_per_image,
            epoch_seed(self.seed, epoch),
            self.workers,
        )

    def dataset(self, batch_size: int, shuffle_seed: int | None, first_epoch: int | EpochClock = 0):
        """A tf.data pipeline that runs one epoch of epoch_chunks per iteration (Keras iterates once per epoch).

        Args:
            batch_size: images per batch.
            shuffle_seed: mixes each window of SHUFFLE_BUFFER images (whole chunks: a chunk's
                originals and copies arrive together) in an order drawn from
                epoch_seed(shuffle_seed, epoch); None keeps the chunks' order.
            first_epoch: the first iteration's 0-based epoch number (a resumed run continues
                the numbering, and so the draws), or the EpochClock that training sets at each
                epoch's start.

        Returns:
            A tf.data.Dataset of (float32 (B, S, S, 3) raw pixels 0..255, int64 (B,) labels) batches.
        """
        import tensorflow as tf

        clock = EpochClock.of(first_epoch)

        def one_epoch():
            epoch = clock.take()
            chunks = self.epoch_chunks(epoch)
            if shuffle_seed is not None:
                chunks = mixed_windows(
                    chunks, SHUFFLE_BUFFER, np.random.default_rng([epoch_seed(shuffle_seed, epoch), 1])
                )
            for chunk_images, chunk_labels in chunks:
                yield chunk_images, chunk_labels.astype(np.int64)  # whole chunks: one Python call each

        side = self.images.shape[1:]
        dataset = (
            tf.data.Dataset.from_generator(
                one_epoch, output_signature=(tf.TensorSpec((None, *side), tf.uint8), tf.TensorSpec((None,), tf.int64))
            )
            .unbatch()
            .apply(tf.data.experimental.assert_cardinality(self.count))
        )

        def to_model_input(gray, label):
            return tf.repeat(tf.cast(gray[..., None], tf.float32), 3, axis=-1), label

        return (
            dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )


def mixed_windows(chunks, window: int, rng: np.random.Generator):
    """Shuffle a stream of (images, labels) chunks within windows of at least `window` images.

    A window gathers whole chunks until it holds `window` images (the last one: what is
    left), then comes out in an order drawn from `rng`; memory stays within a window plus
    a chunk. Unlike a tf.data shuffle buffer, the order depends only on the chunks and `rng`.

    Args:
        chunks: an iterable of (uint8 (n, S, S) images, int (n,) labels) pairs.
        window: images per window (a window with at least this many is let out).
        rng: draws each window's permutation.

    Yields:
        (images, labels) pairs, one per window: the window's images and labels, permuted alike.
    """
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    held = 0
    for chunk_images, chunk_labels in chunks:
        images.append(chunk_images)
        labels.append(chunk_labels)
        held += len(chunk_images)
        if held >= window:
            order = rng.permutation(held)
            yield np.concatenate(images)[order], np.concatenate(labels)[order]
            images, labels, held = [], [], 0
    if held:
        order = rng.permutation(held)
        yield np.concatenate(images)[order], np.concatenate(labels)[order]
