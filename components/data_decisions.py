"""Data stewards' decisions on dataset versions: approve or reject, with who, when and why.

A dataset version (components.manifest.dataset_version) is *seen* when a validation wrote its steward
summary: ``<workdir>/reports/<run>/summary.json`` in the work folder, and tags (VERSION_TAGS) on the
run's MLflow run for any work folder on the same tracking server. A decision is kept twice:

- in the work folder, ``<workdir>/reports/data_decisions.json`` (DecisionFile), beside the reports
  the steward read;
- in MLflow, one run per decision in the experiment DECISIONS_EXPERIMENT, tagged with the dataset
  version, the decision, who, when and why (DECISION_TAGS). A run per decision, rather than tags
  on the validation run: decisions are appended, never overwritten (an approval later revoked by a
  rejection keeps both), they do not depend on which experiment validated the version (cxr validate
  or cxr train), and a new work folder pointed at the same tracking server finds them all with
  one search.

The newest decision on a version is the one that holds (`latest_decision`). With
``data.require_approval`` a training run needs it to be an approval (`require_approved`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from components.errors import CxrError

DECISIONS_FILE = "data_decisions.json"  # in the work folder's reports folder
DECISIONS_EXPERIMENT = "cxr_data_decisions"

Decision = Literal["approved", "rejected"]

# Tags of a decision's MLflow run.
TAG_DECISION_ID = "cxr.data.decision_id"
TAG_DATASET_VERSION = "cxr.data.dataset_version"
TAG_DECISION = "cxr.data.decision"
TAG_REASON = "cxr.data.reason"
TAG_BY = "cxr.data.by"
TAG_DECIDED_AT = "cxr.data.decided_at"
# Tags of a validation's MLflow run (the steward step sets them, `version_tags`); the version under TAG_DATASET_VERSION.
TAG_VERDICT = "cxr.data.verdict"
TAG_SOURCES = "cxr.data.sources"
TAG_ROWS = "cxr.data.rows"
TAG_USED = "cxr.data.used"
TAG_EXCLUDED = "cxr.data.excluded"
TAG_VALIDATED_AT = "cxr.data.validated_at"


class DataDecisionError(CxrError, ValueError):
    """A decision cannot be recorded or read (blank reason, unknown version, unreadable record)."""


class DataNotApprovedError(CxrError, RuntimeError):
    """Training was asked on a dataset version that no steward approved (``data.require_approval``)."""


class DataDecision(BaseModel):
    """One steward's decision on one dataset version."""

    id: str  # uuid4 hex: the same decision read from the file and from MLflow counts once
    dataset_version: str
    decision: Decision
    reason: str = Field(min_length=1)
    by: str
    decided_at: str  # ISO 8601, UTC, seconds

    def line(self) -> str:
        """One line: `approved by ana at 2026-12-01T10:00:00+00:00: <reason>`."""
        return f"{self.decision} by {self.by} at {self.decided_at}: {self.reason}"


class DecisionFile(BaseModel):
    """The work folder's record of decisions (DECISIONS_FILE), oldest first."""

    decisions: list[DataDecision] = []


class Validation(BaseModel):
    """One validation of a dataset version: a steward summary, from the reports folder or from MLflow."""

    dataset_version: str
    run: str  # the pipeline run's name, or the MLflow run id
    validated_at: str  # ISO 8601, UTC
    verdict: str  # PASSED, PASSED WITH WARNINGS, BLOCKED
    sources: list[str]
    rows: int
    used: int
    excluded: int


class VersionSeen(BaseModel):
    """A dataset version and what is known of it: its validations, the newest first, and its decision."""

    dataset_version: str
    first_seen: str
    last_seen: str
    runs: int
    sources: list[str]
    rows: int  # of the newest validation
    used: int
    excluded: int
    verdict: str  # of the newest validation
    decision: DataDecision | None  # the newest decision, None: undecided


