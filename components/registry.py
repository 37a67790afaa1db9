"""Model registry: register versions, move the `champion` / `challenger` aliases on evidence, keep a history.

A training run registers its best backbone (chosen on validation) as a new
version, with its evidence: the predictions on the test split and on every
external source, the decision rule chosen on validation, and the evaluation
and gate settings (``Evidence``, logged as ``evaluation/evidence.json`` in the
version's run). Promotion (``promote_with_gate``) then, under a registry-wide
lock (``promotion_lock``):

1. re-reads the champion (another run may have moved it meanwhile);
2. evaluates the champion on the candidate's own test split and external
   sources (``champion_predictor``) with the champion's own recorded decision;
3. applies the configured gate (components.gate) with paired bootstrap
   differences on the same patients;
4. moves the alias (``champion`` when every criterion passed, else
   ``challenger``), stores the reasons and the criteria on the version, and
   appends the move to the promotion history (registered-model tags
   ``history.NNNNNN``, read by ``promotion_history``).

MLflow has no compare-and-set on aliases: the lock is a registered model named
``<model>.promotion-lock`` whose creation is atomic in every MLflow store (a
unique key in SQL stores; RESOURCE_ALREADY_EXISTS otherwise), so it works for
a local store and for a shared tracking server alike.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import random
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from pydantic import BaseModel

from components.assessment import Assessment, Predictions, assess
from components.bootstrap import Difference, bootstrap_weights, paired_differences
from components.config import EvaluationConfig, RegistryConfig
from components.errors import CxrError
from components.evaluation_card import summary_keys
from components.gate import TEST, GateCriterion, comparison_criterion, evaluate_gate
from components.intended_use import INTENDED_USE
from components.leakage import Overlap, SplitImages, overlap_with
from components.metrics import Decision, SplitMetrics

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC_KEY = "primary_metric"
TAG_METRIC_VALUE = "primary_metric_value"
TAG_FINGERPRINT = "test_split_fingerprint"
TAG_DATASET_VERSION = "dataset_version"
TAG_DECISION = "decision"  # the Decision (JSON) chosen on validation, applied unchanged to any later data
TAG_BACKBONE = "backbone"
TAG_REASON = "promotion_reason"
TAG_CRITERIA = "promotion_criteria"  # JSON list of GateCriterion
TAG_CARD = "evaluation_card"  # the card in the MLflow run (runs:/...)
TAG_CARD_FILE = "evaluation_card_file"  # the card's HTML file where the run wrote it
TAG_HEADLINE = "headline_metrics"  # JSON {key: [value, CI low, CI high]} on the test split
TAG_ALIAS_HISTORY_PREFIX = "history."
LOCK_SUFFIX = ".promotion-lock"
EVIDENCE_ARTIFACT = "evaluation/evidence.json"
# MLflow limits tag values (5,000 characters in its SQL stores).
_TAG_LIMIT = 4900


class Evidence(BaseModel):
    """What a version is judged on: its predictions and the settings they are read with.

    ``predictions`` holds the test split first, then one entry per external
    source ("external:<source>"). ``seed`` seeds the bootstrap. ``images`` records
    every used image of the run by split (components.leakage), so that a later
    comparison can leave out the images this version trained on; None for a
    version registered before it was recorded.
    """

    decision: Decision
    predictions: list[Predictions]
    evaluation: EvaluationConfig
    registry: RegistryConfig
    seed: int
    images: SplitImages | None = None


class Registration(BaseModel):
    """A model version registered by a training run (the ZenML artifact `registration`).

    ``candidates`` maps each trained backbone to its validation value of the
    primary metric, the basis of the choice.
    """

    model_name: str
    version: str
    model_uri: str
    backbone: str
    task: str
    test_metrics: SplitMetrics
    val_metrics: SplitMetrics
    test_fingerprint: str
    dataset_version: str
    mlflow_run_id: str
    candidates: dict[str, float]
    evidence: Evidence


class Promotion(BaseModel):
    """Which alias a version got and why (the ZenML artifact `promotion`, and what `cxr promote` prints).

    ``criteria`` are the gate's, passed or failed with their numbers;
    ``assessments`` the candidate's by split, ``champion_assessments`` the
    champion's on the same images (None without a champion), ``differences``
    the paired test-split differences candidate - champion by metric key.
    """

    model_name: str
    version: str
    alias: str  # CHAMPION or CHALLENGER
    promoted: bool
    forced: bool = False
    reason: str
    criteria: list[GateCriterion]
    champion_version: str | None  # the champion compared with, None when there was none
    metric: float | None  # the candidate's primary metric on the test split
    assessments: dict[str, Assessment]
    champion_assessments: dict[str, Assessment] | None = None
    differences: dict[str, Difference] = {}
    overlaps: list[Overlap] = []  # per judged split: images the champion had trained on, left out of the comparison


class AliasEvent(BaseModel):
    """One alias move in the promotion history (``cxr models history``)."""

    seq: int
    time: str  # UTC, ISO 8601
    alias: str
    version: str
    previous: str | None  # the version that held the alias before, None when none did
    action: Literal["gate", "promote", "force", "rollback"]
    who: str  # user@host
    reason: str


class RegistryUnavailableError(CxrError):
    """The MLflow registry could not be reached or refused a write; the message names the step that failed."""


class PromotionLockTimeoutError(CxrError):
    """Another promotion held the registry's promotion lock for longer than the wait allowed."""


