"""On-the-fly augmentation: each epoch holds originals plus fresh copies, drawn from (seed, epoch),
identical with 1 or 2 worker processes; tf.data yields one full epoch per iteration."""

import numpy as np
import pytest

from components.augmentation import resolve_operations
from components.online_augmentation import OnTheFlyData
from tests.factories import cycling_labels, noise_images


@pytest.fixture(scope="module")
def originals():
    return noise_images(40, 32, seed=0), cycling_labels(40, 2)


def _epoch(data: OnTheFlyData, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(data.epoch_chunks(epoch))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def test_each_epoch_draws_new_copies_reproducibly_whatever_the_workers(originals):
    images, labels = originals
    data = OnTheFlyData(images, labels, resolve_operations("paper"), copies_per_image=2, seed=7)
    first, first_labels = _epoch(data, 0)
    assert data.count == 120
    assert len(first) == 120
    assert data.label_counts(2).tolist() == [60, 60]
    assert np.bincount(first_labels).tolist() == [60, 60]
    again, _ = _epoch(data, 0)
    second, _ = _epoch(data, 1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, second)
    # Every original is in each epoch, unchanged; the rest are new.
    as_set = lambda stack: {image.tobytes() for image in stack}  # noqa: E731
    assert as_set(images) <= as_set(first)
    assert as_set(images) <= as_set(second)
    assert not (as_set(first) - as_set(images)) & (as_set(second) - as_set(images))
    pooled = OnTheFlyData(images, labels, resolve_operations("paper"), copies_per_image=2, seed=7, workers=2)
    assert np.array_equal(_epoch(pooled, 1)[0], second)


def test_dataset_yields_a_fresh_full_epoch_per_iteration(originals):
    images, labels = originals
    data = OnTheFlyData(images, labels, resolve_operations("paper"), copies_per_image=1, seed=3)
    dataset = data.dataset(batch_size=16, shuffle_seed=0)
    epochs = [np.concatenate([batch[0].numpy() for batch in dataset]) for _ in range(2)]
    assert [epoch.shape for epoch in epochs] == [(80, 32, 32, 3)] * 2
    assert np.array_equal(epochs[0][..., 0], epochs[0][..., 2])  # gray repeated into 3 channels
    assert not np.array_equal(np.sort(epochs[0].ravel()), np.sort(epochs[1].ravel()))
    # A resumed run continues the draws: its first epoch is the uninterrupted run's second.
    resumed = data.dataset(batch_size=80, shuffle_seed=None, first_epoch=1)
    expected, _ = _epoch(data, 1)
    assert np.array_equal(next(iter(resumed))[0].numpy()[..., 0], expected)


def test_the_digest_follows_the_recipe(originals):
    images, labels = originals
    base = OnTheFlyData(images, labels, resolve_operations("paper"), 1, seed=1)
    assert base.digest() == OnTheFlyData(images, labels, resolve_operations("paper"), 1, seed=1).digest()
    assert base.digest() != OnTheFlyData(images, labels, resolve_operations("light"), 1, seed=1).digest()
    assert base.digest() != OnTheFlyData(images, labels, resolve_operations("paper"), 2, seed=1).digest()
    assert base.digest() != OnTheFlyData(images, labels, resolve_operations("paper"), 1, seed=2).digest()
