"""Checkpoint bookkeeping, and resume after the training process is killed."""

import json
import subprocess
import sys
import textwrap

import numpy as np

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
