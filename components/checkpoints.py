"""Training checkpoints: the key that names a training, and the state that lets it resume.

A checkpoint folder holds one training in flight:

    state.json                 the commit record (written last, renamed into place)
    epoch-0003.weights.h5      the model's weights after the last completed epoch
    epoch-0003.optimizer.npz   the optimizer's variables then (moments, iterations, learning rate)
    epoch-0002.weights.h5      the best epoch's weights (EarlyStopping restores them), kept while
                               it is the best; when the last epoch is the best, its file serves both

The best epoch is the one with the best value of the monitored validation
metric (`TrainingConfig.monitor`: a balanced metric, higher is better, or
val_loss, lower is better); the state records its name, mode and value.

Files are written first, `state.json` last, so a process killed at any moment
leaves either the previous consistent state or the new one; files that no
state refers to are removed on the next save. The folder may be on S3: all
access goes through a small filesystem object with the signature of
`zenml.io.fileio` (copy, exists, listdir, makedirs, remove, rename, rmtree,
open); `LOCAL_FS` is the local one, so this module needs neither ZenML nor Keras.
Keras files are written to a local temporary folder and copied in.

Epochs are counted globally: phase 2 (fine-tuning) continues the numbering of
phase 1, as in the logs and in MLflow.

A resumed training must be the uninterrupted one, so everything random in an
epoch (the order of the images, on-the-fly augmentation draws, dropout masks)
is drawn from `epoch_seed(seed, epoch)`, never from a generator that has been
running since the process started; an `EpochClock` tells the input pipeline
which epoch Keras is in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_FILE = "state.json"
# 2: the best epoch is chosen on a named metric (monitor, mode, best_value); 1 had best_val_loss only.
STATE_VERSION = 2


def checkpoint_key(*parts: Any) -> str:
    """Name a training by the hash of its inputs, as canonical JSON.

    The step passes the backbone config, the training config, the seed, the
    class names and the data digests; anything that changes the result must be
    among them, anything that does not (run names, folders) must not.

    Args:
        *parts: JSON-serialisable values (anything else is hashed as its ``str``).

    Returns:
        16 hex digits (the first 64 bits of a sha256), the same for equal inputs in any process.
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_digest(split_manifest) -> str:
    """Hash the content of a split manifest: its dataset version plus each row's split.

    Args:
        split_manifest: a manifest DataFrame with a ``split`` column (components.splitting).

    Returns:
        16 hex digits: manifest.dataset_version (files, labels, exclusions) and every
        (uri, split), in an order-free way.
    """
    from components.manifest import dataset_version

    pairs = sorted(zip(split_manifest["uri"].astype(str), split_manifest["split"].astype(str), strict=False))
    digest = hashlib.sha256(dataset_version(split_manifest).encode())
    for uri, split in pairs:
        digest.update(f"\x1e{uri}\x1f{split}".encode())
    return digest.hexdigest()[:16]


def array_digest(*arrays) -> str:
    """Hash arrays by dtype, shape and bytes (the augmented training set is not in the manifest).

    Args:
        *arrays: numpy arrays (or array-likes), in a fixed order.

    Returns:
        16 hex digits of a sha256.
    """
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def epoch_seed(seed: int, epoch: int) -> int:
    """The random seed of one epoch's order and draws, from the run's seed.

    A fixed mix with two primes (7,919 and 104,729, the 1,000th and 10,000th) modulo
    the Mersenne prime 2^31 - 1, so nearby (seed, epoch) pairs give unrelated seeds.

    Args:
        seed: the run's seed.
        epoch: 0-based global epoch number (a resumed run continues it).

    Returns:
        A seed in 0..2^31 - 2, accepted by numpy, TensorFlow and imgaug.
    """
    return (seed * 7_919 + epoch * 104_729) % (2**31 - 1)