class RollbackError(CxrError):
    """No earlier champion to roll back to, or the version asked for does not exist."""


def who() -> str:
    """user@host of this process, recorded with every alias move."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def split_fingerprint(keys: Iterable[str]) -> str:
    """Fingerprint a test split, whatever the order of its images.

    Args:
        keys: one stable key per image (the images' sha256s, or stable ids); duplicates count once.

    Returns:
        16 hex digits of a sha256 over the sorted, distinct keys.
    """
    digest = hashlib.sha256("\n".join(sorted(set(keys))).encode("utf-8"))
    return digest.hexdigest()[:16]


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


def aliases_of(client: MlflowClient, model_name: str) -> dict[str, str]:
    """{alias: version} of a registered model; {} when the model does not exist.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
    """
    try:
        return {alias: str(version) for alias, version in client.get_registered_model(model_name).aliases.items()}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


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


def _is_not_found(error: MlflowException) -> bool:
    # A missing model is RESOURCE_DOES_NOT_EXIST; the SQL store reports a missing
    # alias as INVALID_PARAMETER_VALUE ("Registered model alias ... not found").
    if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
        return True
    return error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and "alias" in error.message.lower()


def _is_already_exists(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


def _clip(text: str) -> str:
    return text if len(text) <= _TAG_LIMIT else text[: _TAG_LIMIT - 15] + " ... (clipped)"


def decision_of(version: ModelVersion) -> Decision:
    """The decision rule recorded on a version (argmax for versions registered before rules were recorded).

    Args:
        version: a registered version.

    Returns:
        Its Decision.
    """
    raw = (version.tags or {}).get(TAG_DECISION)
    return Decision.model_validate_json(raw) if raw else Decision(rule="argmax")


def register_version(
    model_uri: str,
    model_name: str,
    *,
    backbone: str,
    decision: Decision,
    metric_key: str,
    metric_value: float,
    test_fingerprint: str,
    dataset_version: str,
) -> ModelVersion:
    """Register a logged model as a new version, tagged with what promotion and reviewers need.

    Uses the globally configured registry (mlflow.set_registry_uri / tracking URI).

    Args:
        model_uri: the logged model (``runs:/<run id>/<path>`` or ``models:/...``).
        model_name: registered model name (created if missing).
        backbone: the backbone's name.
        decision: the decision rule chosen on validation (tag TAG_DECISION, JSON).
        metric_key: the primary metric's name.
        metric_value: its value on the test split (NaN when undefined).
        test_fingerprint: split_fingerprint of the test split.
        dataset_version: components.manifest.dataset_version of the run's manifest.

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
            TAG_DATASET_VERSION: dataset_version,
            TAG_DECISION: decision.model_dump_json(),
            TAG_BACKBONE: backbone,
        },
    )


# ---------------------------------------------------------------- the promotion lock


