"""The served model: an MLflow pyfunc that takes base64 images and returns class probabilities.

Clients send a DataFrame with one column ``image`` of base64-encoded PNG/JPEG
bytes (strings). The model decodes and resizes them with the same
deterministic preprocessing as training (components/imaging.py) and answers
one ``prob_<class>`` column per class plus ``label`` (the argmax).

The pyfunc carries two artifacts: the Keras model (``.keras``) and the model
contract (JSON: class names, input size, dtype and range, preprocessing,
intended use). The class lives here, not in ``__main__``, and the
``components`` package travels with the model as ``code_paths``, so a served
model imports it from its own copy, whatever the server's working directory.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from components.backbones import KERAS_ARTIFACT, probabilities  # KERAS_ARTIFACT: the Keras model's artifact name
from components.errors import CxrError
from components.imaging import decode_image_bytes, encode_png, to_model_input
from components.intended_use import INTENDED_USE
from components.labels import labels_for_task

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
CONTRACT_ARTIFACT = "contract"
PREDICT_BATCH_SIZE = 32
# Bad rows listed in one error message; more are counted, not listed.
MAX_LISTED_ERRORS = 5

# Distributions pinned in the logged model's requirements. Passing them
# explicitly skips MLflow's requirement inference (about 5 s per log_model).
# GPU workers install `tensorflow` instead of `tensorflow-cpu`.
_PINNED = ("mlflow", ("tensorflow-cpu", "tensorflow"), "keras", "pillow", "numpy", "pandas")


def prob_column(class_name: str) -> str:
    """The served probability column of a class (``prob_COVID-19``)."""
    return f"prob_{class_name}"


def build_contract(
    task: str,
    backbone: str,
    image_size: int,
    intended_use: str = INTENDED_USE,
    **extra: Any,
) -> dict[str, Any]:
    """The model contract for a trained classifier (MONAI-bundle-like metadata)."""
    class_names = list(labels_for_task(task))
    contract = {
        "task": task,
        "backbone": backbone,
        "class_names": class_names,
        "image_size": int(image_size),
        "model_input": {
            "shape": [int(image_size), int(image_size), 3],
            "dtype": "float32",
            "range": [0, 255],
        },
        "preprocessing": (
            "decode PNG/JPEG; convert to 8-bit grayscale (16-bit rescaled, alpha on black); "
            f"bilinear resize to {image_size}x{image_size}; repeat to 3 channels; "
            "backbone normalisation is inside the model"
        ),
        "serving_input": f"DataFrame column '{IMAGE_COLUMN}': base64-encoded PNG or JPEG bytes",
        "serving_output": [prob_column(name) for name in class_names] + [LABEL_COLUMN],
        "intended_use": intended_use,
    }
    contract.update(extra)
    return contract


def validate_contract(contract: dict[str, Any]) -> None:
    """Fail at logging time, not at serving time, on a contract the model cannot use."""
    names = contract.get("class_names")
    if not isinstance(names, list | tuple) or len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"contract needs >= 2 distinct class_names, got {names!r}")
    size = contract.get("image_size")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"contract needs a positive integer image_size, got {size!r}")


def model_signature(class_names: list[str] | tuple[str, ...]) -> ModelSignature:
    """The MLflow signature: a string column ``image`` in, one double ``prob_<class>`` per class and ``label`` out."""
    outputs = [ColSpec("double", prob_column(name)) for name in class_names]
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([*outputs, ColSpec("string", LABEL_COLUMN)]),
    )


def pinned_requirements() -> list[str]:
    """`name==version` for the inference dependencies installed here."""
    requirements = []
    for entry in _PINNED:
        for name in (entry,) if isinstance(entry, str) else entry:
            try:
                requirements.append(f"{name}=={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
    return requirements


def encode_image_bytes(data: bytes) -> str:
    """PNG/JPEG bytes as the base64 ASCII text the served model takes in its ``image`` column."""
    return base64.b64encode(data).decode("ascii")


def encode_image_file(path: str | Path) -> str:
    """A file's bytes as the base64 string the served model expects."""
    return encode_image_bytes(Path(path).read_bytes())


def example_input(size: int = 16) -> pd.DataFrame:
    """A tiny base64 PNG (a gradient) used as the logged input example."""
    gradient = np.linspace(0, 255, size * size).reshape(size, size).astype(np.uint8)
    return pd.DataFrame({IMAGE_COLUMN: [encode_image_bytes(encode_png(gradient))]})