class EpochClock:
    """Which 0-based global epoch a training input pipeline draws its next iteration for.

    Keras iterates a tf.data training set once per epoch, and once more, before the
    first epoch, to read one batch that builds its metrics; counting iterations
    would then number the epochs differently in an uninterrupted and a resumed
    run. Training sets the clock at every epoch's start (a Keras callback in
    components.training); without one, each iteration takes the next number.

    Args:
        first: the epoch of the first iteration (a resumed run: its completed epochs).
    """

    def __init__(self, first: int = 0):
        self.epoch = first

    def take(self) -> int:
        """The epoch of the iteration starting now; the next one gets the following number unless set."""
        epoch = self.epoch
        self.epoch += 1
        return epoch

    @classmethod
    def of(cls, first_epoch: int | EpochClock) -> EpochClock:
        """`first_epoch` itself when it is a clock, else a clock starting at it."""
        return first_epoch if isinstance(first_epoch, EpochClock) else cls(int(first_epoch))


@dataclass
class TrainingState:
    """Where a training stands after its last completed epoch (saved as ``state.json``).

    Attributes:
        key: checkpoint_key of the training.
        phase: 1 (head; backbone frozen when pretrained) or 2 (fine-tuning).
        epoch: completed epochs, both phases together.
        phase_start: global epoch at which the current phase began (phase 1: 0).
        phase1_epochs: epochs of phase 1, set once it has finished (early stopping may end it early).
        monitor: the validation metric the best epoch is chosen on (a key of the epoch's logs).
        mode: "max" (higher `monitor` is better) or "min" (lower is better, as val_loss).
        best_value: the best value of `monitor` so far.
        best_epoch: 1-based global epoch of best_value.
        wait: epochs since the last improvement (EarlyStopping's counter).
        reduce_lr: ReduceLROnPlateau's counters.
        weights: file name of the last epoch's weights in the folder.
        optimizer: file name of the optimizer's variables after the last epoch.
        best_weights: file name of the best epoch's weights.
        history: Keras logs per epoch (loss, val_loss, accuracy...).
        version: STATE_VERSION of the format.
    """

    key: str
    phase: int = 1  # 1: head (backbone frozen when pretrained); 2: fine-tuning
    epoch: int = 0  # completed epochs, both phases together
    phase_start: int = 0  # global epoch at which the current phase began (phase 1: 0)
    phase1_epochs: int | None = None  # set when phase 1 has finished (early stopping may end it before `epochs`)
    monitor: str = "val_loss"
    mode: str = "min"  # "max": higher `monitor` is better; "min": lower is better
    best_value: float | None = None  # best value of `monitor` so far
    best_epoch: int | None = None  # 1-based global epoch of best_value
    wait: int = 0  # epochs since the last improvement (EarlyStopping)
    reduce_lr: dict[str, Any] = field(default_factory=dict)  # ReduceLROnPlateau counters
    weights: str | None = None  # file names inside the folder
    optimizer: str | None = None
    best_weights: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    version: int = STATE_VERSION

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"checkpoint state mode {self.mode!r}; valid: min, max")

    def to_json(self) -> str:
        """The state as JSON text (what ``state.json`` holds)."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        """Read a state written by to_json (this version, or version 1, which chose epochs on val_loss).

        Args:
            text: the content of ``state.json``.

        Returns:
            The state; a version 1 state comes back as version 2 with monitor val_loss, mode min
            and its best_val_loss as best_value.

        Raises:
            ValueError: the text is not JSON, its format version is neither 1 nor STATE_VERSION,
                or its mode is not min or max.
            TypeError: its fields are not TrainingState's.
        """
        data = json.loads(text)
        if data.get("version") == 1:  # chose the best epoch on the lowest val_loss
            data = {**data, "monitor": "val_loss", "mode": "min", "version": STATE_VERSION}
            data["best_value"] = data.pop("best_val_loss", None)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint state version {data.get('version')!r}, expected {STATE_VERSION}")
        return cls(**data)

    def is_improvement(self, value: float | None) -> bool:
        """Whether `value` of the monitored metric beats the best so far (strictly; NaN and None never do).

        Args:
            value: this epoch's value of `monitor`, or None when the logs lack it.

        Returns:
            True for the first finite value and for any value better than best_value in `mode`.
        """
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def record_epoch(self, logs: dict[str, float], improved: bool) -> None:
        """Advance by one completed epoch.

        Args:
            logs: the epoch's Keras logs; `monitor` is read when `improved`.
            improved: whether this epoch is the new best (the caller decides, e.g. with is_improvement).
        """
        self.epoch += 1
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        if improved:
            self.best_value = float(logs[self.monitor])
            self.best_epoch = self.epoch
            self.wait = 0
        else:
            self.wait += 1

    def finish_phase1(self) -> None:
        """Phase 1 is over; phase 2 starts from its (best) weights with a fresh optimizer."""
        self.phase1_epochs = self.epoch
        self.phase = 2
        self.phase_start = self.epoch
        self.wait = 0
        self.reduce_lr = {}
        self.optimizer = None

    def referenced_files(self) -> set[str]:
        """The file names inside the folder that this state needs."""
        return {name for name in (self.weights, self.optimizer, self.best_weights) if name}


def weights_file(epoch: int) -> str:
    """File name of the model weights after a 1-based global `epoch` (``epoch-0003.weights.h5``)."""
    return f"epoch-{epoch:04d}.weights.h5"


def optimizer_file(epoch: int) -> str:
    """File name of the optimizer variables after a 1-based global `epoch` (``epoch-0003.optimizer.npz``)."""
    return f"epoch-{epoch:04d}.optimizer.npz"


class _LocalFilesystem:
    """The subset of zenml.io.fileio that checkpoints use, on local paths."""

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(path)

    @staticmethod
    def listdir(path: str) -> list[str]:
        return os.listdir(path)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def remove(path: str) -> None:
        os.remove(path)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        os.replace(src, dst)

    @staticmethod
    def rmtree(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def open(path: str, mode: str = "r"):
        return open(path, mode)


LOCAL_FS = _LocalFilesystem()


class CheckpointFolder:
    """A checkpoint folder on any filesystem with zenml.io.fileio's interface.

    Args:
        path: the folder (local or, through `fs`, remote such as ``s3://``).
        fs: the filesystem object (zenml.io.fileio in steps); LOCAL_FS when None.
    """

    def __init__(self, path: str, fs: Any = None):
        self.path = str(path)
        self.fs = fs or LOCAL_FS

    def _join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def load(self, key: str) -> TrainingState | None:
        """The saved state of a training, if there is a complete one.

        Args:
            key: checkpoint_key of the training to resume.

        Returns:
            The state, or None when there is no folder, the state is of another key or
            unreadable, or a file it refers to is missing.
        """
        path = self._join(STATE_FILE)
        if not self.fs.exists(path):
            return None
        try:
            with self.fs.open(path, "r") as handle:
                state = TrainingState.from_json(handle.read())
        except (ValueError, TypeError, OSError):
            return None
        if state.key != key or not all(self.fs.exists(self._join(name)) for name in state.referenced_files()):
            return None
        return state

    def fetch(self, name: str, local_folder: str) -> str:
        """Copy one file of the folder to local disk (Keras reads local files only).

        Args:
            name: the file name inside the checkpoint folder.
            local_folder: an existing local folder.

        Returns:
            The local path of the copy.
        """
        local = os.path.join(local_folder, name)
        self.fs.copy(self._join(name), local, overwrite=True)
        return local

    def save(self, state: TrainingState, local_files: dict[str, str]) -> None:
        """Copy the new files in, commit the state (``state.json`` last), then drop files no state refers to.

        Args:
            state: the state after the completed epoch.
            local_files: {file name in the folder: local path} of the files it newly refers to.
        """
        self.fs.makedirs(self.path)
        for name, local in local_files.items():
            self.fs.copy(local, self._join(name), overwrite=True)
        pending = self._join(STATE_FILE + ".tmp")
        with self.fs.open(pending, "w") as handle:
            handle.write(state.to_json())
        self.fs.rename(pending, self._join(STATE_FILE), overwrite=True)
        keep = state.referenced_files() | {STATE_FILE}
        for name in self.fs.listdir(self.path):
            name = os.path.basename(str(name).rstrip("/"))
            if name not in keep:
                try:
                    self.fs.remove(self._join(name))
                except OSError:
                    pass

    def clear(self) -> None:
        """Remove the folder (once training has finished)."""
        if self.fs.exists(self.path):
            self.fs.rmtree(self.path)
