"""Offline expansion into TFRecord shards: counts, labels, worker-count independence, reading back."""

import numpy as np
import pytest

from components.augmentation import resolve_operations
from components.shards import read_records, shard_dataset, write_shards
from tests.factories import cycling_labels, noise_images


@pytest.fixture(scope="module")
def originals():
    return noise_images(40, 48, seed=0), cycling_labels(40, 3)


def test_shards_hold_originals_and_copies_independent_of_workers(originals, tmp_path):
    images, labels = originals
    operations = resolve_operations("paper")
    serial = write_shards(images, labels, operations, 3, seed=5, out_dir=tmp_path / "one", images_per_shard=50)
    write_shards(images, labels, operations, 3, seed=5, out_dir=tmp_path / "two", images_per_shard=50, workers=2)
    assert serial["images"] == 40 * 4
    assert len(serial["shards"]) == 4  # 160 records, 50 per shard
    assert serial["label_counts"] == {"0": 14 * 4, "1": 13 * 4, "2": 13 * 4}
    one, two = read_records(tmp_path / "one"), read_records(tmp_path / "two")
    assert np.array_equal(one[0], two[0])
    assert np.array_equal(one[1], two[1])
    # Chunk order: the first 32 originals untouched, then their 3 x 32 copies.
    assert np.array_equal(one[0][:32], images[:32])
    assert not np.array_equal(one[0][32:64], images[:32])
    other_seed = write_shards(images, labels, operations, 3, seed=6, out_dir=tmp_path / "six", images_per_shard=50)
    assert other_seed["images"] == 160
    assert not np.array_equal(read_records(tmp_path / "six")[0], one[0])


def test_shard_dataset_feeds_model_input(originals, tmp_path):
    images, labels = originals
    write_shards(images, labels, resolve_operations("light"), 1, seed=0, out_dir=tmp_path, images_per_shard=16)
    batches = list(shard_dataset(tmp_path, size=32, batch_size=8, shuffle_seed=1))
    assert sum(len(batch[1]) for batch in batches) == 80
    first_images, first_labels = batches[0]
    assert first_images.shape == (8, 32, 32, 3)
    assert first_images.dtype.name == "float32"
    assert float(first_images.numpy().max()) <= 255.0
    assert set(first_labels.numpy()) <= {0, 1, 2}
    ordered = np.concatenate([batch[1].numpy() for batch in shard_dataset(tmp_path, size=32, batch_size=8)])
    assert sorted(ordered.tolist()) == sorted(np.concatenate([labels, labels]).tolist())


def test_write_shards_rejects_color_input(tmp_path):
    with pytest.raises(ValueError, match="grayscale"):
        write_shards(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, int), resolve_operations("none"), 1, 0, tmp_path)


def test_shard_set_reports_count_labels_and_a_digest_independent_of_workers(originals, tmp_path):
    from components.shards import ShardSet

    images, labels = originals
    operations = resolve_operations("light")
    one = write_shards(images, labels, operations, 2, seed=1, out_dir=tmp_path / "one", images_per_shard=32)
    two = write_shards(images, labels, operations, 2, seed=1, out_dir=tmp_path / "two", images_per_shard=32, workers=2)
    other = write_shards(images, labels, operations, 2, seed=2, out_dir=tmp_path / "other", images_per_shard=32)
    assert one["digest"] == two["digest"]
    assert one["digest"] != other["digest"]
    shards = ShardSet.open(tmp_path / "one").at_size(24)
    assert shards.count == 120
    assert shards.label_counts(4).tolist() == [14 * 3, 13 * 3, 13 * 3, 0]
    first = next(iter(shards.dataset(batch_size=5, shuffle_seed=None)))
    assert tuple(first[0].shape) == (5, 24, 24, 3)


def test_shards_from_a_remote_store_are_copied_to_the_node_once(originals, tmp_path):
    from steps.shard_materializer import copy_shards_to_node

    images, labels = originals
    index = write_shards(
        images, labels, resolve_operations("light"), 1, seed=0, out_dir=tmp_path / "store", images_per_shard=32
    )
    local = copy_shards_to_node(str(tmp_path / "store"), str(tmp_path / "cache"))
    assert local.folder == str(tmp_path / "cache" / index["digest"])
    assert local.index == index
    for name in index["shards"]:
        assert (tmp_path / "cache" / index["digest"] / name).read_bytes() == (tmp_path / "store" / name).read_bytes()
    # A complete copy is reused; a copy without its index (interrupted) is redone.
    marker = tmp_path / "cache" / index["digest"] / index["shards"][0]
    marker.write_bytes(b"stale")
    copy_shards_to_node(str(tmp_path / "store"), str(tmp_path / "cache"))
    assert marker.read_bytes() == b"stale"
    (tmp_path / "cache" / index["digest"] / "shards.json").unlink()
    copy_shards_to_node(str(tmp_path / "store"), str(tmp_path / "cache"))
    assert marker.read_bytes() == (tmp_path / "store" / index["shards"][0]).read_bytes()
