"""Model registry: register versions and move the `champion` / `challenger` aliases.

Every registered version carries, as version tags, the primary metric (name
and value) and a fingerprint of the test split it was evaluated on, so that a
later candidate is compared with the champion on the same footing without
re-reading runs.

Rules (higher metric is better):

- The first version of a model becomes champion (above an optional floor).
- A later version becomes champion only if its metric is greater than the
  champion's by more than `min_improvement`; otherwise it gets `challenger`.
  Moving `champion` takes the alias from the old version, which keeps its
  version number and tags.
- If the champion was evaluated on a different test split (other
  fingerprint), the numbers are not strictly comparable. Re-evaluating the
  champion is out of scope here, so the same rule applies and the reason says
  that the splits differ (the tag `split_mismatch` is set to "true").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from pydantic import BaseModel

from components.errors import CxrError
from components.metrics import SplitMetrics

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC_KEY = "primary_metric"
TAG_METRIC_VALUE = "primary_metric_value"
TAG_FINGERPRINT = "test_split_fingerprint"
TAG_REASON = "promotion_reason"
TAG_SPLIT_MISMATCH = "split_mismatch"


class Registration(BaseModel):
    """A model version registered by a training run (the ZenML artifact `registration`).

    ``candidates`` maps each trained backbone to its validation value of the
    primary metric, the basis of the choice.
    """

    model_name: str
    version: str
    model_uri: str
    backbone: str
    test_metrics: SplitMetrics
    val_metrics: SplitMetrics
    test_fingerprint: str
    mlflow_run_id: str
    candidates: dict[str, float]


class Promotion(BaseModel):
    """Which alias a registered version got and why (the ZenML artifact `promotion`).

    ``metric`` is the candidate's primary metric as read from its version tags
    (None when missing).
    """

    model_name: str
    version: str
    alias: str  # CHAMPION or CHALLENGER
    promoted: bool
    reason: str
    metric: float | None


def split_fingerprint(keys: Iterable[str]) -> str:
    """Fingerprint a test split, whatever the order of its images.

    Args:
        keys: one stable key per image (the images' sha256s, or stable ids); duplicates count once.

    Returns:
        16 hex digits of a sha256 over the sorted, distinct keys.
    """
    digest = hashlib.sha256("\n".join(sorted(set(keys))).encode("utf-8"))
    return digest.hexdigest()[:16]


def decide_promotion(
    candidate_metric: float,
    champion_metric: float | None,
    min_improvement: float = 0.0,
    metric_key: str = "metric",
    min_metric: float | None = None,
) -> tuple[bool, str]:
    """Decide whether a candidate takes the champion alias (the module docstring's rules); no MLflow calls.

    Args:
        candidate_metric: the candidate's primary metric (higher is better); None or NaN is never promoted.
        champion_metric: the champion's, or None (or NaN) when there is no champion.
        min_improvement: the candidate must beat the champion by more than this.
        metric_key: the metric's name, for the reason.
        min_metric: optional floor below which nothing is promoted.

    Returns:
        (promote, reason): whether to promote, and a sentence with the numbers.
    """
    if candidate_metric is None or math.isnan(candidate_metric):
        return False, f"candidate {metric_key} is missing or NaN: not promoted"
    if min_metric is not None and candidate_metric < min_metric:
        return False, (
            f"candidate {metric_key}={candidate_metric:.4f} is below the floor {min_metric:.4f}: not promoted"
        )
    if champion_metric is None or math.isnan(champion_metric):
        return True, f"no champion to compare with: first candidate promoted ({metric_key}={candidate_metric:.4f})"
    needed = champion_metric + min_improvement
    if candidate_metric > needed:
        return True, (
            f"candidate {metric_key}={candidate_metric:.4f} > champion {champion_metric:.4f} "
            f"+ min_improvement {min_improvement:.4f}: promoted"
        )
    return False, (
        f"candidate {metric_key}={candidate_metric:.4f} does not exceed champion {champion_metric:.4f} "
        f"+ min_improvement {min_improvement:.4f} (needs > {needed:.4f}): champion kept"
    )


class RegisteredModelNotFoundError(CxrError, LookupError):
    """No version of a registered model holds the alias asked for (or the model does not exist)."""


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion:
    """The version of `model_name` holding `alias`.

    Raises:
        RegisteredModelNotFoundError: no such model or alias; the message says how to get one.
    """
    version = current_champion(client, model_name, alias)
    if version is None:
        raise RegisteredModelNotFoundError(
            f"no version of registered model {model_name!r} holds the alias {alias!r} in the registry at "
            f"{mlflow.get_registry_uri()}; train one first (cxr train) or check --model-name, --alias and --workdir"
        )
    return version


def current_champion(client: MlflowClient, model_name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """Find the version holding an alias.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
        alias: the alias (CHAMPION by default).

    Returns:
        The version, or None when the model or the alias does not exist.

    Raises:
        mlflow.exceptions.MlflowException: any other registry error.
    """
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if _is_not_found(error):
            return None
        raise


def version_metric(client: MlflowClient, version: ModelVersion, metric_key: str) -> float | None:
    """Read a version's metric: from its tags (register_version), else from the run that produced it.

    Args:
        client: MLflow client of the registry.
        version: the model version.
        metric_key: the metric's name.

    Returns:
        The value, or None when neither the tags nor the run have it.
    """
    tags = version.tags or {}
    if tags.get(TAG_METRIC_KEY) == metric_key and TAG_METRIC_VALUE in tags:
        return float(tags[TAG_METRIC_VALUE])
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric_key)
        return None if value is None else float(value)
    return None


def champion_metric(client: MlflowClient, model_name: str, metric_key: str, alias: str = CHAMPION) -> float | None:
    """The metric of the version holding `alias` (version_metric), or None when there is none."""
    champion = current_champion(client, model_name, alias)
    return None if champion is None else version_metric(client, champion, metric_key)


def register_version(
    model_uri: str,
    model_name: str,
    metric_key: str,
    metric_value: float,
    test_fingerprint: str,
) -> ModelVersion:
    """Register a logged model as a new version tagged with its metric and test-split fingerprint.

    Uses the globally configured registry (mlflow.set_registry_uri / tracking URI).

    Args:
        model_uri: the logged model (``runs:/<run id>/<path>`` or ``models:/...``).
        model_name: registered model name (created if missing).
        metric_key: the primary metric's name (tag TAG_METRIC_KEY).
        metric_value: its value on the test split (tag TAG_METRIC_VALUE).
        test_fingerprint: split_fingerprint of the test split (tag TAG_FINGERPRINT).

    Returns:
        The new ModelVersion.
    """
    return mlflow.register_model(
        model_uri,
        model_name,
        tags={
            TAG_METRIC_KEY: metric_key,
            TAG_METRIC_VALUE: repr(float(metric_value)),
            TAG_FINGERPRINT: test_fingerprint,
        },
    )


def promote_version(
    client: MlflowClient,
    model_name: str,
    version: str | int,
    metric_key: str,
    min_improvement: float = 0.0,
    min_metric: float | None = None,
) -> Promotion:
    """Compare a registered, tagged version with the champion and set its alias and reason.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
        version: the candidate version (registered by register_version, so tagged with its metric).
        metric_key: the primary metric (higher is better).
        min_improvement: the candidate must beat the champion by more than this.
        min_metric: optional floor below which nothing is promoted.

    Returns:
        The Promotion; the alias and the version tag `promotion_reason` are set in the registry.

    Raises:
        mlflow.exceptions.MlflowException: the model or version does not exist.
    """
    version = str(version)
    candidate = client.get_model_version(model_name, version)
    candidate_value = version_metric(client, candidate, metric_key)
    champion = current_champion(client, model_name)
    # Stores disagree on the type of ModelVersion.version (str vs int): compare as str.
    if champion is not None and str(champion.version) == version:
        promote, reason = True, f"version {version} already holds the {CHAMPION} alias"
        mismatch = False
    else:
        champion_value = None if champion is None else version_metric(client, champion, metric_key)
        promote, reason = decide_promotion(
            float("nan") if candidate_value is None else candidate_value,
            champion_value,
            min_improvement,
            metric_key=metric_key,
            min_metric=min_metric,
        )
        if champion is not None:
            reason = f"vs champion v{champion.version}: {reason}"
        mismatch = champion is not None and _fingerprint(champion) != _fingerprint(candidate)
        if mismatch:
            reason += (
                f" [test splits differ: champion {_fingerprint(champion) or 'unknown'}, candidate "
                f"{_fingerprint(candidate) or 'unknown'}; champion not re-evaluated, compared as is]"
            )
    alias = CHAMPION if promote else CHALLENGER
    # set_registered_model_alias moves the alias: the previous holder loses it.
    client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, TAG_REASON, reason)
    if mismatch:
        client.set_model_version_tag(model_name, version, TAG_SPLIT_MISMATCH, "true")
    return Promotion(
        model_name=model_name, version=version, alias=alias, promoted=promote, reason=reason, metric=candidate_value
    )


def _is_not_found(error: MlflowException) -> bool:
    # A missing model is RESOURCE_DOES_NOT_EXIST; the SQL store reports a missing
    # alias as INVALID_PARAMETER_VALUE ("Registered model alias ... not found").
    if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
        return True
    return error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and "alias" in error.message.lower()


def _fingerprint(version: ModelVersion) -> str | None:
    return (version.tags or {}).get(TAG_FINGERPRINT)