@contextmanager
def promotion_lock(
    client: MlflowClient,
    model_name: str,
    timeout_s: float = 600.0,
    stale_after_s: float = 3600.0,
    poll_s: float = 0.2,
) -> Iterator[str]:
    """Hold the registry-wide promotion lock of `model_name` (module docstring).

    A lock whose holder process ran on this host and is gone (killed), or one
    older than `stale_after_s` (a holder elsewhere), is broken; two waiters
    breaking the same stale lock at once is the one race left (both then
    compete for a fresh lock, and one may delete the other's: keep
    `stale_after_s` far above the longest promotion).

    Args:
        client: MLflow client of the registry.
        model_name: the registered model whose aliases are protected.
        timeout_s: how long to wait for the lock.
        stale_after_s: age in seconds after which a held lock counts as abandoned.
        poll_s: mean wait between attempts (jittered).

    Yields:
        The lock holder's description (who, pid, since).

    Raises:
        PromotionLockTimeoutError: the lock stayed held for `timeout_s`.
        mlflow.exceptions.MlflowException: the registry failed otherwise (callers name the step).
    """
    lock_name = f"{model_name}{LOCK_SUFFIX}"
    token = uuid.uuid4().hex
    holder = f"{who()} pid {os.getpid()} machine {_machine_id()} since {_now()} token {token}"
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        try:
            client.create_registered_model(lock_name, tags={"cxr.lock": "promotion"}, description=holder)
            break
        except MlflowException as error:
            if _is_not_found(error):
                # The SQL store answers a lost race by reading the existing lock, which its holder
                # may have deleted meanwhile: the lock is free again, try again soon.
                if time.monotonic() > deadline:
                    raise
                time.sleep(poll_s * random.random())
                continue
            if not _is_already_exists(error):
                raise
        held = _lock_holder(client, lock_name)
        if held is not None and (time.time() - held[1] > stale_after_s or _holder_is_dead(held[0])):
            _delete_lock(client, lock_name, held[0])
            continue
        if not waited:
            waited = True
            logger.warning(
                "waiting up to %.0f s for the promotion lock %r held by %s", timeout_s, lock_name, held and held[0]
            )
        if time.monotonic() > deadline:
            raise PromotionLockTimeoutError(
                f"another promotion of {model_name!r} holds the lock {lock_name!r} "
                f"({held[0] if held else 'released meanwhile'}); waited {timeout_s:.0f} s. If its process "
                f"was killed, delete the registered model {lock_name!r} in the MLflow UI"
            )
        time.sleep(poll_s * (0.5 + random.random()))
    try:
        yield holder
    finally:
        _delete_lock(client, lock_name, holder)


def _lock_holder(client: MlflowClient, lock_name: str) -> tuple[str, float] | None:
    try:
        model = client.get_registered_model(lock_name)
    except MlflowException as error:
        if _is_not_found(error):
            return None
        raise
    return model.description or "", model.creation_timestamp / 1000.0


def _machine_id() -> str:
    """/etc/machine-id (systemd), else the boot id: host names repeat across containers, these do not."""
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return text.replace("-", "")[:32]
    return "unknown"


def _holder_is_dead(holder: str) -> bool:
    """Whether the lock's holder ran on this host and its process is gone (killed mid-promotion).

    Holders on other hosts cannot be checked from here: their locks go stale by age only.
    """
    match = re.match(r"^(?P<who>\S+) pid (?P<pid>\d+) machine (?P<machine>\S+) since ", holder)
    if match is None or match["who"] != who() or match["machine"] in ("unknown",) or match["machine"] != _machine_id():
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _delete_lock(client: MlflowClient, lock_name: str, holder: str) -> None:
    """Delete the lock if `holder` still holds it (checked first, to spare a lock taken meanwhile)."""
    held = _lock_holder(client, lock_name)
    if held is None or held[0] != holder:
        return
    try:
        client.delete_registered_model(lock_name)
    except MlflowException as error:
        if not _is_not_found(error):
            raise


# ---------------------------------------------------------------- aliases and their history


def promotion_history(client: MlflowClient, model_name: str) -> list[AliasEvent]:
    """Every alias move recorded for `model_name`, oldest first.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.

    Returns:
        The events (empty when the model has none or does not exist).
    """
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException as error:
        if _is_not_found(error):
            return []
        raise
    events = [AliasEvent.model_validate_json(v) for k, v in tags.items() if k.startswith(TAG_ALIAS_HISTORY_PREFIX)]
    return sorted(events, key=lambda event: event.seq)


