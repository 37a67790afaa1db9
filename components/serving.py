"""The served model: an MLflow pyfunc that takes base64 images and returns class probabilities.

Clients send a DataFrame with one column ``image`` of base64-encoded PNG/JPEG
or DICOM bytes (strings; DICOM is windowed to 8 bits as ingest windows it,
components.dicom). The model decodes and resizes them with the same
deterministic preprocessing as training (components/imaging.py) and answers
one ``prob_<class>`` column per class plus ``label`` (the argmax).

The pyfunc carries two artifacts: the Keras model (``.keras``) and the model
contract (JSON: class names, input size, dtype and range, preprocessing,
intended use). The class lives here, not in ``__main__``, and the
``components`` package travels with the model as ``code_paths``, so a served
model imports it from its own copy, whatever the server's working directory.

Input limits (``InputLimits``) hold in any server that loads the model (``cxr
serve``, ``mlflow models serve``, ZenML's MLflow deployer): at most
``max_rows`` images per request, each at least ingest's minimum width and
height (``validation.min_width``/``min_height``) and at most its pixel limit
(components.imaging), all declared pixels together at most
``max_request_pixels``. They are checked from the images' headers before any
pixel is decoded; a request that breaks one gets an MlflowException
INVALID_PARAMETER_VALUE (HTTP 400) naming the rows (0-based). A server may set
a deadline (``request_deadline``): past it, the work stops at the next image or
batch with DEADLINE_EXCEEDED (HTTP 504).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from components import dicom
from components.backbones import KERAS_ARTIFACT, probabilities  # KERAS_ARTIFACT: the Keras model's artifact name
from components.candidates import IMAGE_EXTENSIONS, LATERAL_VIEWS
from components.config import ServingConfig
from components.errors import CxrError
from components.imaging import (
    decode_image_bytes,
    encode_png,
    pil_error_text,
    pixel_limit,
    pixel_limit_problem,
    to_model_input,
)
from components.intended_use import INTENDED_USE
from components.labels import labels_for_task
from components.ood import OOD_FLAG_COLUMN, OOD_PYFUNC_ARTIFACT, OOD_SCORE_COLUMN, OodReference, with_embedding
from components.validation.settings import ValidationConfig

IMAGE_COLUMN = "image"
MODEL_VERSION_COLUMN = "model_version"
SERVED_VERSION_VARIABLE = "CXR_SERVED_MODEL_VERSION"
LABEL_COLUMN = "label"
CONTRACT_ARTIFACT = "contract"
ERROR_COLUMN = "error"
PATH_COLUMN = "path"
PREDICT_BATCH_SIZE = 32
# Bad rows listed in one error message; more are counted, not listed.
MAX_LISTED_ERRORS = 5
# The defaults of the limits: ingest's validation and the run config's `serving` section.
_INGEST = ValidationConfig()
_SERVING = ServingConfig()
# Side of the input example and of the readiness check's image: ingest's minimum.
EXAMPLE_SIZE = max(_INGEST.min_width, _INGEST.min_height)
TABLE_FORMATS = ("tsv", "csv", "json")

# Distributions pinned in the logged model's requirements. Passing them
# explicitly skips MLflow's requirement inference (about 5 s per log_model).
# GPU workers install `tensorflow` instead of `tensorflow-cpu`.
# pydicom and pylibjpeg's decoders: DICOM inputs (components.dicom), compressed transfer syntaxes included.
_PINNED = (
    "mlflow",
    ("tensorflow-cpu", "tensorflow"),
    "keras",
    "pillow",
    "numpy",
    "pandas",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
)


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
            "decode PNG/JPEG/DICOM; EXIF orientation applied; 8-bit grayscale (wider images windowed, DICOM by "
            "its VOI LUT or window; alpha on black); "
            f"bilinear resize to {image_size}x{image_size}; repeat to 3 channels; "
            "backbone normalisation is inside the model"
        ),
        "serving_input": f"DataFrame column '{IMAGE_COLUMN}': base64-encoded PNG, JPEG or DICOM bytes",
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


def model_signature(class_names: list[str] | tuple[str, ...], ood: bool = False) -> ModelSignature:
    """The MLflow signature: a string column ``image`` in, one double ``prob_<class>`` per class and ``label`` out.

    With ``ood``, also a double ``ood_score`` and a boolean ``ood`` (components.ood).
    """
    outputs = [ColSpec("double", prob_column(name)) for name in class_names]
    extra = [ColSpec("double", OOD_SCORE_COLUMN), ColSpec("boolean", OOD_FLAG_COLUMN)] if ood else []
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([*outputs, ColSpec("string", LABEL_COLUMN), *extra]),
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


def example_input(size: int = EXAMPLE_SIZE) -> pd.DataFrame:
    """A small base64 PNG (a gradient) in the served input format.

    The logged input example, and the image of the server's readiness check.

    Args:
        size: side in pixels (default ingest's minimum width and height, so the image is accepted).

    Returns:
        A one-row DataFrame with the column ``image``.
    """
    gradient = np.linspace(0, 255, size * size).reshape(size, size).astype(np.uint8)
    return pd.DataFrame({IMAGE_COLUMN: [encode_image_bytes(encode_png(gradient))]})


class InputLimits(BaseModel):
    """What one request may hold; checked from the images' headers before any pixel is decoded.

    Defaults: ingest's validation (``min_width``, ``min_height``, pixel limit) and the run config's
    ``serving`` section (components.config.ServingConfig).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_width: int = Field(_INGEST.min_width, ge=1)  # px
    min_height: int = Field(_INGEST.min_height, ge=1)  # px
    max_rows: int = Field(_SERVING.max_rows, ge=1)
    # None: ingest's limit (components.imaging.pixel_limit); a lower value tightens it.
    max_image_pixels: int | None = Field(_SERVING.max_image_pixels, ge=1)
    max_request_pixels: int = Field(_SERVING.max_request_pixels, ge=1)

    @classmethod
    def from_config(cls, serving: ServingConfig, validation: ValidationConfig) -> InputLimits:
        """The limits of a run config: its ``serving`` section and its ingest minimum size.

        Args:
            serving: the run config's ``serving`` section.
            validation: the run config's ``validation`` section (``min_width``, ``min_height``).

        Returns:
            The InputLimits.
        """
        return cls(
            min_width=validation.min_width,
            min_height=validation.min_height,
            max_rows=serving.max_rows,
            max_image_pixels=serving.max_image_pixels,
            max_request_pixels=serving.max_request_pixels,
        )

    def image_pixels(self) -> int:
        """The largest declared width x height of one image: ingest's limit, or ``max_image_pixels`` when lower."""
        limit = pixel_limit()
        return limit if self.max_image_pixels is None else min(limit, self.max_image_pixels)

    def size_problem(self, width: int, height: int) -> str | None:
        """Why an image of this declared size is refused, or None.

        Args:
            width: declared width in pixels (from the file's header).
            height: declared height in pixels.

        Returns:
            A sentence naming the limit broken, or None when the image may be decoded.
        """
        if width < self.min_width or height < self.min_height:
            return (
                f"{width}x{height} pixels is below the {self.min_width}x{self.min_height} minimum "
                "(ingest's validation.min_width and min_height)"
            )
        if (problem := pixel_limit_problem(width, height)) is not None:
            return problem
        if width * height > self.image_pixels():
            return (
                f"declared size {width}x{height} = {width * height:,} pixels is above the server's "
                f"{self.image_pixels():,}-pixel limit (serving.max_image_pixels); not decoded"
            )
        return None


class InvalidRowsError(MlflowException, CxrError):
    """Some rows of a request cannot be used (INVALID_PARAMETER_VALUE, HTTP 400; one `error:` line at the CLI).

    Attributes:
        row_errors: {row position (0-based): what is wrong with it}.
    """

    def __init__(self, message: str, row_errors: dict[int, str]):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.row_errors = row_errors


# The deadline (time.monotonic() seconds) of the request being served, set by the server around a
# prediction. A ContextVar: asyncio.to_thread copies it into the worker thread of that request only.
_DEADLINE: ContextVar[float | None] = ContextVar("cxr_serving_deadline", default=None)


@contextlib.contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, predictions in this context stop with DEADLINE_EXCEEDED once `seconds` have passed.

    The check runs before each image is decoded and before each batch of PREDICT_BATCH_SIZE images
    goes through the model: work already started (one decode, one batch) finishes first.

    Args:
        seconds: the time allowed from now; None for no deadline.
    """
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _check_deadline(done: int, total: int) -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise MlflowException(
            f"the request ran past its deadline after {done} of {total} images; its work was stopped",
            error_code=DEADLINE_EXCEEDED,
        )


def base64_bytes(value: Any, row: int) -> bytes:
    """One cell -> the image file's bytes; ValueError naming the row when it is not strict base64."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"row {row}: expected a base64 string, got {type(value).__name__}")
    try:
        # Strict: without validate=True, b64decode silently drops stray characters.
        return base64.b64decode(b"".join(value.split()), validate=True)
    except binascii.Error as error:
        raise ValueError(f"row {row}: not valid base64 ({error})") from error


def declared_size(data: bytes, name: str) -> tuple[int, int]:
    """An image's declared (width, height) from its header; no pixel is decoded.

    Args:
        data: the image file's bytes.
        name: what to call it in an error (``row 3``).

    Returns:
        (width, height) in pixels.

    Raises:
        ValueError: PIL cannot identify the bytes as an image, or a DICOM file is a lateral view
            (ViewPosition); the message starts with `name`.
    """
    if dicom.is_dicom(data):  # Columns x Rows from the DICOM header, no pixel decoded (components.dicom)
        try:
            size, tags = dicom.declared_size(data), dicom.header_tags(data, whole=True)
        except dicom.DicomError as error:
            raise ValueError(f"{name}: cannot decode DICOM ({error})") from error
        if tags is not None and tags.view.strip().lower() in LATERAL_VIEWS:
            # Ingest excludes laterals from training and batch scoring: a prediction on one means nothing.
            raise ValueError(
                f"{name}: a lateral view (ViewPosition {tags.view}); the model reads frontal (PA/AP) radiographs"
            )
        return size
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: cannot decode image ({pil_error_text(error)})") from error


def decode_base64_image(value: Any, row: int) -> np.ndarray:
    """One cell -> uint8 grayscale; ValueError naming the row on bad data."""
    # ImageDecodeError is a ValueError whose message names the row.
    return decode_image_bytes(base64_bytes(value, row), name=f"row {row}")


def _rows_error(errors: dict[int, str], total: int) -> InvalidRowsError:
    listed = "; ".join(errors[row] for row in sorted(errors)[:MAX_LISTED_ERRORS])
    more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
    return InvalidRowsError(f"{len(errors)} of {total} images could not be used: {listed}{more}", dict(errors))


def decode_batch(values: pd.Series, size: int, limits: InputLimits | None = None) -> np.ndarray:
    """base64 cells -> float32 (N, size, size, 3) model input, values 0..255.

    Every row's header is read first (base64, format, declared size against `limits`), then the
    total of declared pixels; only then is any image decoded, so a request holding one oversized
    image costs no decoding. Images are resized as soon as they are decoded, so memory stays
    N x size^2, whatever the resolution of the uploads.

    Args:
        values: N base64 strings (the ``image`` column).
        size: the model's input side in pixels.
        limits: the request limits (default InputLimits()).

    Returns:
        float32 array of shape (N, size, size, 3).

    Raises:
        InvalidRowsError: rows that are not base64, not an image, too small or too large, or that
            cannot be decoded; every bad row is named (HTTP 400).
        MlflowException: more rows than ``max_rows``, or more declared pixels than
            ``max_request_pixels`` (INVALID_PARAMETER_VALUE, HTTP 400); the deadline passed
            (DEADLINE_EXCEEDED, HTTP 504).
    """
    limits = limits or InputLimits()
    total = len(values)
    if total > limits.max_rows:
        raise MlflowException(
            f"{total} images in one request; at most {limits.max_rows} (serving.max_rows): "
            "send them in smaller batches",
            error_code=INVALID_PARAMETER_VALUE,
        )
    payloads: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    pixels = 0
    for row, value in enumerate(values):
        try:
            data = base64_bytes(value, row)
            width, height = declared_size(data, f"row {row}")
        except ValueError as error:
            errors[row] = str(error)
            continue
        if (problem := limits.size_problem(width, height)) is not None:
            errors[row] = f"row {row}: {problem}"
            continue
        payloads[row] = data
        pixels += width * height
    if errors:
        raise _rows_error(errors, total)
    if pixels > limits.max_request_pixels:
        raise MlflowException(
            f"the {total} images declare {pixels:,} pixels together, above the {limits.max_request_pixels:,} "
            "allowed per request (serving.max_request_pixels): send fewer or smaller images per request",
            error_code=INVALID_PARAMETER_VALUE,
        )
    batch = np.empty((total, size, size, 3), dtype=np.float32)
    for row, data in payloads.items():
        _check_deadline(row, total)
        try:
            batch[row] = to_model_input(decode_image_bytes(data, name=f"row {row}"), size)
        except ValueError as error:
            errors[row] = str(error)
    if errors:
        raise _rows_error(errors, total)
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

    # Set by a server that gathers the rows of concurrent requests into one model call
    # (components.server.MicroBatcher.run): float32 (N, size, size, 3) -> the model's output for those
    # N rows, as forward gives it. None: each predict call runs the model itself.
    batch_runner = None

    def load_context(self, context) -> None:
        """Load the contract and the Keras model from the pyfunc's artifacts (MLflow calls this once)."""
        import keras

        self.contract = read_contract(context.artifacts[CONTRACT_ARTIFACT])
        self.class_names = list(self.contract["class_names"])
        self.image_size = int(self.contract["image_size"])
        # The default limits; a server that holds the model in-process may replace them (components.server).
        self.limits = InputLimits()
        # compile=False: inference needs no optimizer or loss.
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        # The out-of-distribution reference (components.ood), when the version was logged with one: one
        # forward pass of `runner` gives the output and the embedding, side by side (forward).
        self.ood = None
        self.runner = self.model
        if OOD_PYFUNC_ARTIFACT in context.artifacts:
            self.ood = OodReference.model_validate_json(Path(context.artifacts[OOD_PYFUNC_ARTIFACT]).read_text())
            self.runner = with_embedding(self.model, self.ood.layer)
        # Set by the deployer for the server it launches (steps/deployment.py): "<name>/<version>",
        # answered in a model_version column so that every deployed answer names its model.
        self.served_version = os.environ.get(SERVED_VERSION_VARIABLE) or None

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Probabilities and label per row of base64 images; MlflowException (HTTP 400) naming bad rows."""
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
            raise MlflowException(
                f"input must be a DataFrame with a column {IMAGE_COLUMN!r} of base64 images; got {found}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        batch = decode_batch(model_input[IMAGE_COLUMN], self.image_size, self.limits)
        if len(batch) == 0:
            return probabilities_frame(np.zeros((0, len(self.class_names))), self.class_names)
        output = self.forward(batch) if self.batch_runner is None else self.batch_runner(batch)
        ood = getattr(self, "ood", None)
        if ood is not None:
            # forward's columns: the model's output (1 for a binary model, else one per class), then the embedding.
            width = 1 if len(self.class_names) == 2 else len(self.class_names)
            output, embedding = output[:, :width], output[:, width:]
        probs = probabilities(output, len(self.class_names))
        frame = probabilities_frame(probs, self.class_names)
        if ood is not None:
            scores = ood.score(embedding)
            frame[OOD_SCORE_COLUMN] = scores.astype(np.float64)
            frame[OOD_FLAG_COLUMN] = ood.flag(scores)
        if getattr(self, "served_version", None):
            frame[MODEL_VERSION_COLUMN] = self.served_version
        return frame

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The Keras model on decoded images, PREDICT_BATCH_SIZE at a time (the deadline checked before each).

        Args:
            batch: float32 (N, size, size, 3), values 0..255 (decode_batch), N >= 1.

        Returns:
            The model's output for the N rows: (N, 1) for a binary model, else (N, classes); with an OOD
            reference, the embedding's D columns follow (N, 1 + D) or (N, classes + D).
        """
        outputs = []
        runner = getattr(self, "runner", self.model)
        for start in range(0, len(batch), PREDICT_BATCH_SIZE):
            _check_deadline(start, len(batch))
            output = runner.predict_on_batch(batch[start : start + PREDICT_BATCH_SIZE])
            if getattr(self, "ood", None) is not None:
                output = np.concatenate([np.asarray(part, dtype=np.float32) for part in output], axis=1)
            outputs.append(np.asarray(output))
        return np.concatenate(outputs)


def package_dir() -> str:
    """The `components` package folder, shipped with the model as code_paths."""
    return str(Path(__file__).resolve().parent)


def log_pyfunc_model(
    keras_model_path: str,
    contract: dict[str, Any],
    name: str = "model",
    registered_model_name: str | None = None,
    ood_reference: OodReference | None = None,
):
    """Log the pyfunc model in the active MLflow run; returns MLflow's ModelInfo.

    With ``ood_reference`` (components.ood), the served model also answers ``ood_score`` and ``ood``.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run (mlflow.start_run())")
    validate_contract(contract)
    with tempfile.TemporaryDirectory() as tmp:
        contract_path = Path(tmp) / "contract.json"
        contract_path.write_text(json.dumps(contract, indent=2, sort_keys=True))
        artifacts = {KERAS_ARTIFACT: str(keras_model_path), CONTRACT_ARTIFACT: str(contract_path)}
        if ood_reference is not None:
            ood_path = Path(tmp) / "ood_reference.json"
            ood_path.write_text(ood_reference.model_dump_json())
            artifacts[OOD_PYFUNC_ARTIFACT] = str(ood_path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=ChestXrayClassifier(),
            artifacts=artifacts,
            code_paths=[package_dir()],
            signature=model_signature(contract["class_names"], ood=ood_reference is not None),
            input_example=example_input(),
            pip_requirements=pinned_requirements(),
            metadata={"contract": contract},
            registered_model_name=registered_model_name,
        )


class PredictionInputError(CxrError, ValueError):
    """The images given to `cxr predict` cannot be listed (a CSV list without paths, no images found)."""


def _csv_paths(path: Path) -> list[str]:
    """The paths a CSV lists: its column ``path`` (else ``uri``), relative to the CSV's folder."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PredictionInputError(f"cannot read the list {path}: {error}") from None
    if not rows:
        raise PredictionInputError(f"the list {path} has no rows (a header, then one path per row)")
    header = list(rows[0])
    column = next((name for name in (PATH_COLUMN, "uri") if name in header), None)
    if column is None:
        raise PredictionInputError(
            f"the list {path} has no column {PATH_COLUMN!r} (or 'uri'); its columns: {', '.join(header)}"
        )
    listed = [(row.get(column) or "").strip() for row in rows]
    return [item if Path(item).is_absolute() else str(path.parent / item) for item in listed if item]


# What a folder given to `cxr predict` is searched for: the image files, and DICOM's usual extensions (a DICOM
# file of any other name is scored when named directly: decode_image_bytes recognises DICOM by content).
FOLDER_EXTENSIONS = IMAGE_EXTENSIONS | {".dcm", ".dicom"}


def collect_image_paths(items: Sequence[str | Path], skipped: list[str] | None = None) -> list[str]:
    """What `cxr predict` scores: files as given, image files under folders, paths listed in CSV files.

    Args:
        items: files (any name: each is tried as an image), folders (searched recursively for
            .png/.jpg/.jpeg/.dcm/.dicom, sorted; a broken link is kept, its row says so), and ``.csv`` files listing
            paths in a column ``path`` (or ``uri``; relative paths are relative to the CSV's folder).

        skipped: when given, the files under the folders that were not taken (by their names) are
            appended to it, so the caller can say so.

    Returns:
        Paths in order, without repeats. A path that does not exist is kept: its row reports it.

    Raises:
        PredictionInputError: a CSV list cannot be read, is empty or has no path column, or nothing
            is left to score.
    """
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() or f.is_symlink())
            found = [str(f) for f in files if f.suffix.lower() in FOLDER_EXTENSIONS]
            if skipped is not None:
                skipped += [str(f) for f in files if f.suffix.lower() not in FOLDER_EXTENSIONS]
            if not found:
                raise PredictionInputError(f"no .png/.jpg/.jpeg/.dcm/.dicom image under the folder {path}")
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            paths += _csv_paths(path)
        else:
            paths.append(str(item))
    if not paths:
        raise PredictionInputError("no image to score")
    return list(dict.fromkeys(paths))


