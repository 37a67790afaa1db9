"""Evaluating a registered model version on a data drop it never saw (`cxr evaluate`).

A user names a version by MLflow URI, ``models:/<name>@<alias>`` or
``models:/<name>/<version>`` (``parse_model_reference``); it is resolved to one
version number (``resolve_model_version``) so that what is recorded names a
version, not an alias that may move. The version's model contract (its task and
classes, logged with the pyfunc model by components.serving) must match the run
config's task (``check_model_contract``).

Every used row of an evaluation drop is external (components.splitting); the
version is assessed on each source with the decision rule recorded on it at
registration (components.registry.decision_of), never re-chosen on this data,
and nothing in the registry moves but one tag on the version:
``evaluated_on.<dataset version>`` = the card's MLflow URI (``evaluated_on_tag``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.assessment import ROW_FIELDS, Predictions
from components.backbones import parse_models_uri
from components.config import ConfigError
from components.errors import CxrError
from components.registry import LOCK_SUFFIX, RegisteredModelNotFoundError, current_champion

__all__ = [
    "EVALUATED_ON_PREFIX",
    "ModelContractMismatchError",
    "ModelReference",
    "ModelReferenceError",
    "NothingUnseenError",
    "card_folder_name",
    "check_model_contract",
    "evaluated_on_tag",
    "evaluation_summary",
    "model_contract",
    "parse_model_reference",
    "pooled_predictions",
    "resolve_model_version",
]

# The version tag that records an evaluation: evaluated_on.<dataset version> = the card's MLflow URI.
EVALUATED_ON_PREFIX = "evaluated_on."
# At most this many names are quoted when listing what exists.
_LISTED = 20


class ModelReferenceError(ConfigError):
    """A --model value is not ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""


class NothingUnseenError(CxrError, ValueError):
    """Every image of an evaluation drop was in the evaluated version's training or validation data."""


class ModelContractMismatchError(CxrError, ValueError):
    """The registered model's task or classes differ from the run config's; the message names both."""