def new_decision(
    dataset_version: str, decision: Decision, reason: str, by: str, now: datetime | None = None
) -> DataDecision:
    """A decision stamped now (UTC, seconds) with a fresh id.

    Args:
        dataset_version: the version decided on (as `cxr data versions` lists it).
        decision: "approved" or "rejected".
        reason: why, in the steward's words; blank is refused.
        by: who (a user name).
        now: the time to record (default: now).

    Returns:
        The DataDecision.

    Raises:
        DataDecisionError: the reason or the name is blank.
    """
    if not reason.strip():
        raise DataDecisionError("--reason is blank: say why the version is approved or rejected")
    if not by.strip():
        raise DataDecisionError("who decides is unknown: give --by NAME (or set USER)")
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
    return DataDecision(
        id=uuid.uuid4().hex,
        dataset_version=dataset_version,
        decision=decision,
        reason=reason.strip(),
        by=by.strip(),
        decided_at=stamp,
    )


def read_decisions(path: Path) -> list[DataDecision]:
    """The decisions recorded in `path` (a DecisionFile), oldest first; none when the file does not exist.

    Raises:
        DataDecisionError: the file exists but cannot be read or is not a DecisionFile (it is named).
    """
    if not path.exists():
        return []
    try:
        return DecisionFile.model_validate_json(path.read_bytes()).decisions
    except (OSError, ValidationError, ValueError) as error:
        raise DataDecisionError(f"{path}: not a record of data decisions ({_first_line(error)})") from None


def record_decision(path: Path, decision: DataDecision) -> None:
    """Append `decision` to the DecisionFile at `path` (created), replacing the file in one step.

    Raises:
        DataDecisionError: the existing file is unreadable, or the folder is not writable.
    """
    decisions = [*read_decisions(path), decision]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(DecisionFile(decisions=decisions).model_dump_json(indent=2) + "\n")
        temporary.replace(path)
    except OSError as error:
        raise DataDecisionError(f"{path}: cannot record the decision ({error.strerror or error})") from None


def merge_decisions(*sources: Iterable[DataDecision]) -> list[DataDecision]:
    """Decisions from several places (file, MLflow), each once (by id), oldest first."""
    by_id: dict[str, DataDecision] = {}
    for decisions in sources:
        for decision in decisions:
            by_id.setdefault(decision.id, decision)
    return sorted(by_id.values(), key=lambda d: d.decided_at)


def latest_decision(decisions: Iterable[DataDecision], dataset_version: str) -> DataDecision | None:
    """The newest decision on `dataset_version` (the one that holds), or None."""
    mine = [d for d in decisions if d.dataset_version == dataset_version]
    return max(mine, key=lambda d: d.decided_at, default=None)


def approve_command(dataset_version: str) -> str:
    """The command a steward runs to approve `dataset_version`."""
    return f'cxr data approve {dataset_version} --reason "..."'


def require_approved(dataset_version: str, decisions: Iterable[DataDecision]) -> DataDecision:
    """The approval that lets training use `dataset_version`.

    Returns:
        The newest decision on the version, an approval.

    Raises:
        DataNotApprovedError: no decision on the version, or the newest is a rejection; the one-line
            message names the version and the command that approves it.
    """
    decision = latest_decision(decisions, dataset_version)
    if decision is None:
        raise DataNotApprovedError(
            f"dataset version {dataset_version} has no steward approval (data.require_approval is on): "
            f"review its report (cxr validate), then {approve_command(dataset_version)}"
        )
    if decision.decision != "approved":
        raise DataNotApprovedError(
            f"dataset version {dataset_version} was {decision.line()} (data.require_approval is on); "
            f"a steward may approve it again: {approve_command(dataset_version)}"
        )
    return decision