def decode_base64_image(value: Any, row: int) -> np.ndarray:
    """One cell -> uint8 grayscale; ValueError naming the row on bad data."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"row {row}: expected a base64 string, got {type(value).__name__}")
    try:
        # Strict: without validate=True, b64decode silently drops stray characters.
        data = base64.b64decode(b"".join(value.split()), validate=True)
    except binascii.Error as error:
        raise ValueError(f"row {row}: not valid base64 ({error})") from error
    # ImageDecodeError is a ValueError whose message names the row.
    return decode_image_bytes(data, name=f"row {row}")


def decode_batch(values: pd.Series, size: int) -> np.ndarray:
    """base64 cells -> float32 (N, size, size, 3) model input.

    Every row is tried so that one INVALID_PARAMETER_VALUE error (HTTP 400)
    lists all bad rows. Images are resized as soon as they are decoded, so
    memory stays N x size^2, whatever the resolution of the uploads.
    """
    batch = np.empty((len(values), size, size, 3), dtype=np.float32)
    errors = []
    for row, value in enumerate(values):
        try:
            batch[row] = to_model_input(decode_base64_image(value, row), size)
        except ValueError as error:
            errors.append(str(error))
    if errors:
        listed = "; ".join(errors[:MAX_LISTED_ERRORS])
        more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
        raise MlflowException(
            f"{len(errors)} of {len(values)} images could not be decoded: {listed}{more}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return batch


def probabilities_frame(probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The served answer: float64 (N, C) probabilities -> one ``prob_<class>`` column each plus ``label`` (argmax)."""
    frame = pd.DataFrame(
        {prob_column(name): probs[:, index].astype(np.float64) for index, name in enumerate(class_names)}
    )
    labels = [class_names[index] for index in np.argmax(probs, axis=1)] if len(probs) else []
    frame[LABEL_COLUMN] = pd.Series(labels, dtype=object)
    return frame


def read_contract(path: str | Path) -> dict[str, Any]:
    """Read and check a model contract JSON file; ValueError when the model could not use it."""
    contract = json.loads(Path(path).read_text())
    validate_contract(contract)
    return contract


class ChestXrayClassifier(mlflow.pyfunc.PythonModel):
    """base64 images in, class probabilities and label out (see module docstring)."""

    def load_context(self, context) -> None:
        """Load the contract and the Keras model from the pyfunc's artifacts (MLflow calls this once)."""
        import keras

        self.contract = read_contract(context.artifacts[CONTRACT_ARTIFACT])
        self.class_names = list(self.contract["class_names"])
        self.image_size = int(self.contract["image_size"])
        # compile=False: inference needs no optimizer or loss.
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Probabilities and label per row of base64 images; MlflowException (HTTP 400) naming bad rows."""
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
            raise MlflowException(
                f"input must be a DataFrame with a column {IMAGE_COLUMN!r} of base64 images; got {found}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        batch = decode_batch(model_input[IMAGE_COLUMN], self.image_size)
        if len(batch) == 0:
            return probabilities_frame(np.zeros((0, len(self.class_names))), self.class_names)
        outputs = [
            np.asarray(self.model.predict_on_batch(batch[start : start + PREDICT_BATCH_SIZE]))
            for start in range(0, len(batch), PREDICT_BATCH_SIZE)
        ]
        probs = probabilities(np.concatenate(outputs), len(self.class_names))
        return probabilities_frame(probs, self.class_names)


def package_dir() -> str:
    """The `components` package folder, shipped with the model as code_paths."""
    return str(Path(__file__).resolve().parent)


def log_pyfunc_model(
    keras_model_path: str,
    contract: dict[str, Any],
    name: str = "model",
    registered_model_name: str | None = None,
):
    """Log the pyfunc model in the active MLflow run; returns MLflow's ModelInfo."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run (mlflow.start_run())")
    validate_contract(contract)
    with tempfile.TemporaryDirectory() as tmp:
        contract_path = Path(tmp) / "contract.json"
        contract_path.write_text(json.dumps(contract, indent=2, sort_keys=True))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=ChestXrayClassifier(),
            artifacts={KERAS_ARTIFACT: str(keras_model_path), CONTRACT_ARTIFACT: str(contract_path)},
            code_paths=[package_dir()],
            signature=model_signature(contract["class_names"]),
            input_example=example_input(),
            pip_requirements=pinned_requirements(),
            metadata={"contract": contract},
            registered_model_name=registered_model_name,
        )


class PredictionInputError(CxrError, ValueError):
    """An image given to `cxr predict` cannot be read or decoded; the message names it."""


def predict_files(model_uri: str, paths: list[str | Path]) -> pd.DataFrame:
    """Score image files with a logged/registered model (used by `cxr predict`).

    Args:
        model_uri: an MLflow model URI (``models:/<name>@<alias>``).
        paths: PNG/JPEG files.

    Returns:
        One row per file: ``path``, ``prob_<class>`` columns and ``label``.

    Raises:
        PredictionInputError: a file cannot be read, or the model cannot decode one
            (every bad file is named; nothing is scored then).
    """
    encoded = []
    for path in paths:
        try:
            encoded.append(encode_image_file(path))
        except OSError as error:
            raise PredictionInputError(f"cannot read {path}: {error.strerror or error}") from None
    model = mlflow.pyfunc.load_model(model_uri)
    try:
        result = model.predict(pd.DataFrame({IMAGE_COLUMN: encoded}))
    except MlflowException as error:
        # The pyfunc names bad rows by index; say which files they are.
        names = ", ".join(f"row {index} = {path}" for index, path in enumerate(paths))
        raise PredictionInputError(f"{error.message} ({names})") from None
    result.insert(0, "path", [str(path) for path in paths])
    return result
