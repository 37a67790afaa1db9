"""`cxr models`, `cxr promote`, `cxr rollback`: what the people who promote models run.

Everything here reads and writes the MLflow registry of the work folder (or
MLFLOW_TRACKING_URI); alias moves also set the ZenML Model Control Plane stage.
"""

from __future__ import annotations

import json
import math

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.registry import (
    EVIDENCE_ARTIFACT,
    LOCK_SUFFIX,
    TAG_BACKBONE,
    TAG_CARD,
    TAG_CARD_FILE,
    TAG_CRITERIA,
    TAG_DATASET_VERSION,
    TAG_HEADLINE,
    TAG_REASON,
    Evidence,
    Promotion,
    RegisteredModelNotFoundError,
    RegistryUnavailableError,
    decision_of,
    load_evidence,
    promote_with_gate,
    promotion_history,
    rollback,
    version_description,
)


def _versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    if model_name.endswith(LOCK_SUFFIX):
        raise RegisteredModelNotFoundError(f"{model_name!r} is a promotion lock, not a model")
    found = client.search_model_versions(f"name = '{model_name}'")
    if not found:
        raise RegisteredModelNotFoundError(
            f"registered model {model_name!r} has no versions in the registry at {mlflow.get_registry_uri()}; "
            "train one first (cxr train) or check --model-name and --workdir"
        )
    # Search results carry no aliases in the SQL stores: read each version.
    return [client.get_model_version(model_name, str(v)) for v in sorted(int(v.version) for v in found)]


def _version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException:
        known = ", ".join(str(v.version) for v in _versions(client, model_name))
        raise RegisteredModelNotFoundError(f"{model_name!r} has no version {version!r}; versions: {known}") from None


def _headline(version: ModelVersion) -> str:
    raw = (version.tags or {}).get(TAG_HEADLINE)
    if not raw:
        return "(no evaluation recorded)"
    parts = []
    for key, (value, low, high) in json.loads(raw).items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        ci = "" if low is None else f" [{low:.2f}-{high:.2f}]"
        parts.append(f"{key}={value:.3f}{ci}")
    return ", ".join(parts)


def list_versions(model_name: str) -> str:
    """One block per version: aliases, backbone, test metrics with 95% CIs, data version, promotion reason."""
    client = MlflowClient()
    lines = [f"{model_name} ({mlflow.get_registry_uri()})"]
    for version in _versions(client, model_name):
        tags = version.tags or {}
        aliases = ",".join(version.aliases) or "-"
        lines.append(
            f"v{version.version}  [{aliases}]  {tags.get(TAG_BACKBONE, '?')}  data {tags.get(TAG_DATASET_VERSION, '?')}"
        )
        lines.append(f"    test: {_headline(version)}")
        lines.append(f"    why:  {tags.get(TAG_REASON, '(not promoted yet)')}")
    return "\n".join(lines)


def show_version(model_name: str, version: str) -> str:
    """A version's card location, decision rule, reason and every gate criterion."""
    client = MlflowClient()
    found = _version(client, model_name, version)
    tags = found.tags or {}
    lines = [
        f"{model_name} v{found.version}  aliases: {', '.join(found.aliases) or 'none'}",
        f"backbone:        {tags.get(TAG_BACKBONE, '?')}",
        f"dataset version: {tags.get(TAG_DATASET_VERSION, '?')}",
        f"decision rule:   {decision_of(found).describe()}",
        f"test metrics:    {_headline(found)}",
        f"evaluation card: {tags.get(TAG_CARD_FILE, '(none)')}  (MLflow: {tags.get(TAG_CARD, 'none')})",
        f"decision:        {tags.get(TAG_REASON, '(not promoted yet)')}",
    ]
    criteria = json.loads(tags.get(TAG_CRITERIA, "[]"))
    lines += [f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}" for c in criteria]
    return "\n".join(lines)


def history(model_name: str) -> str:
    """Every alias move, oldest first."""
    _versions(MlflowClient(), model_name)  # an unknown model is an error, not an empty history
    events = promotion_history(MlflowClient(), model_name)
    if not events:
        return f"no alias moves recorded for {model_name!r}"
    return "\n".join(
        f"{e.seq:>4}  {e.time}  {e.alias:<10} v{e.version:<4} (was {('v' + e.previous) if e.previous else 'none'})  "
        f"{e.action:<8} {e.who}  {e.reason}"
        for e in events
    )


def evidence_of(client: MlflowClient, version: ModelVersion) -> Evidence:
    """The evidence a training run logged for `version`; a version without it cannot be gated."""
    try:
        evidence = load_evidence(client, version)
    except (MlflowException, OSError) as error:  # OSError: connection refused or reset
        raise RegistryUnavailableError(
            f"cannot read the evidence of version {version.version} (run {version.run_id}): {error}"
        ) from None
    if evidence is None:
        raise RegisteredModelNotFoundError(
            f"version {version.version} has no {EVIDENCE_ARTIFACT} in run {version.run_id}: it was not registered by "
            "cxr train, so the gate has nothing to judge it on (use --force to promote it anyway)"
        )
    return evidence


def promote(model_name: str, version: str, reason: str, force: bool) -> Promotion:
    """A manual promotion: the same gate as training (champion re-evaluated on the version's data), recorded."""
    from components.evaluation import predict_with_version
    from steps.model_control_plane import mirror_alias

    client = MlflowClient()
    found = _version(client, model_name, version)
    evidence = evidence_of(client, found)

    def champion_predictions(champion, like):
        return predict_with_version(f"models:/{model_name}/{champion.version}", like)

    promotion = promote_with_gate(
        client,
        model_name,
        str(found.version),
        evidence,
        champion_predictions,
        action="promote",
        note=reason,
        force=force,
    )
    if promotion.alias == "champion" and not promotion.criteria:  # it already was: nothing moved, nothing to record
        return promotion
    tags = found.tags or {}
    client.update_model_version(
        model_name,
        str(found.version),
        description=version_description(
            promotion, tags.get(TAG_BACKBONE, "?"), tags.get(TAG_DATASET_VERSION, "?"), tags.get(TAG_CARD)
        ),
    )
    mirror_alias(model_name, str(found.version), promotion.alias, description=promotion.reason)
    return promotion


def roll_back(model_name: str, reason: str, to_version: str | None) -> str:
    """Give `champion` back to the previous champion (or `to_version`); returns what happened."""
    from steps.model_control_plane import mirror_alias

    event = rollback(MlflowClient(), model_name, reason, to_version)
    mirror_alias(model_name, event.version, "champion", description=f"rollback: {reason}")
    return f"{model_name}: champion v{event.previous} -> v{event.version} (rollback by {event.who}: {reason})"


def format_promotion(promotion: Promotion) -> str:
    """What `cxr promote` prints: the outcome and every criterion."""
    lines = [f"{promotion.model_name} v{promotion.version} -> {promotion.alias}: {promotion.reason}"]
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in promotion.criteria]
    return "\n".join(lines)