def find_version(text: str, known: Iterable[str]) -> str:
    """The dataset version `text` names: a version seen, or the unique one it is the start of (4+ characters).

    Raises:
        DataDecisionError: no version seen matches (the versions seen are listed), or several do.
    """
    versions = sorted(set(known))
    if text in versions:
        return text
    matches = [v for v in versions if len(text) >= 4 and v.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataDecisionError(f"dataset version {text!r} is ambiguous: it starts {', '.join(matches)}")
    if not versions:
        raise DataDecisionError(f"unknown dataset version {text!r}: no version seen yet (cxr validate records one)")
    seen = ", ".join(versions)
    short = len(text) < 4 and any(v.startswith(text) for v in versions)
    hint = "; give at least 4 characters of it" if short else ""
    raise DataDecisionError(f"unknown dataset version {text!r}{hint}: versions seen: {seen} (cxr data versions)")


# ---------------------------------------------------------------- versions seen


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def validation_from_summary(summary: dict[str, Any], run: str) -> Validation | None:
    """The Validation a steward summary (summary.json, as a dict) records; None without a dataset version.

    Args:
        summary: components.steward_report.StewardSummary as JSON (read leniently: older reports count).
        run: the pipeline run it belongs to (its report folder's name).
    """
    version = summary.get("dataset_version")
    if not version:
        return None
    counts = summary.get("counts") or {}
    sources = (summary.get("class_by_source") or {}).get("columns") or []
    return Validation(
        dataset_version=str(version),
        run=run,
        validated_at=str(summary.get("generated_at") or ""),
        verdict=str(summary.get("verdict") or "?"),
        sources=[str(s) for s in sources],
        rows=int(counts.get("total") or 0),
        used=int(counts.get("used") or 0),
        excluded=int(counts.get("excluded") or 0),
    )


def validations_in_reports(reports: Path, summary_name: str = "summary.json") -> list[Validation]:
    """Every validation whose steward summary is in `reports/<run>/` (unreadable summaries are skipped).

    Args:
        reports: the work folder's reports folder (cxr.stack.LocalPaths.reports).
        summary_name: the summary's file name (components.steward_report.SUMMARY_JSON).

    Returns:
        The validations, in no particular order.
    """
    found = []
    for path in sorted(reports.glob(f"*/{summary_name}")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and (validation := validation_from_summary(summary, path.parent.name)):
            found.append(validation)
    return found


def version_tags(validation: Validation) -> dict[str, str]:
    """The tags that make a validation's MLflow run findable by version (`validation_from_tags`)."""
    return {
        TAG_DATASET_VERSION: validation.dataset_version,
        TAG_VERDICT: validation.verdict,
        TAG_SOURCES: ",".join(validation.sources),
        TAG_ROWS: str(validation.rows),
        TAG_USED: str(validation.used),
        TAG_EXCLUDED: str(validation.excluded),
        TAG_VALIDATED_AT: validation.validated_at,
    }


def validation_from_tags(tags: dict[str, str], run: str) -> Validation | None:
    """The Validation recorded by `version_tags` on an MLflow run; None when the run has none."""
    version = tags.get(TAG_DATASET_VERSION)
    if not version or TAG_VERDICT not in tags:
        return None

    def number(key: str) -> int:
        try:
            return int(tags.get(key) or 0)
        except ValueError:
            return 0

    return Validation(
        dataset_version=version,
        run=run,
        validated_at=tags.get(TAG_VALIDATED_AT, ""),
        verdict=tags[TAG_VERDICT],
        sources=[s for s in tags.get(TAG_SOURCES, "").split(",") if s],
        rows=number(TAG_ROWS),
        used=number(TAG_USED),
        excluded=number(TAG_EXCLUDED),
    )


def versions_seen(validations: Iterable[Validation], decisions: Iterable[DataDecision]) -> list[VersionSeen]:
    """One row per dataset version validated, the most recently validated first, with its decision.

    The same run found in the reports folder and in MLflow counts once (by version and time).
    """
    decisions = list(decisions)
    groups: dict[str, dict[str, Validation]] = {}
    for validation in validations:
        groups.setdefault(validation.dataset_version, {}).setdefault(validation.validated_at, validation)
    rows = []
    for version, by_time in groups.items():
        ordered = sorted(by_time.values(), key=lambda v: v.validated_at)
        newest = ordered[-1]
        rows.append(
            VersionSeen(
                dataset_version=version,
                first_seen=ordered[0].validated_at,
                last_seen=newest.validated_at,
                runs=len(ordered),
                sources=sorted({s for v in ordered for s in v.sources}),
                rows=newest.rows,
                used=newest.used,
                excluded=newest.excluded,
                verdict=newest.verdict,
                decision=latest_decision(decisions, version),
            )
        )
    return sorted(rows, key=lambda row: row.last_seen, reverse=True)


def versions_table(rows: list[VersionSeen]) -> str:
    """`cxr data versions`: one line per version (version, last seen, runs, sources, counts, verdict, decision)."""
    if not rows:
        return "no dataset version seen yet: cxr validate --config FILE validates a drop and records its version"
    header = ("VERSION", "LAST VALIDATED", "RUNS", "SOURCES", "ROWS", "USED", "EXCLUDED", "VERDICT", "DECISION")
    table = [header]
    for row in rows:
        decision = row.decision
        table.append(
            (
                row.dataset_version,
                row.last_seen,
                str(row.runs),
                ",".join(row.sources) or "-",
                str(row.rows),
                str(row.used),
                str(row.excluded),
                row.verdict,
                f"{decision.decision} by {decision.by} at {decision.decided_at}" if decision else "undecided",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)), line[-1]])
        for line in table
    )


