"""`cxr data versions | approve | reject` and the approval check of `cxr train` (components.data_decisions).

Versions seen come from the work folder's steward summaries and from the tags the steward step sets
on its MLflow run (any work folder on the same tracking server); decisions from the work folder's
``reports/data_decisions.json`` and from MLflow's ``cxr_data_decisions`` experiment.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import TYPE_CHECKING

from components.data_decisions import (
    DECISIONS_EXPERIMENT,
    DECISIONS_FILE,
    DataDecision,
    Validation,
    decisions_in_mlflow,
    find_version,
    log_decision,
    merge_decisions,
    new_decision,
    read_decisions,
    record_decision,
    require_approved,
    validations_in_mlflow,
    validations_in_reports,
    versions_seen,
    versions_table,
)
from cxr.stack import LocalPaths, read_team_config

if TYPE_CHECKING:
    from components.config import RunConfig
    from cxr.retraining import DataCheck


def tracking_uri(paths: LocalPaths) -> str:
    """The tracking server (or store) the work folder's runs go to: the team stack's server for a folder set
    up with `cxr stack up --team` (unless MLFLOW_TRACKING_URI names another), else MLFLOW_TRACKING_URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or paths.tracking_uri
    team = read_team_config(paths)
    if team is not None and uri == paths.tracking_uri:
        return team.tracking_uri
    return uri


def _client(paths: LocalPaths):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(paths))


def _artifact_root(paths: LocalPaths):
    """The work folder's MLflow artifacts for its own store; the server's default on a tracking server."""
    return paths.mlflow_artifacts if tracking_uri(paths) == paths.tracking_uri else None


def all_decisions(paths: LocalPaths, client) -> list[DataDecision]:
    """The work folder's decisions and the tracking server's, each once, oldest first."""
    return merge_decisions(read_decisions(paths.reports / DECISIONS_FILE), decisions_in_mlflow(client))


def all_validations(paths: LocalPaths, client) -> list[Validation]:
    """Validations recorded in the work folder's reports and on the tracking server's runs."""
    from components.steward_report import SUMMARY_JSON

    return [*validations_in_reports(paths.reports, SUMMARY_JSON), *validations_in_mlflow(client)]


def decide(paths: LocalPaths, version_text: str, decision: str, reason: str, by: str | None) -> str:
    """Record a steward's decision on a version seen, in MLflow and in the work folder; returns what to print.

    Raises:
        DataDecisionError: blank reason or name, or `version_text` names no version seen.
    """
    client = _client(paths)
    known = [v.dataset_version for v in all_validations(paths, client)]
    known += [d.dataset_version for d in all_decisions(paths, client)]
    version = find_version(version_text, known)
    record = new_decision(version, decision, reason, by if by is not None else _user())
    run_id = log_decision(client, record, _artifact_root(paths))  # first: a server that is down records nothing
    path = paths.reports / DECISIONS_FILE
    record_decision(path, record)
    return (
        f"dataset version {version} {record.line()}\n"
        f"recorded in {path} and in MLflow (experiment '{DECISIONS_EXPERIMENT}', run {run_id})"
    )


def _user() -> str:
    for variable in ("USER", "LOGNAME", "USERNAME"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def check_approval(config: RunConfig, paths: LocalPaths, data: DataCheck) -> tuple[str, DataDecision] | None:
    """With ``data.require_approval``: the dataset version `cxr train` would train on and its approval.

    The version is the one the run's ingest will record (components.retraining.current_dataset_version:
    only files the work folder's cache does not know are read).

    Returns:
        (version, approval), or None when the config does not require approval.

    Raises:
        DataNotApprovedError: no steward approved that version, or the newest decision rejects it.
    """
    if not config.data.require_approval:
        return None
    from components.retraining import FileInfoCache, current_dataset_version, data_listing
    from cxr.retraining import CACHE_FILE
    from cxr.runner import resolved_config

    version = data.decision.dataset_version if data.decision is not None else None
    if version is None:
        resolved = resolved_config(config)
        listing = data.listing or data_listing(resolved)
        version, _ = current_dataset_version(resolved, listing, FileInfoCache(paths.workdir / CACHE_FILE))
    return version, require_approved(version, all_decisions(paths, _client(paths)))


def cmd_data(args: argparse.Namespace, paths: LocalPaths) -> int:
    """cxr data versions | approve VERSION --reason TEXT | reject VERSION --reason TEXT."""
    if args.data_command == "versions":
        client = _client(paths)
        rows = versions_seen(all_validations(paths, client), all_decisions(paths, client))
        print(versions_table(rows))
        return 0
    decision = "approved" if args.data_command == "approve" else "rejected"
    print(decide(paths, args.version, decision, args.reason, args.by))
    return 0


def add_data_parser(commands, handler) -> None:
    """cxr data versions | approve | reject (`handler` opens the work folder, then calls cmd_data)."""
    sub = commands.add_parser("data", help="dataset versions seen, and stewards' approvals and rejections")
    actions = sub.add_subparsers(dest="data_command", required=True)
    actions.add_parser(
        "versions", help="dataset versions validated: when, sources, counts, verdict, the steward's decision"
    )
    for verb, help_text in (
        ("approve", "approve a dataset version for training (recorded with who and when)"),
        ("reject", "reject a dataset version (training on it is refused where data.require_approval is on)"),
    ):
        action = actions.add_parser(verb, help=help_text)
        action.add_argument("version", help="the dataset version (as `cxr data versions` lists it; 4+ first digits)")
        action.add_argument("--reason", required=True, help="why; recorded with the decision")
        action.add_argument("--by", help="who decides (default: $USER)")
    sub.set_defaults(handler=handler)