class ModelReference(NamedTuple):
    """The parts of a registered-model URI: exactly one of ``alias`` and ``version`` is set."""

    name: str
    alias: str | None
    version: str | None

    def describe(self) -> str:
        """``models:/<name>@<alias>`` or ``models:/<name>/<version>``, as given."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_reference(uri: str) -> ModelReference:
    """Split a registered-model URI into its name and its alias or version number.

    Args:
        uri: ``models:/<name>@<alias>`` (e.g. ``models:/cxr-classifier@champion``) or
            ``models:/<name>/<version>`` (e.g. ``models:/cxr-classifier/3``).

    Returns:
        The ModelReference (name, alias or None, version or None).

    Raises:
        ModelReferenceError: any other form (``runs:/...``, a stage name, a path); the message
            quotes the value and the two accepted forms.
    """
    try:
        name, alias, version = parse_models_uri(uri)
    except ValueError:
        raise ModelReferenceError(
            f"--model {uri!r} is not a registered model version: give models:/<name>@<alias> "
            "(e.g. models:/cxr-classifier@champion) or models:/<name>/<version> (e.g. models:/cxr-classifier/3)"
        ) from None
    return ModelReference(name, alias, version)


def _quoted(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def resolve_model_version(client: MlflowClient, reference: ModelReference) -> ModelVersion:
    """The registered version a reference names (an alias is read now: the version it points at).

    Args:
        client: MLflow client of the registry.
        reference: from parse_model_reference.

    Returns:
        The ModelVersion.

    Raises:
        RegisteredModelNotFoundError: the model, the alias or the version does not exist; the
            message names the registry and what does exist (registered models, the model's
            aliases with their versions, or its version numbers).
        mlflow.exceptions.MlflowException: any other registry error.
    """
    from mlflow import get_registry_uri

    where = f"the registry at {get_registry_uri()}"
    try:
        model = client.get_registered_model(reference.name)
    except MlflowException as error:
        if not _not_found(error):
            raise
        names = sorted(
            m.name for m in client.search_registered_models(max_results=1000) if not m.name.endswith(LOCK_SUFFIX)
        )
        raise RegisteredModelNotFoundError(
            f"{reference.describe()}: no registered model {reference.name!r} in {where}; "
            f"registered models: {_quoted(names)}"
        ) from None
    if reference.alias is not None:
        version = current_champion(client, reference.name, reference.alias)
        if version is None:
            aliases = [f"{alias} (version {number})" for alias, number in sorted((model.aliases or {}).items())]
            raise RegisteredModelNotFoundError(
                f"{reference.describe()}: registered model {reference.name!r} has no alias {reference.alias!r} in "
                f"{where}; its aliases: {_quoted(aliases)}"
            )
        return version
    try:
        return client.get_model_version(reference.name, reference.version)
    except MlflowException as error:
        if not _not_found(error):
            raise
        numbers = sorted((str(v.version) for v in client.search_model_versions(f"name='{reference.name}'")), key=int)
        raise RegisteredModelNotFoundError(
            f"{reference.describe()}: registered model {reference.name!r} has no version {reference.version} in "
            f"{where}; its versions: {_quoted(numbers)}"
        ) from None


def model_contract(model_uri: str) -> dict[str, Any]:
    """The model contract logged with a pyfunc model by components.serving (its MLmodel metadata).

    Reads only the MLmodel file, not the Keras model.

    Args:
        model_uri: e.g. ``models:/<name>/<version>``.

    Returns:
        The contract (task, class_names, image_size, backbone ...).

    Raises:
        ModelContractMismatchError: the model has no contract (it was not logged by this project).
    """
    from mlflow.models import get_model_info

    contract = (get_model_info(model_uri).metadata or {}).get("contract")
    if not isinstance(contract, dict):
        raise ModelContractMismatchError(
            f"{model_uri} has no model contract (task, classes, input size): it was not logged by this "
            "project's training pipeline (components.serving)"
        )
    return contract


def check_model_contract(contract: dict[str, Any], model_uri: str, task: str, class_names: Sequence[str]) -> None:
    """Check that a registered model predicts the run config's task, with its classes in order.

    Args:
        contract: the model's contract (model_contract).
        model_uri: the model, for the message.
        task: the run config's task ("binary" or "multiclass").
        class_names: the task's classes in model output order (components.labels.TASK_LABELS).

    Raises:
        ModelContractMismatchError: another task or other classes; the message names the model's
            and the config's.
    """
    theirs, their_classes = contract.get("task"), list(contract.get("class_names") or [])
    if theirs != task or their_classes != list(class_names):
        raise ModelContractMismatchError(
            f"{model_uri} predicts task {theirs!r} with classes {their_classes}, but the run config's task is "
            f"{task!r} with classes {list(class_names)}: evaluate it on data of its own task (`task: {theirs}` "
            "in the data config)"
        )


def pooled_predictions(predictions: Sequence[Predictions], split: str) -> Predictions:
    """One Predictions holding the rows of several (e.g. every external source, for the card's examples).

    Args:
        predictions: at least one, all on the same classes.
        split: the pooled split's name.

    Returns:
        The rows of each in turn, in order.

    Raises:
        ValueError: no predictions, or predictions on different classes.
    """
    if not predictions:
        raise ValueError("no predictions to pool")
    class_names = list(predictions[0].class_names)
    for part in predictions[1:]:
        if list(part.class_names) != class_names:
            raise ValueError(f"cannot pool split {part.split!r} ({part.class_names}) with classes {class_names}")
    fields = (*ROW_FIELDS, "probabilities")
    return Predictions(
        split=split,
        class_names=class_names,
        **{field: [value for part in predictions for value in getattr(part, field)] for field in fields},
    )


def card_folder_name(model_name: str, version: str, dataset_version: str) -> str:
    """The card's folder under ``<reports>/evaluation/``: ``<name>-v<version>-on-<dataset version>``."""
    return f"{model_name}-v{version}-on-{dataset_version}"


def evaluated_on_tag(dataset_version: str) -> str:
    """The version tag recording an evaluation on a data version: ``evaluated_on.<dataset version>``."""
    return f"{EVALUATED_ON_PREFIX}{dataset_version}"


def evaluation_summary(
    reference: ModelReference,
    version: str,
    dataset_version: str,
    decision: str,
    training_dataset_version: str | None = None,
    *,
    images_recorded: bool = True,
    n_left_out: int = 0,
) -> str:
    """The card's one-line decision summary: what was evaluated on what, and that no alias moved.

    Args:
        reference: the reference as given.
        version: the version it resolved to.
        dataset_version: the data version evaluated on.
        decision: the version's recorded decision rule, described (Decision.describe()).
        training_dataset_version: the data version the version was trained on (its tag), when known.
        images_recorded: whether the version's training images are recorded (then the images it saw
            were left out, `n_left_out` of them).
        n_left_out: how many images were left out as seen by the version.

    Returns:
        One line; it warns when the version's training images are unknown and the data are those it
        was trained on (not an external validation), and counts the images left out.
    """
    given = f" (given as {reference.describe()})" if reference.alias else ""
    text = (
        f"Evaluation of {reference.name} version {version}{given} on data version {dataset_version}, with the "
        f"decision rule recorded at registration: {decision}. Not a promotion: no alias moved."
    )
    if images_recorded:
        if n_left_out:
            text += (
                f" {n_left_out} image(s) that version {version} trained or was selected on were left out "
                "(listed below)."
            )
        return text
    text += f" Version {version}'s training images are not recorded, so overlap with them was not checked."
    if training_dataset_version == dataset_version:
        text += (
            " WARNING: this is the data version the model was trained on; its training and validation images are "
            "among these, so the figures are not an external validation."
        )
    return text
