"""`cxr explain IMAGE`: a registered model's prediction for one image file, with its Grad-CAM heat map.

The model is loaded in-process from the MLflow registry (the pyfunc of components.serving, whose
Keras model is ``unwrap_python_model().model``); the image goes through the served model's checks
and preprocessing (declared size within serving's limits, decoded to 8-bit grayscale, resized to
the model's input side, repeated to 3 channels: components.serving / components.imaging); the heat
map is components.explain.grad_cam, written as a PNG of the image beside its overlay.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from components.errors import CxrError

DEFAULT_SUFFIX = "-gradcam.png"


class ExplainCommandError(CxrError, ValueError):
    """`cxr explain` cannot run: the image cannot be read or used, the class or output path is wrong."""


class Explanation(BaseModel):
    """What `cxr explain` found for one image."""

    image: str
    model_uri: str  # as given (models:/NAME@ALIAS or models:/NAME/N)
    model_name: str
    version: str  # the version an alias pointed at when the command ran
    class_names: list[str]
    probabilities: dict[str, float]  # class -> probability, in the model's class order
    predicted: str  # the argmax: the served `label`
    explained: str  # the class whose heat map was drawn (--class, else the predicted one)
    output: str  # the PNG written


def default_output(image: str | Path) -> Path:
    """``<image stem>-gradcam.png`` in the current folder."""
    return Path.cwd() / f"{Path(image).stem}{DEFAULT_SUFFIX}"


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise ExplainCommandError(f"--output {output} is a folder; give a file name")
    if not output.resolve().parent.is_dir():
        raise ExplainCommandError(f"--output {output}: folder {output.resolve().parent} does not exist")


def _read_gray(image: Path, limits):
    """The image file as uint8 (H, W) grayscale, after serving's declared-size checks."""
    from components.imaging import decode_image_bytes
    from components.serving import declared_size

    try:
        data = image.read_bytes()
    except FileNotFoundError:
        raise ExplainCommandError(f"{image}: no such file") from None
    except IsADirectoryError:
        raise ExplainCommandError(f"{image}: is a folder, not an image file") from None
    except OSError as error:
        raise ExplainCommandError(f"{image}: cannot read the file ({error.strerror or error})") from None
    try:
        width, height = declared_size(data, str(image))
    except ValueError as error:
        raise ExplainCommandError(str(error)) from None
    if (problem := limits.size_problem(width, height)) is not None:
        raise ExplainCommandError(f"{image}: {problem}")
    return decode_image_bytes(data, name=str(image))


def explain_image(
    image: str | Path,
    model_uri: str,
    output: str | Path | None = None,
    class_name: str | None = None,
    limits=None,
) -> Explanation:
    """Predict one image file with a registered model and write its Grad-CAM PNG.

    Args:
        image: an image file (PNG, JPEG, anything PIL reads).
        model_uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` in the configured registry.
        output: the PNG to write; None: default_output(image).
        class_name: the class to explain; None: the predicted class.
        limits: components.serving.InputLimits the image must meet (None: the defaults).

    Returns:
        The Explanation (probabilities, predicted and explained class, the PNG's path).

    Raises:
        ModelReferenceError: `model_uri` is neither form.
        RegisteredModelNotFoundError: no such model, alias or version.
        ExplainCommandError: the image cannot be read, is too small or too large, the class is not one
            of the model's, or the output path is a folder or in a missing folder.
        ImageDecodeError: the file is not a decodable image.
    """
    import mlflow
    from mlflow import MlflowClient

    from components.backbones import probabilities
    from components.explain import explanation_png, grad_cam
    from components.imaging import resize_grayscale, to_model_input
    from components.registered_evaluation import model_contract, parse_model_reference, resolve_model_version
    from components.serving import InputLimits

    path = Path(image)
    target = Path(output) if output is not None else default_output(path)
    _check_output(target)
    reference = parse_model_reference(model_uri)
    version = str(resolve_model_version(MlflowClient(), reference).version)
    pinned = f"models:/{reference.name}/{version}"
    class_names = [str(name) for name in model_contract(pinned)["class_names"]]
    if class_name is not None and class_name not in class_names:
        raise ExplainCommandError(
            f"--class {class_name!r} is not a class of {pinned}; its classes: {', '.join(class_names)}"
        )
    gray = _read_gray(path, limits or InputLimits())
    classifier = mlflow.pyfunc.load_model(pinned).unwrap_python_model()
    size = int(classifier.image_size)
    batch = to_model_input(gray, size)[None]
    probs = probabilities(classifier.model.predict_on_batch(batch), len(class_names))[0]
    predicted = class_names[int(probs.argmax())]
    explained = class_name or predicted
    heatmap = grad_cam(classifier.model, batch, [class_names.index(explained)])[0]
    target.write_bytes(explanation_png(resize_grayscale(gray, size), heatmap))
    return Explanation(
        image=str(path),
        model_uri=model_uri,
        model_name=reference.name,
        version=version,
        class_names=class_names,
        probabilities={name: float(p) for name, p in zip(class_names, probs, strict=True)},
        predicted=predicted,
        explained=explained,
        output=str(target),
    )


def format_explanation(result: Explanation) -> str:
    """What `cxr explain` prints: the model, the predicted class, every probability and the PNG's path."""
    given = "" if result.model_uri == f"models:/{result.model_name}/{result.version}" else f" ({result.model_uri})"
    lines = [
        f"Image:       {result.image}",
        f"Model:       {result.model_name} version {result.version}{given}",
        f"Predicted:   {result.predicted} ({result.probabilities[result.predicted]:.4f})",
        "Probabilities:",
        *(f"  {name:<12} {p:.4f}" for name, p in result.probabilities.items()),
        f"Grad-CAM:    {result.output} (class {result.explained}: image | heat map over it, red = most evidence)",
    ]
    return "\n".join(lines)
