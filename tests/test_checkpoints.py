"""Checkpoint bookkeeping, and resume after the training process is killed."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from components.checkpoints import CheckpointFolder, TrainingState, checkpoint_key, split_digest
from tests.factories import manifest_row, manifest_table


def test_key_changes_with_any_input_and_ignores_dict_order():
    base = checkpoint_key({"name": "MobileNet", "alpha": 0.25}, {"epochs": 3}, 42, "abc")
    assert base == checkpoint_key({"alpha": 0.25, "name": "MobileNet"}, {"epochs": 3}, 42, "abc")
    assert (
        len(
            {
                base,
                checkpoint_key({"name": "MobileNet", "alpha": 0.5}, {"epochs": 3}, 42, "abc"),
                checkpoint_key({"name": "MobileNet", "alpha": 0.25}, {"epochs": 4}, 42, "abc"),
                checkpoint_key({"name": "MobileNet", "alpha": 0.25}, {"epochs": 3}, 43, "abc"),
                checkpoint_key({"name": "MobileNet", "alpha": 0.25}, {"epochs": 3}, 42, "abd"),
            }
        )
        == 5
    )


def test_split_digest_sees_split_changes_not_row_order():
    rows = [manifest_row("a", "x"), manifest_row("b", "y"), manifest_row("c", "x")]
    manifest = manifest_table(rows).assign(split=["train", "val", "test"])
    assert split_digest(manifest) == split_digest(manifest.iloc[::-1])
    assert split_digest(manifest) != split_digest(manifest.assign(split=["train", "test", "val"]))


def test_state_round_trip_commit_and_cleanup(tmp_path):
    folder = CheckpointFolder(str(tmp_path / "ckpt"))
    assert folder.load("k") is None
    state = TrainingState(key="k")
    state.record_epoch({"loss": 1.0, "val_loss": 0.9}, improved=True)
    state.record_epoch({"loss": 0.8, "val_loss": 1.1}, improved=False)
    for name in ("epoch-0002.weights.h5", "epoch-0001.weights.h5"):
        (tmp_path / name).write_text(name)
    state.weights, state.best_weights = "epoch-0002.weights.h5", "epoch-0001.weights.h5"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "epoch-0000.weights.h5").write_text("stale")
    folder.save(state, {name: str(tmp_path / name) for name in state.referenced_files()})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch-0001.weights.h5",
        "epoch-0002.weights.h5",
        "state.json",
    ]
    loaded = folder.load("k")
    assert loaded == state
    assert (loaded.epoch, loaded.best_epoch, loaded.wait) == (2, 1, 1)
    assert folder.load("another key") is None
    state.finish_phase1()
    assert (state.phase, state.phase_start, state.phase1_epochs, state.wait) == (2, 2, 2, 0)
    (tmp_path / "ckpt" / "state.json").write_text("{truncated")
    assert folder.load("k") is None  # unreadable state: start afresh
    folder.clear()
    assert not (tmp_path / "ckpt").exists()


def test_state_keeps_the_monitored_best(tmp_path):
    folder = CheckpointFolder(str(tmp_path / "ckpt"))
    state = TrainingState(key="k", monitor="val_f1_macro", mode="max")
    for f1 in (0.4, 0.7, 0.6):
        state.record_epoch({"val_loss": 0.5, "val_f1_macro": f1}, state.is_improvement(f1))
    folder.save(state, {})
    loaded = folder.load("k")
    assert loaded == state
    assert (loaded.monitor, loaded.mode) == ("val_f1_macro", "max")
    assert (loaded.best_epoch, loaded.best_value, loaded.wait) == (2, 0.7, 1)
    assert not loaded.is_improvement(0.7)  # strictly better only
    assert loaded.is_improvement(0.71)
    assert not loaded.is_improvement(float("nan"))


def test_version_1_state_resumes_as_val_loss():
    version_1 = {"key": "k", "epoch": 2, "best_val_loss": 0.3, "best_epoch": 1, "wait": 1, "version": 1}
    state = TrainingState.from_json(json.dumps(version_1))
    assert (state.monitor, state.mode, state.best_value, state.version) == ("val_loss", "min", 0.3, 2)
    assert state.is_improvement(0.29)


def test_resume_refuses_a_checkpoint_that_monitored_another_metric(tmp_path):
    import pytest

    from components.config import TrainingConfig
    from components.training import train_classifier

    folder = CheckpointFolder(str(tmp_path / "ckpt"))
    state = TrainingState(key="k")  # val_loss, as every version 1 checkpoint
    state.record_epoch({"val_loss": 0.9}, improved=True)
    folder.save(state, {})
    images, labels = np.zeros((4, 32, 32), np.uint8), np.arange(4) % 2
    with pytest.raises(ValueError, match="chose its best epoch on val_loss; this training monitors val_f1_macro"):
        train_classifier(
            lambda: None,
            (images, labels),
            (images, labels),
            num_classes=2,
            training=TrainingConfig(epochs=2, monitor="val_f1_macro"),
            seed=0,
            checkpoint_dir=folder.path,
            checkpoint_key="k",
            num_gpus=0,
        )


TRAIN = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    from components.backbones import build_classifier
    from components.config import TrainingConfig
    from components.training import train_classifier

    def train(folder, callbacks=()):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (8, 32, 32), dtype=np.uint8)
        labels = np.arange(8) % 2
        training = TrainingConfig(epochs=4, batch_size=4, learning_rate=1e-3, patience=10, lr_schedule="constant")
        return train_classifier(lambda: build_classifier("MobileNet", 2, 32, weights="none", alpha=0.25),
                                (images, labels), (images[:4], labels[:4]), num_classes=2, training=training,
                                seed=0, checkpoint_dir=folder, checkpoint_key="key", callbacks=list(callbacks),
                                num_gpus=0, run_eagerly=True, verbose=0)

    class KillAfterEpoch2(keras.callbacks.Callback):
        # Runs after the checkpoint callback: epoch 2's checkpoint is committed, then the process dies.
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                os._exit(1)
""")