def move_alias(
    client: MlflowClient,
    model_name: str,
    alias: str,
    version: str,
    *,
    action: Literal["gate", "promote", "force", "rollback"],
    reason: str,
) -> AliasEvent:
    """Point `alias` at `version` and append the move to the history. Call under promotion_lock.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
        alias: CHAMPION or CHALLENGER.
        version: the version that gets it.
        action: what moved it (the training gate, a manual promotion, a forced one, a rollback).
        reason: why, in words.

    Returns:
        The recorded AliasEvent.
    """
    holder = current_champion(client, model_name, alias)
    previous = None if holder is None else str(holder.version)
    seq = len(promotion_history(client, model_name)) + 1
    event = AliasEvent(
        seq=seq,
        time=_now(),
        alias=alias,
        version=str(version),
        previous=previous,
        action=action,
        who=who(),
        reason=_clip(reason),
    )
    # set_registered_model_alias moves the alias: the previous holder loses it.
    client.set_registered_model_alias(model_name, alias, str(version))
    if alias == CHAMPION:  # the new champion is nobody's challenger any more
        challenger = current_champion(client, model_name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            client.delete_registered_model_alias(model_name, CHALLENGER)
    client.set_registered_model_tag(model_name, f"{TAG_ALIAS_HISTORY_PREFIX}{seq:06d}", event.model_dump_json())
    return event


def model_description(task: str, class_names: list[str], registry: RegistryConfig) -> str:
    """The registered model's description in the MLflow UI: task, classes, intended use, how versions are promoted.

    Args:
        task: binary or multiclass.
        class_names: the classes in model output order.
        registry: the registry settings (primary metric, gate).

    Returns:
        Markdown text.
    """
    gate = registry.gate
    floors = "; ".join(
        f"{f.metric} ({'95% CI lower bound' if f.bound == 'lower' else 'point'}) on {f.on} >= {f.min}"
        for f in gate.floors
    )
    change = f"paired-bootstrap difference in {registry.primary_metric} vs the champion, lower bound > " + (
        f"{gate.min_improvement}"
        if gate.comparison == "superiority"
        else f"-{gate.non_inferiority_margin} (non-inferiority)"
    )
    return (
        f"Chest X-ray classifier, {task} task: {', '.join(class_names)} (model output order).\n\n"
        f"**Intended use:** {INTENDED_USE}\n\n"
        "**Promotion:** every training run registers its best backbone (chosen on validation). It becomes "
        "`champion` only when every gate criterion passes, else `challenger`: the data gate; floors "
        f"({floors or 'none'}); against the current champion, re-evaluated on the candidate's own test "
        f"split and external sources: {change}; no slice losing more than {gate.slice_tolerance}; ECE not "
        f"rising more than {gate.calibration_tolerance}. Manual moves: `cxr promote VERSION --reason TEXT`, "
        "`cxr rollback`; every move is in the registered model's `history.*` tags (`cxr models history`)."
    )


def version_description(promotion: Promotion, backbone: str, dataset_version: str, card_uri: str | None) -> str:
    """A version's description in the MLflow UI: backbone, data, gated metrics with CIs, the decision, the card.

    Args:
        promotion: the gate's outcome for this version.
        backbone: the backbone's name.
        dataset_version: the training run's dataset version.
        card_uri: where the evaluation card is (None when not written).

    Returns:
        Markdown text.
    """
    lines = [
        f"**{promotion.alias}** ({'forced' if promotion.forced else 'gate'}): {promotion.reason}",
        "",
        f"Backbone {backbone}; dataset version {dataset_version}.",
        "",
        "| split | metric | value | 95% CI |",
        "| --- | --- | --- | --- |",
    ]
    for split, assessment in promotion.assessments.items():
        for key in summary_keys(assessment.metrics.class_names):
            value = assessment.metrics.scalar(key)
            interval = assessment.intervals.get(key)
            ci = "" if interval is None or interval.low is None else f"{interval.low:.3f} to {interval.high:.3f}"
            lines.append(f"| {split} | {key} | {'' if np.isnan(value) else f'{value:.3f}'} | {ci} |")
    lines += ["", "Criteria:"]
    lines += [f"- {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in promotion.criteria]
    if card_uri:
        lines += ["", f"Evaluation card: {card_uri}"]
    return "\n".join(lines)


def headline_json(assessment: Assessment) -> str:
    """The headline metrics of one assessment as JSON {key: [value, CI low, CI high]} (None when undefined).

    Args:
        assessment: usually the test split's.

    Returns:
        Compact JSON, short enough for an MLflow tag.
    """
    out = {}
    for key in summary_keys(assessment.metrics.class_names):
        value = assessment.metrics.scalar(key)
        interval = assessment.intervals.get(key)
        out[key] = [
            None if np.isnan(value) else round(value, 4),
            None if interval is None or interval.low is None else round(interval.low, 4),
            None if interval is None or interval.high is None else round(interval.high, 4),
        ]
    return json.dumps(out)


# ---------------------------------------------------------------- promotion on evidence


def read_run_text(client: MlflowClient, run_id: str | None, artifact: str) -> str | None:
    """A text artifact of a run, read through `client` (its store, not the global tracking URI).

    Args:
        client: MLflow client of the tracking server holding the run.
        run_id: the run, or None (a version registered without one).
        artifact: its path in the run, e.g. EVIDENCE_ARTIFACT.

    Returns:
        The text, or None when there is no run or the run has no such artifact.

    Raises:
        mlflow.exceptions.MlflowException, OSError: the tracking server or artifact store failed.
    """
    if not run_id:
        return None
    folder = artifact.rsplit("/", 1)[0] if "/" in artifact else None
    if not any(item.path == artifact for item in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as destination:
        return Path(client.download_artifacts(run_id, artifact, destination)).read_text(encoding="utf-8")


def load_evidence(client: MlflowClient, version: ModelVersion) -> Evidence | None:
    """The evidence the training run logged for `version` (EVIDENCE_ARTIFACT in its MLflow run).

    Returns:
        The Evidence, or None when the version has no run or its run has no evidence (it was not
        registered by this project's training pipeline).

    Raises:
        mlflow.exceptions.MlflowException, OSError: the tracking server or artifact store failed.
    """
    text = read_run_text(client, version.run_id, EVIDENCE_ARTIFACT)
    return None if text is None else Evidence.model_validate_json(text)


def compared_on_unseen(
    judged: list[Predictions], theirs: list[Predictions], images: SplitImages | None, seen: SplitImages, version: str
) -> tuple[list[Overlap], list[Predictions], list[Predictions]]:
    """Leave out of a champion comparison the images the champion trained or was selected on.

    Args:
        judged: the candidate's predictions by split (test, external:<source>).
        theirs: the champion's predictions of the same images, aligned row by row.
        images: the candidate's recorded images (for the pHashes of the judged images); None: no pHash.
        seen: the champion's recorded images (components.leakage).
        version: the champion's version.

    Returns:
        (overlaps, mine, theirs): one Overlap per judged split, and both models' predictions of
        the images the champion never saw; splits left with no image are dropped from both.
    """
    phashes = {} if images is None else images.phash_of()
    overlaps, mine_kept, theirs_kept = [], [], []
    for ours, other in zip(judged, theirs, strict=True):
        overlap = overlap_with(ours, [phashes.get(key, "") for key in ours.keys], seen, version)
        overlaps.append(overlap)
        if overlap.kept:
            mine_kept.append(ours.subset(overlap.kept))
            theirs_kept.append(other.subset(overlap.kept))
    return overlaps, mine_kept, theirs_kept


ChampionPredictor = Callable[[ModelVersion, list[Predictions]], list[Predictions]]


def assess_all(evidence: Evidence, decision: Decision, predictions: list[Predictions]) -> dict[str, Assessment]:
    """Assess each split's predictions with the bootstrap settings of `evidence`.

    Args:
        evidence: the candidate's evidence (evaluation settings, seed).
        decision: the decision rule of the model that made `predictions`.
        predictions: one entry per split (test, external:<source>).

    Returns:
        Assessments by split name.
    """
    return {p.split: assess(p, decision, evidence.evaluation, evidence.seed) for p in predictions}


def promote_with_gate(
    client: MlflowClient,
    model_name: str,
    version: str,
    evidence: Evidence,
    champion_predictor: ChampionPredictor,
    *,
    action: Literal["gate", "promote"] = "gate",
    note: str = "",
    force: bool = False,
    data_gate_passed: bool = True,
    lock_timeout_s: float = 600.0,
) -> Promotion:
    """Judge a registered version against the current champion on the same data and move the aliases.

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
        version: the candidate version.
        evidence: its predictions (test first, then external sources) and settings.
        champion_predictor: predicts with a version on the images of the given predictions
            (same order, same splits); called under the lock for the champion.
        action: "gate" from a training run, "promote" from `cxr promote`.
        note: the person's reason for a manual promotion, recorded with it.
        force: give `champion` even when criteria fail (recorded as forced).
        data_gate_passed: whether the data gate passed.
        lock_timeout_s: how long to wait for another promotion to finish.

    Returns:
        The Promotion; alias, reason and criteria tags are set in the registry and the move is in the history.

    Raises:
        PromotionLockTimeoutError: another promotion held the lock too long.
        RegistryUnavailableError: the registry could not be read or written; no alias moved
            unless the failure came after the move (the message says which step failed).
    """
    version = str(version)
    judged = [p for p in evidence.predictions if p.split != "val"]
    assessments = assess_all(evidence, evidence.decision, judged)  # before the lock: it does not need the champion
    metric = evidence.registry.primary_metric
    step = "taking the promotion lock"
    try:
        with promotion_lock(client, model_name, timeout_s=lock_timeout_s):
            step = "reading the champion"
            champion = current_champion(client, model_name)
            if champion is not None and str(champion.version) == version:
                return _already_champion(model_name, version, assessments, metric)
            champion_assessments, differences, champion_version = None, {}, None
            compared, comparison, overlaps = assessments, None, []
            if champion is not None:
                champion_version = str(champion.version)
                step = f"reading the images champion v{champion_version} trained on"
                champion_evidence = load_evidence(client, champion)
                seen = None if champion_evidence is None else champion_evidence.images
                if seen is not None:
                    step = f"re-evaluating champion v{champion_version}"
                    theirs = [p.aligned(q) for p, q in zip(judged, champion_predictor(champion, judged), strict=True)]
                    overlaps, mine, theirs = compared_on_unseen(judged, theirs, evidence.images, seen, champion_version)
                comparison = comparison_criterion(
                    champion_version,
                    recorded=seen is not None,
                    overlap=next((o for o in overlaps if o.split == TEST), None),
                    kept=next((p for p in (mine if seen is not None else []) if p.split == TEST), None),
                    candidate_version=version,
                )
                if comparison.passed:
                    champion_decision = decision_of(champion)
                    champion_assessments = assess_all(evidence, champion_decision, theirs)
                    if any(o.excluded for o in overlaps):
                        compared = assess_all(evidence, evidence.decision, mine)
                    differences = _test_differences(evidence, mine, theirs, champion_decision)
            gate = evaluate_gate(
                assessments,
                evidence.registry.gate,
                metric,
                evidence.evaluation.min_slice_size,
                champion=champion_assessments,
                differences=differences,
                champion_version=champion_version,
                data_gate_passed=data_gate_passed,
                compared=compared,
                comparison=comparison,
            )
            promoted = gate.promote or force
            reason = gate.reason if not force or gate.promote else f"FORCED despite the gate: {gate.reason}"
            if note:
                reason = f"{reason} | note: {note}"
            alias = CHAMPION if promoted else CHALLENGER
            step = f"moving the {alias} alias"
            move_alias(
                client,
                model_name,
                alias,
                version,
                action="force" if force and not gate.promote else action,
                reason=reason,
            )
            step = "recording the reasons"
            client.set_model_version_tag(model_name, version, TAG_REASON, _clip(reason))
            client.set_model_version_tag(
                model_name, version, TAG_CRITERIA, _clip(json.dumps([c.model_dump() for c in gate.criteria]))
            )
            if TEST in assessments:
                client.set_model_version_tag(model_name, version, TAG_HEADLINE, headline_json(assessments[TEST]))
    except (MlflowException, OSError) as error:  # OSError: connection refused or reset
        raise _unavailable(f"promotion of {model_name} v{version}", step, error) from None
    test = assessments.get(TEST)
    return Promotion(
        model_name=model_name,
        version=version,
        alias=alias,
        promoted=promoted,
        forced=force and not gate.promote,
        reason=reason,
        criteria=gate.criteria,
        champion_version=champion_version,
        metric=None if test is None else test.metrics.scalar(metric),
        assessments=assessments,
        champion_assessments=champion_assessments,
        differences=differences,
        overlaps=overlaps,
    )


def _already_champion(model_name: str, version: str, assessments: dict[str, Assessment], metric: str) -> Promotion:
    test = assessments.get(TEST)
    return Promotion(
        model_name=model_name,
        version=version,
        alias=CHAMPION,
        promoted=True,
        reason=f"version {version} already holds the {CHAMPION} alias",
        criteria=[],
        champion_version=version,
        metric=None if test is None else test.metrics.scalar(metric),
        assessments=assessments,
    )


def _test_differences(
    evidence: Evidence, mine: list[Predictions], theirs: list[Predictions], champion_decision: Decision
) -> dict[str, Difference]:
    """Paired bootstrap differences (candidate - champion) on the test split, every gated key."""
    by_split = {p.split: (p, q) for p, q in zip(mine, theirs, strict=True)}
    if TEST not in by_split:
        return {}
    ours, other = by_split[TEST]
    y_true, candidate = ours.arrays()
    _, baseline = other.arrays()
    weights = bootstrap_weights(ours.patient_ids, y_true, evidence.evaluation.bootstrap_resamples, evidence.seed)
    return paired_differences(
        y_true,
        candidate,
        evidence.decision,
        baseline,
        champion_decision,
        ours.class_names,
        weights,
        level=evidence.evaluation.confidence_level,
        n_bins=evidence.evaluation.calibration_bins,
        keys=[evidence.registry.primary_metric, "ece"],
    )


def rollback(client: MlflowClient, model_name: str, reason: str, to_version: str | None = None) -> AliasEvent:
    """Give `champion` back to the version that held it before the current one (or to `to_version`).

    Args:
        client: MLflow client of the registry.
        model_name: registered model name.
        reason: why, recorded in the history.
        to_version: a specific earlier version; default: the previous champion from the history.

    Returns:
        The recorded AliasEvent.

    Raises:
        RollbackError: no earlier champion is recorded, or `to_version` does not exist.
    """
    try:
        return _rollback(client, model_name, reason, to_version)
    except (MlflowException, OSError) as error:
        raise _unavailable(f"rollback of {model_name}", "moving the champion alias", error) from None


def _unavailable(what: str, step: str, error: Exception) -> RegistryUnavailableError:
    detail = error.message if isinstance(error, MlflowException) else str(error)
    return RegistryUnavailableError(
        f"{what} failed while {step}; no alias moved unless the history says so "
        f"(registry {mlflow.get_registry_uri()}): {detail}"
    )


def _rollback(client: MlflowClient, model_name: str, reason: str, to_version: str | None) -> AliasEvent:
    with promotion_lock(client, model_name):
        current = current_champion(client, model_name)
        lineage = champion_lineage(promotion_history(client, model_name))
        earlier = lineage[:-1] if current is not None and lineage and lineage[-1] == str(current.version) else lineage
        if to_version is None:
            if not earlier:
                raise RollbackError(
                    f"no earlier champion of {model_name!r} is left to roll back to (cxr models history); "
                    "give champion to another version with cxr promote VERSION --reason TEXT (gated)"
                )
            to_version = earlier[-1]
        to_version = str(to_version)
        try:
            client.get_model_version(model_name, to_version)
        except MlflowException as error:
            if _is_not_found(error):
                raise RollbackError(f"{model_name!r} has no version {to_version} (cxr models lists them)") from None
            raise
        if current is not None and str(current.version) == to_version:
            raise RollbackError(f"version {to_version} of {model_name!r} already holds the {CHAMPION} alias")
        if to_version not in earlier:
            raise RollbackError(
                f"version {to_version} of {model_name!r} is not an earlier champion still in line "
                f"({', '.join('v' + v for v in earlier) or 'none'}): a rollback only returns to one; give champion "
                f"to v{to_version} with cxr promote {to_version} --reason TEXT (gated, or --force)"
            )
        return move_alias(client, model_name, CHAMPION, to_version, action="rollback", reason=reason)


def champion_lineage(history: list[AliasEvent]) -> list[str]:
    """The champions in line, oldest first, the current one last, replayed from the promotion history.

    A promotion (gate, promote, force) puts its version on top; a rollback to a version in
    line drops every version above it, so a second rollback goes further back instead of
    returning to the version just rolled back. A rollback to a version not in line (from a
    history written before this rule) puts it on top.

    Args:
        history: promotion_history's events, oldest first.

    Returns:
        Version numbers, without repeats next to each other.
    """
    line: list[str] = []
    for event in history:
        if event.alias != CHAMPION:
            continue
        if event.action == "rollback" and event.version in line:
            del line[len(line) - line[::-1].index(event.version) :]  # above its last place in line
        elif not line or line[-1] != event.version:
            line.append(event.version)
    return line