# ---------------------------------------------------------------- MLflow


def decision_tags(decision: DataDecision) -> dict[str, str]:
    """The tags of a decision's MLflow run (read back by `decision_from_tags`)."""
    return {
        TAG_DECISION_ID: decision.id,
        TAG_DATASET_VERSION: decision.dataset_version,
        TAG_DECISION: decision.decision,
        TAG_REASON: decision.reason,
        TAG_BY: decision.by,
        TAG_DECIDED_AT: decision.decided_at,
    }


def decision_from_tags(tags: dict[str, str]) -> DataDecision | None:
    """The decision recorded on an MLflow run by `decision_tags`; None when the tags are not one."""
    try:
        return DataDecision(
            id=tags[TAG_DECISION_ID],
            dataset_version=tags[TAG_DATASET_VERSION],
            decision=tags[TAG_DECISION],
            reason=tags[TAG_REASON],
            by=tags[TAG_BY],
            decided_at=tags[TAG_DECIDED_AT],
        )
    except (KeyError, ValidationError):
        return None


def log_decision(client: Any, decision: DataDecision, artifact_root: Path | None) -> str:
    """Record `decision` as a finished run of DECISIONS_EXPERIMENT (created when missing).

    Args:
        client: an ``mlflow.MlflowClient`` on the tracking server or the work folder's store.
        decision: the decision.
        artifact_root: where a new experiment keeps artifacts (the work folder's MLflow artifacts for its
            own store); None: the tracking server's default.

    Returns:
        The MLflow run id.
    """
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = (artifact_root / DECISIONS_EXPERIMENT).as_uri() if artifact_root is not None else None
        experiment_id = client.create_experiment(DECISIONS_EXPERIMENT, artifact_location=location)
    run = client.create_run(
        experiment_id,
        tags=decision_tags(decision),
        run_name=f"{decision.decision}-{decision.dataset_version}",
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def decisions_in_mlflow(client: Any) -> list[DataDecision]:
    """Every decision recorded in DECISIONS_EXPERIMENT (none when it does not exist), oldest first."""
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    if experiment is None:
        return []
    decisions = []
    for run in _all_runs(client, [experiment.experiment_id], f"tags.`{TAG_DECISION}` != ''"):
        if (decision := decision_from_tags(run.data.tags)) is not None:
            decisions.append(decision)
    return sorted(decisions, key=lambda d: d.decided_at)


def validations_in_mlflow(client: Any) -> list[Validation]:
    """Every validation whose MLflow run carries `version_tags`, in any experiment of the tracking server."""
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    found = []
    for run in _all_runs(client, experiment_ids, f"tags.`{TAG_VERDICT}` != ''"):
        if (validation := validation_from_tags(run.data.tags, run.info.run_id)) is not None:
            found.append(validation)
    return found


def _all_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