def test_training_killed_after_epoch_2_resumes_at_epoch_3(tmp_path):
    folder = str(tmp_path / "checkpoints")
    killed = subprocess.run(
        [sys.executable, "-c", TRAIN + f"\ntrain({folder!r}, [KillAfterEpoch2()])\n"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 1, killed.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2
    assert len(state["history"]["loss"]) == 2

    namespace: dict = {}
    exec(TRAIN, namespace)  # the same function, now in this process
    import keras

    class Recorder(keras.callbacks.Callback):
        epochs: list = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(epoch)

    recorder = Recorder()
    model, summary = namespace["train"](folder, [recorder])
    assert summary["resumed_from_epoch"] == 2
    assert recorder.epochs == [2, 3]  # epochs 3 and 4 only
    assert summary["epochs_run"] == 4
    assert len(summary["history"]["loss"]) == 4
    assert summary["history"]["loss"][:2] == state["history"]["loss"]
    assert np.isfinite(summary["best_val_loss"])
    f1 = summary["history"]["val_f1_macro"]  # the default monitor, carried over the kill
    assert state["monitor"] == "val_f1_macro"
    assert f1[:2] == state["history"]["val_f1_macro"]
    assert summary["monitor"] == "val_f1_macro"
    assert summary["best_monitor_value"] == max(f1)
    assert summary["best_epoch"] == 1 + int(np.argmax(f1))  # the first best: a tie after resuming is no improvement
    assert summary["best_val_loss"] == summary["history"]["val_loss"][summary["best_epoch"] - 1]


def _epoch_orders(dataset, iterations: int) -> list[list[int]]:
    """The labels of each iteration of a training dataset, in order (labels here are image indices)."""
    return [np.concatenate([labels.numpy() for _, labels in dataset]).tolist() for _ in range(iterations)]


def test_an_epoch_order_depends_on_the_seed_and_the_epoch_only():
    from components.checkpoints import EpochClock
    from components.training import make_dataset

    images, indices = np.zeros((10, 4, 4), np.uint8), np.arange(10)
    uninterrupted = _epoch_orders(make_dataset(images, indices, 4, shuffle_seed=5), 3)
    assert len({tuple(order) for order in uninterrupted}) == 3  # a new order every epoch
    assert sorted(uninterrupted[2]) == list(range(10))
    assert _epoch_orders(make_dataset(images, indices, 4, shuffle_seed=5, first_epoch=2), 1) == uninterrupted[2:]
    clock = EpochClock(0)
    resumed = make_dataset(images, indices, 4, shuffle_seed=5, first_epoch=clock)
    _epoch_orders(resumed, 1)  # an extra iteration (Keras reads a batch to build its metrics)...
    clock.epoch = 2  # ...then training sets the clock at the epoch's start
    assert _epoch_orders(resumed, 1) == uninterrupted[2:]
    assert _epoch_orders(make_dataset(images, indices, 4, shuffle_seed=6), 1) != uninterrupted[:1]


def test_on_the_fly_mixing_resumes_with_the_epoch():
    from components.augmentation import resolve_operations
    from components.online_augmentation import OnTheFlyData
    from tests.factories import noise_images

    data = OnTheFlyData(noise_images(12, 8), np.arange(12), resolve_operations("paper"), copies_per_image=1, seed=2)
    uninterrupted = _epoch_orders(data.dataset(batch_size=5, shuffle_seed=4), 2)
    assert sorted(uninterrupted[1]) == sorted(list(range(12)) * 2)  # each original and its copy
    # One chunk (12 < shards.CHUNK_SIZE) yields its 12 originals, then their copies; mixed, the
    # first 12 images hold some original and its copy.
    assert len(set(uninterrupted[1][:12])) < 12
    assert _epoch_orders(data.dataset(batch_size=5, shuffle_seed=4, first_epoch=1), 1) == uninterrupted[1:]


class Killed(Exception):
    """Stands for the process dying after an epoch's checkpoint was committed."""


def _tiny_two_phase_model():
    """A 'pretrained' frozen backbone (Conv + BatchNorm) and a head with Dropout: every RNG training uses."""
    import keras

    backbone = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3)]
        + [keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Conv2D(4, 3)],
        name="tiny_backbone",
    )
    backbone.trainable = False
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(8, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _train_tiny(folder: str, kill_after_epoch: int | None = None):
    """Train the tiny model 3 + 2 epochs (phase 1, then fine-tuning); returns summary and per-epoch weights."""
    import keras

    from components.config import TrainingConfig
    from components.training import train_classifier
    from tests.factories import cycling_labels, noise_images

    weights: dict[int, list] = {}

    class Watch(keras.callbacks.Callback):  # runs after the checkpoint callback
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch + 1] = [np.array(w) for w in self.model.get_weights()]
            if epoch + 1 == kill_after_epoch:
                raise Killed()

    images, labels = noise_images(16, 16, seed=1), cycling_labels(16, 2)
    training = TrainingConfig(
        epochs=3, batch_size=8, learning_rate=1e-2, patience=10, fine_tune_layers=2, fine_tune_epochs=2
    )
    _, summary = train_classifier(
        _tiny_two_phase_model,
        (images, labels),
        (images[:8], labels[:8]),
        num_classes=2,
        training=training,
        seed=3,
        checkpoint_dir=folder,
        checkpoint_key="key",
        callbacks=[Watch()],
        num_gpus=0,
        run_eagerly=True,
        verbose=0,
    )
    return summary, weights


