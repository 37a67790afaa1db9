import numpy as np
import pytest

from components.augmentation import (
    PAPER_OPERATIONS,
    AugmentationConfigError,
    augment_copies,
    build_augmenter,
    enabled_operations,
    expand_training_set,
    preview_grid,
    resolve_operations,
)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    base = np.zeros((6, 64, 64), dtype=np.uint8)
    base[:, 16:48, 20:44] = rng.integers(100, 255, (6, 32, 24), dtype=np.uint8)
    return base


def test_paper_preset_has_all_table2_operations():
    assert set(enabled_operations(resolve_operations("paper"))) == set(PAPER_OPERATIONS)
    assert resolve_operations("paper")["rotate"]["range"] == [-10, 10]
    assert resolve_operations("paper")["shear"]["range"] == [-16, 16]
    assert enabled_operations(resolve_operations("none")) == []
    assert set(enabled_operations(resolve_operations("light"))) < set(PAPER_OPERATIONS)


def test_same_seed_same_images_different_seed_different(images):
    operations = resolve_operations("paper")
    first, origin = augment_copies(images, operations, copies_per_image=3, seed=11)
    again, _ = augment_copies(images, operations, copies_per_image=3, seed=11)
    other, _ = augment_copies(images, operations, copies_per_image=3, seed=12)
    assert first.shape == (18, 64, 64)
    assert first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert list(origin[:6]) == list(range(6))
    assert not np.array_equal(first[:6], images)  # augmentation changed something


def test_global_rng_does_not_leak_into_results(images):
    operations = resolve_operations("paper")
    np.random.seed(1)
    first, _ = augment_copies(images, operations, 2, seed=5)
    np.random.seed(999)
    second, _ = augment_copies(images, operations, 2, seed=5)
    assert np.array_equal(first, second)


def test_disabling_every_operation_adds_nothing(images):
    operations = resolve_operations("none")
    expanded, labels = expand_training_set(images, np.arange(6), operations, copies_per_image=4, seed=0)
    assert np.array_equal(expanded, images)
    assert list(labels) == list(range(6))


def test_expansion_keeps_labels_with_their_images(images):
    labels = np.array([0, 1, 2, 0, 1, 2])
    expanded, expanded_labels = expand_training_set(images, labels, resolve_operations("light"), 2, seed=3)
    assert len(expanded) == 18
    assert list(expanded_labels) == list(labels) * 3


def test_only_flip_is_exactly_a_flip(images):
    operations = resolve_operations("none", {"fliplr": {"enabled": True, "p": 1.0}})
    flipped, _ = augment_copies(images, operations, 1, seed=0)
    assert np.array_equal(flipped, images[:, :, ::-1])


def test_overrides_are_checked():
    with pytest.raises(AugmentationConfigError, match="unknown augmentation operation 'blur'"):
        resolve_operations("paper", {"blur": {"enabled": False}})
    with pytest.raises(AugmentationConfigError, match="has no parameter"):
        resolve_operations("paper", {"rotate": {"degrees": 3}})
    with pytest.raises(AugmentationConfigError, match="unknown augmentation preset"):
        resolve_operations("heavy")
    with pytest.raises(AugmentationConfigError, match="no odd kernel"):
        build_augmenter(resolve_operations("paper", {"median_blur": {"k": [4, 4]}}))


def test_preview_grid_rows_are_original_plus_copies(images):
    augmented, origin = augment_copies(images, resolve_operations("paper"), 2, seed=0)
    grid = preview_grid(images, augmented, origin, max_rows=4)
    assert grid.shape == (4 * 64, 3 * 64)
    assert np.array_equal(grid[:64, :64], images[0])
