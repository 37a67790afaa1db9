"""Offline augmentation: expand a training set by a factor into sharded TFRecord files, streaming.

The paper trains on 64 augmented copies of each image (7,800 x 64 = 499,200
images); held in memory that is 45 GB at 299 px. Here originals are augmented
in fixed-size chunks by worker processes and written to shards as they come
back, so memory holds the originals plus a few chunks in flight, whatever the
factor.

Reproducible: a chunk's random stream depends only on (seed, chunk index),
never on the number of workers, so 1 or 8 workers write identical shards.
Shards are written to a local folder (tf.io writes no s3:// without
tensorflow-io); the ZenML materializer (steps/shard_materializer.py) moves them
into the artifact store, local or S3, and copies them back onto the training
node's disk when the store is remote.

Record: ``image`` (raw uint8 bytes, H x W grayscale), ``height``, ``width``,
``label`` (int64 class index).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.augmentation import augment_copies

CHUNK_SIZE = 32  # originals per augmentation task (fixed: the seeds depend on it)
INDEX_FILE = "shards.json"


def _augment_chunk(task: tuple[np.ndarray, np.ndarray, dict[str, Any], int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels, operations, copies_per_image, chunk_seed = task
    augmented, origin = augment_copies(images, operations, copies_per_image, chunk_seed)
    return augmented, labels[origin]


def chunk_seed(seed: int, chunk_index: int) -> int:
    """The random seed of one chunk's augmentation: depends on (seed, chunk index) only, never on workers.

    Args:
        seed: the expansion's seed.
        chunk_index: 0-based index of the chunk of CHUNK_SIZE originals.

    Returns:
        A seed in 0..2^31 - 2 (seed times the prime 1,000,003, plus the index, modulo 2^31 - 1).
    """
    return (seed * 1_000_003 + chunk_index) % (2**31 - 1)


def augmented_chunks(
    images: np.ndarray,
    labels: np.ndarray,
    operations: dict[str, Any],
    copies_per_image: int,
    seed: int,
    workers: int = 1,
    include_originals: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Augment a training set chunk by chunk, in worker processes, in a fixed order.

    At most 2 x workers chunks are in flight, so memory does not grow with the
    number of copies.

    Args:
        images: uint8 (N, H, W) grayscale originals.
        labels: int (N,) class indices.
        operations: resolved augmentation operations (augmentation.resolve_operations).
        copies_per_image: augmented copies of each original.
        seed: the expansion's seed (chunk i draws from chunk_seed(seed, i)).
        workers: augmenting processes; 1 augments inline.
        include_originals: also yield each chunk's originals before its copies.

    Yields:
        (images, labels) pairs, uint8 (n, H, W) and int (n,): for each chunk of CHUNK_SIZE
        originals, the originals (if included), then their copies_per_image copies each.
    """
    tasks = (
        (
            images[start : start + CHUNK_SIZE],
            labels[start : start + CHUNK_SIZE],
            operations,
            copies_per_image,
            chunk_seed(seed, start // CHUNK_SIZE),
        )
        for start in range(0, len(images), CHUNK_SIZE)
    )
    if workers <= 1:
        for task in tasks:
            if include_originals:
                yield task[0], task[1]
            yield _augment_chunk(task)
        return
    from components.workers import process_pool

    with process_pool(workers, preload=[__name__]) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append((task[0], task[1], pool.submit(_augment_chunk, task)))
            if len(pending) >= 2 * workers:
                yield from _drain_one(pending, include_originals)
        while pending:
            yield from _drain_one(pending, include_originals)


def _drain_one(pending: deque, include_originals: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    originals, labels, future = pending.popleft()
    if include_originals:
        yield originals, labels
    yield future.result()


def _example(image: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[0]])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[1]])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(
    images: np.ndarray,
    labels: np.ndarray,
    operations: dict[str, Any],
    copies_per_image: int,
    seed: int,
    out_dir: str | Path,
    images_per_shard: int = 2048,
    workers: int = 1,
    include_originals: bool = True,
) -> dict[str, Any]:
    """Write an offline expansion (originals and their augmented copies) into TFRecord shards.

    Args:
        images: uint8 (N, H, W) grayscale originals.
        labels: int (N,) class indices.
        operations: resolved augmentation operations (augmentation.resolve_operations).
        copies_per_image: augmented copies of each original.
        seed: the expansion's seed; the shards are identical for any number of workers.
        out_dir: local folder for ``shard-NNNNN.tfrecord`` files and the index (created if missing).
        images_per_shard: records per shard file.
        workers: augmenting processes; 1 augments inline.
        include_originals: also write the originals.

    Returns:
        The index, also written as ``shards.json``: ``shards`` (file names), ``images`` (record
        count), ``image_shape`` ([H, W]), ``label_counts`` ({class index as str: count}),
        ``copies_per_image``, ``seed`` and ``digest`` (16 hex digits of a sha256 over every
        record in order: the shard set's identity for caching and checkpoint keys).

    Raises:
        ValueError: `images` is not a uint8 (N, H, W) array.
    """
    import tensorflow as tf

    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W) grayscale images, got {images.dtype} {images.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    writer, in_shard, total = None, 0, 0
    label_counts: dict[int, int] = {}
    digest = hashlib.sha256()
    try:
        for chunk_images, chunk_labels in augmented_chunks(
            images, labels, operations, copies_per_image, seed, workers, include_originals
        ):
            for image, label in zip(chunk_images, chunk_labels, strict=False):
                if writer is None or in_shard == images_per_shard:
                    if writer is not None:
                        writer.close()
                    names.append(f"shard-{len(names):05d}.tfrecord")
                    writer, in_shard = tf.io.TFRecordWriter(str(out / names[-1])), 0
                record = _example(image, label)
                digest.update(record)
                writer.write(record)
                in_shard += 1
                total += 1
                label_counts[int(label)] = label_counts.get(int(label), 0) + 1
    finally:
        if writer is not None:
            writer.close()
    index = {
        "shards": names,
        "images": total,
        "image_shape": list(images.shape[1:]),
        "label_counts": {str(k): v for k, v in sorted(label_counts.items())},
        "copies_per_image": copies_per_image,
        "seed": seed,
        "digest": digest.hexdigest()[:16],
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return index


def read_index(folder: str | Path) -> dict[str, Any]:
    """Read the index (``shards.json``) of a shard folder, as write_shards returned it.

    Args:
        folder: a local shard folder.

    Returns:
        The index dict.

    Raises:
        FileNotFoundError: the folder has no index.
    """
    return json.loads((Path(folder) / INDEX_FILE).read_text())


def read_records(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read every record of a shard folder into memory, in stored order.

    For inspection, tests and benchmarks; training reads shards through shard_dataset.

    Args:
        folder: a local shard folder.

    Returns:
        (images, labels): uint8 (N, H, W) at the stored size, int64 (N,).
    """
    import tensorflow as tf

    folder = Path(folder)
    images, labels = [], []
    for name in read_index(folder)["shards"]:
        for record in tf.data.TFRecordDataset(str(folder / name)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            shape = (feature["height"].int64_list.value[0], feature["width"].int64_list.value[0])
            images.append(np.frombuffer(feature["image"].bytes_list.value[0], np.uint8).reshape(shape))
            labels.append(feature["label"].int64_list.value[0])
    return np.stack(images), np.array(labels)


@dataclass
class ShardSet:
    """A folder of shards on local disk and its index; a training.TrainingData.

    Attributes:
        folder: the local shard folder.
        index: its index (write_shards).
        size: the side images are resized to when read (a backbone's input size, pixels);
            None keeps the stored size.
        scratch: the folder is the writing step's scratch space, which the materializer
            may move from and remove.
    """

    folder: str
    index: dict[str, Any]
    size: int | None = None
    scratch: bool = False

    @classmethod
    def open(cls, folder: str | Path) -> ShardSet:
        """The shard set of a folder written by write_shards, at its stored size."""
        return cls(str(folder), read_index(folder))

    def at_size(self, size: int) -> ShardSet:
        """The same shards, read resized to `size` x `size` pixels."""
        return replace(self, size=size)

    @property
    def count(self) -> int:
        """Images per epoch: every record."""
        return int(self.index["images"])

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Records per class, as int64 (num_classes,), from the index."""
        counts = np.zeros(num_classes, dtype=np.int64)
        for label, count in self.index["label_counts"].items():
            counts[int(label)] = count
        return counts

    def dataset(self, batch_size: int, shuffle_seed: int | None, first_epoch: int = 0):
        """shard_dataset over this folder at `size` (first_epoch is unused: the records are fixed)."""
        return shard_dataset(self.folder, self.size or self.index["image_shape"][0], batch_size, shuffle_seed)

    def digest(self) -> str:
        """The index's digest of every record: the shard set's identity."""
        return self.index["digest"]


def shard_dataset(
    folder: str | Path,
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 4096,
):
    """A tf.data pipeline over a shard folder: parse, resize, repeat gray to 3 channels, batch.

    Shards are read interleaved in parallel and, with `shuffle_seed`, shuffled
    (shard order and a bounded record buffer, reshuffled each epoch).

    Args:
        folder: a local shard folder.
        size: side of the model input in pixels (bilinear resize).
        batch_size: images per batch.
        shuffle_seed: seed of the shuffles; None reads in stored order, deterministically.
        shuffle_buffer: records in the shuffle buffer.

    Returns:
        A tf.data.Dataset of (float32 (B, size, size, 3) raw pixels 0..255, int64 (B,) labels)
        batches, of known cardinality.
    """
    import tensorflow as tf

    folder = Path(folder)
    index = read_index(folder)
    files = [str(folder / name) for name in index["shards"]]
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        gray = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), [example["height"], example["width"], 1])
        image = tf.image.resize(tf.cast(gray, tf.float32), [size, size], method="bilinear")
        return tf.repeat(image, 3, axis=-1), example["label"]

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)) or 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=shuffle_seed is None,
    )
    # The index knows the count: Keras then sizes epochs and progress bars from the first one on.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(index["images"]))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