@pytest.fixture(scope="module")
def uninterrupted_tiny_run(tmp_path_factory):
    return _train_tiny(str(tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.parametrize("kill_after_epoch", [2, 4])  # in phase 1; in phase 2 (fine-tuning)
def test_a_resumed_training_is_the_uninterrupted_one(tmp_path, uninterrupted_tiny_run, kill_after_epoch):
    """Shuffling, dropout and the optimizer continue as if the process had never died."""
    expected, expected_weights = uninterrupted_tiny_run
    folder = str(tmp_path / "checkpoints")
    with pytest.raises(Killed):
        _train_tiny(folder, kill_after_epoch)
    resumed, resumed_weights = _train_tiny(folder)
    assert resumed["resumed_from_epoch"] == kill_after_epoch
    assert sorted(resumed_weights) == list(range(kill_after_epoch + 1, 6))
    assert expected["epochs_run"] == 5
    assert resumed["epochs_run"] == 5
    assert resumed["phase1_epochs"] == 3
    assert set(resumed["history"]) == set(expected["history"])
    for name, values in expected["history"].items():
        np.testing.assert_allclose(resumed["history"][name], values, rtol=1e-6, atol=1e-7, err_msg=name)
    assert resumed["best_epoch"] == expected["best_epoch"]
    for resumed_array, expected_array in zip(resumed_weights[5], expected_weights[5], strict=True):
        np.testing.assert_allclose(resumed_array, expected_array, rtol=1e-6, atol=1e-7)