def _read_file(path: str) -> str:
    """A file as the base64 text of the served input; ValueError saying why it cannot be read."""
    try:
        return encode_image_file(path)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a folder") from None
    except OSError as error:
        raise ValueError(f"cannot read the file ({error.strerror or error})") from None


def _score_chunk(model, encoded: dict[int, str], errors: dict[int, str]) -> dict[int, pd.Series]:
    """Score rows {position: base64}; rows the model refuses go to `errors` and the others are scored again."""
    pending = dict(encoded)
    while pending:
        positions = list(pending)
        try:
            result = model.predict(pd.DataFrame({IMAGE_COLUMN: [pending[p] for p in positions]}))
        except MlflowException as error:
            # InvalidRowsError (by attribute: a model may import its own copy of this module).
            row_errors = getattr(error, "row_errors", None)
            if not row_errors:
                raise
            for row, message in row_errors.items():
                # "row 3: cannot decode image (...)" -> "cannot decode image (...)": the table names the file.
                errors[positions[row]] = message.split(": ", 1)[1] if message.startswith(f"row {row}: ") else message
                del pending[positions[row]]
            continue
        return {position: result.iloc[index] for index, position in enumerate(positions)}
    return {}


def predict_files(
    model_uri: str, paths: Sequence[str | Path], limits: InputLimits | None = None, chunk_rows: int = 64
) -> pd.DataFrame:
    """Score image files with a logged or registered model (`cxr predict`).

    A file that cannot be read, decoded or used (too small, too large) is reported in the
    ``error`` column; every other file is scored. Files are read ``chunk_rows`` at a time.

    Args:
        model_uri: an MLflow model URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``).
        paths: image files.
        limits: the input limits (default InputLimits(); rows and request pixels do not apply here).
        chunk_rows: images read and scored together.

    Returns:
        One row per path, in order: ``path``, ``label`` (empty on error), one float64 ``prob_<class>``
        per class (NaN on error), ``ood_score`` and ``ood`` when the model carries its out-of-distribution
        reference (components.ood), and ``error`` (empty when scored).
    """
    model = mlflow.pyfunc.load_model(model_uri)
    classifier = model.unwrap_python_model()
    base = limits or InputLimits()
    classifier.limits = base.model_copy(
        update={"max_rows": chunk_rows, "max_request_pixels": chunk_rows * base.image_pixels()}
    )
    names = [str(path) for path in paths]
    errors: dict[int, str] = {}
    scored: dict[int, pd.Series] = {}
    for start in range(0, len(names), chunk_rows):
        encoded = {}
        for position in range(start, min(start + chunk_rows, len(names))):
            try:
                encoded[position] = _read_file(names[position])
            except ValueError as error:
                errors[position] = str(error)
        scored.update(_score_chunk(model, encoded, errors))
    columns = [prob_column(name) for name in classifier.class_names]
    table = pd.DataFrame(
        {
            PATH_COLUMN: names,
            LABEL_COLUMN: [str(scored[i][LABEL_COLUMN]) if i in scored else "" for i in range(len(names))],
            **{
                column: [float(scored[i][column]) if i in scored else np.nan for i in range(len(names))]
                for column in columns
            },
            ERROR_COLUMN: [errors.get(i, "") for i in range(len(names))],
        }
    )
    if getattr(classifier, "ood", None) is not None:  # a model registered with its OOD reference
        table.insert(
            len(table.columns) - 1,
            OOD_SCORE_COLUMN,
            [float(scored[i][OOD_SCORE_COLUMN]) if i in scored else np.nan for i in range(len(names))],
        )
        table.insert(
            len(table.columns) - 1,
            OOD_FLAG_COLUMN,
            [bool(scored[i][OOD_FLAG_COLUMN]) if i in scored else None for i in range(len(names))],
        )
    return table


def format_predictions(table: pd.DataFrame, fmt: Literal["tsv", "csv", "json"] = "tsv", digits: int = 6) -> str:
    """The `cxr predict` table as text a script reads.

    Args:
        table: predict_files's table.
        fmt: ``tsv`` or ``csv`` (a header row, then one row per file; empty label and probabilities
            on error), or ``json`` (a list of objects; ``null`` probabilities and label, and an
            ``error`` string, on error; ``error`` null when scored).
        digits: decimals of the probabilities.

    Returns:
        The text, ending with a newline.
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(TABLE_FORMATS)}, got {fmt!r}")
    rounded = table.round({c: digits for c in table.columns if c.startswith("prob_")})
    if fmt == "json":
        records = json.loads(rounded.to_json(orient="records", double_precision=digits))
        for record in records:
            record[ERROR_COLUMN] = record[ERROR_COLUMN] or None
            record[LABEL_COLUMN] = record[LABEL_COLUMN] or None
        return json.dumps(records, indent=2) + "\n"
    return rounded.to_csv(sep="\t" if fmt == "tsv" else ",", index=False, lineterminator="\n")
