"""`cxr`: the command line of the chest X-ray MLOps system.

    cxr setup                          create the local ZenML stack (idempotent)
    cxr stack up [--team] / stack down the local stack, or the team stack: MLflow server on PostgreSQL and an
                                       S3 artifact store (servers started here, or --tracking-uri/--artifact-path)
    cxr train --config FILE            run the training pipeline; --if-data-changed: only when the data
                                       differs from the champion's (the decision is recorded)
    cxr validate --config FILE         ingest + validate a data drop, write the steward's report (no training);
                                       --purpose evaluation: an evaluation-only drop (not split, all external)
    cxr ablation --config FILE         the paper's ablation (Table 4) for one backbone
    cxr reproduce --config FILE        the paper's Tables 3 and 4: both tasks x every backbone, then the
                                       ablation; with CIs, beside the published figures (Markdown, CSV, card)
    cxr evaluate --model URI --config FILE  a registered version (models:/NAME@ALIAS or models:/NAME/N) on a
                                       labelled data drop: data steps (purpose evaluation) + the evaluation card
    cxr check-config --config FILE     validate a run config, run nothing
    cxr serve [--config FILE]          serve the champion over HTTP (MLflow's protocol; limits, /health, /version)
    cxr predict IMAGE|DIR|LIST.csv...  label + probabilities from the champion, as a TSV/CSV/JSON table
    cxr predict-batch --config FILE    the batch inference pipeline: a drop (any source, labels optional)
                                       scored in-process; input/output drift; Parquet, CSV, HTML report
    cxr explain IMAGE [--model URI]    the champion's prediction for one image and its Grad-CAM heat map (PNG)
    cxr models [show VERSION | history]  registered versions: aliases, metrics with CIs, why
    cxr promote VERSION --reason TEXT  move `champion` by hand (gated unless --force; recorded)
    cxr rollback --reason TEXT         give `champion` back to the previous champion (recorded)
    cxr data versions                  dataset versions validated: when, sources, counts, verdict, decision
    cxr data approve|reject VERSION --reason TEXT  a steward's decision (who, when); with
                                       data.require_approval, cxr train refuses a version not approved
    cxr ui                             print the command that opens the MLflow UI
    cxr sources                        list the source kinds and their options
    cxr backbones                      list the backbones, their input sizes and preprocessing
    cxr schedule create --config FILE --cron "0 3 * * 1"  scheduled retraining (a CronJob on Kubernetes, a
                                       recurring run on Kubeflow; locally the crontab line); list, pause, resume, delete
    cxr k8s-manifests --config FILE --zenml-config infra/zenml_kubernetes.yaml --out DIR
                                       the Jobs ZenML's Kubernetes orchestrator would submit, validated offline

Heavy imports (ZenML, TensorFlow) happen inside commands, after
`configure_environment` has pointed ZenML and MLflow at the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import ConfigError, DeploymentConfig, load_run_config
from components.errors import CxrError
from cxr.data import add_data_parser
from cxr.run_log import active_run_log, close_run_log, install_console_filters, log_exception, open_run_log
from cxr.team import add_stack_parser
from cxr.zenml_keys import add_zenml_config_option

if TYPE_CHECKING:
    from cxr.runner import (
        AblationRunSummary,
        EvaluationRunSummary,
        RegisteredVersion,
        ReproductionSummary,
        StewardOutputs,
        TrainingRunSummary,
    )

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = os.environ.get("CXR_WORKDIR", str(PROJECT_ROOT / ".cxr"))
# The running command's name (its log file's name): e.g. "train", "data-approve".
_COMMAND = "cxr"
_ARGV: list[str] = []  # its arguments, the log file's first line
# `cxr serve` and `cxr predict` without --model-name or --config.
DEFAULT_MODEL_NAME = "cxr-classifier"
# `cxr serve` options that override the run config's `serving` section.
SERVING_OPTIONS = (
    "host",
    "port",
    "workers",
    "max_body_bytes",
    "max_rows",
    "request_timeout_s",
    "max_batch_rows",
    "max_batch_wait_ms",
)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """--set training.epochs=2 -> {"training.epochs": 2} (values parsed as YAML)."""
    import yaml

    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({error.problem})") from None
    return overrides


def _environment(workdir: str):
    """Point ZenML and MLflow at the work folder (cxr.stack) and start the command's log file there."""
    from cxr.stack import configure_environment

    paths = configure_environment(workdir)
    open_run_log(paths.logs, _COMMAND, _ARGV)
    return paths


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, _parse_overrides(args.set))
    print(f"{args.config}: valid ({config.task}, backbones: {', '.join(b.name for b in config.backbones)})")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from cxr.stack import ensure_local_stack

    paths = _environment(args.workdir)
    stack = ensure_local_stack(paths, PROJECT_ROOT)
    print(f"ZenML stack '{stack}' is active (work folder {paths.workdir})")
    return 0


def _check_summary_path(path: str | None) -> None:
    """Refuse a --summary-json path that cannot be written, before the run rather than after it."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"--summary-json {path} is a folder; give a file name")
    if not target.parent.is_dir():
        raise ConfigError(f"--summary-json {path}: folder {target.parent} does not exist")


def cmd_train(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, _parse_overrides(args.set))
    _check_summary_path(args.summary_json)
    paths = _environment(args.workdir)
    from cxr.retraining import check_data, record_training
    from cxr.runner import run_training

    data = check_data(config, paths, if_data_changed=args.if_data_changed)  # the sources' listing, nothing read
    if data.decision is not None:
        print(data.decision.line())
    if not data.train:
        return 0
    from cxr.data import check_approval

    # data.require_approval: a version no steward approved stops here (DataNotApprovedError, one line).
    if (approval := check_approval(config, paths, data)) is not None:
        print(f"Dataset version {approval[0]} {approval[1].line()}")
    summary = run_training(config, paths, PROJECT_ROOT, zenml_overlays=args.zenml_config, stack=args.stack)
    record_training(data, summary.registration, paths, summary.run_name)
    print(format_summary(summary, paths))
    if args.summary_json:
        Path(args.summary_json).write_text(summary.model_dump_json(indent=2))
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, _parse_overrides(args.set))
    _check_summary_path(args.summary_json)
    paths = _environment(args.workdir)
    from cxr.runner import run_ablation

    summary = run_ablation(
        config, paths, PROJECT_ROOT, backbone=args.backbone, task=args.task, zenml_overlays=args.zenml_config
    )
    print(format_ablation(summary, paths))
    if args.summary_json:
        Path(args.summary_json).write_text(summary.model_dump_json(indent=2))
    return 0


def format_ablation(summary: AblationRunSummary, paths) -> str:
    lines = [
        "",
        "=" * 72,
        f"Ablation run '{summary.run_name}' finished ({summary.backbone}, {summary.task}).",
        "",
        summary.markdown.rstrip(),
        "",
        f"MLflow run:        {summary.mlflow_run_id} (experiment '{summary.experiment}', "
        "artifacts ablation/ablation.md, ablation/ablation.csv)",
        f"MLflow UI:         .venv/bin/mlflow ui --backend-store-uri {paths.tracking_uri} --port 5000",
        "=" * 72,
    ]
    return "\n".join(lines)


def _add_run_arguments(sub: argparse.ArgumentParser, config_help: str, runs: bool, summary_help: str = "") -> None:
    """--config and --set; for commands that run a pipeline also --summary-json and --zenml-config."""
    sub.add_argument("--config", required=True, help=config_help)
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set training.epochs=1",
    )
    if runs:
        sub.add_argument("--summary-json", help=summary_help)
        add_zenml_config_option(sub)


def _add_ablation_parser(commands) -> None:
    sub = commands.add_parser("ablation", help="the paper's ablation: augmentation x transfer for one backbone")
    _add_run_arguments(
        sub,
        "run config YAML (see configs/ablation-quick.yaml)",
        True,
        "also write the table and run summary to this JSON file",
    )
    sub.add_argument("--backbone", help="backbone to ablate (default: the config's first)")
    sub.add_argument("--task", choices=["binary", "multiclass"], help="task (default: the config's)")
    sub.set_defaults(handler=cmd_ablation)


def cmd_reproduce(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, _parse_overrides(args.set))
    _check_summary_path(args.summary_json)
    paths = _environment(args.workdir)
    from cxr.runner import run_reproduction

    summary = run_reproduction(
        config,
        paths,
        PROJECT_ROOT,
        tasks=args.task or ("binary", "multiclass"),
        ablation=not args.no_ablation,
        zenml_overlays=args.zenml_config,
        ablation_backbone=args.ablation_backbone,
        published=args.published,
    )
    print(format_reproduction(summary, paths))
    if args.summary_json:
        Path(args.summary_json).write_text(summary.model_dump_json(indent=2))
    return 0


def format_reproduction(summary: ReproductionSummary, paths) -> str:
    files = summary.files
    runs = [f"{what}: {name}" for what, name in summary.tables.runs.items()]
    models = ", ".join(f"{name} ({task})" for task, name in summary.registered_models.items())
    lines = [
        "",
        "=" * 72,
        f"Reproduction '{summary.name}' finished ({', '.join(summary.tasks)}).",
        "",
        summary.markdown.rstrip(),
        "",
        f"Runs:              {'; '.join(runs)}",
        f"Registered models: {models}",
        f"Markdown:          {files.markdown}",
        f"CSV:               {files.table3_csv}, {files.table4_csv}",
        f"Reproduction card: {files.html}",
        f"JSON:              {files.json_file}",
        f"MLflow run:        {summary.mlflow_run_id} (experiment '{summary.experiment}', artifacts reproduce/)",
        f"MLflow UI:         .venv/bin/mlflow ui --backend-store-uri {paths.tracking_uri} --port 5000",
        "=" * 72,
    ]
    return "\n".join(lines)


def _add_reproduce_parser(commands) -> None:
    sub = commands.add_parser(
        "reproduce", help="the paper's Tables 3 and 4: both tasks, every backbone, the ablation, with CIs"
    )
    _add_run_arguments(
        sub,
        "run config YAML (configs/paper.yaml; README 'Reproducing the paper' for the smoke-scale overrides)",
        True,
        "also write the tables, their files and runs to this JSON file",
    )
    sub.add_argument(
        "--task",
        action="append",
        choices=["binary", "multiclass"],
        help="a task to run (repeatable; default both)",
    )
    sub.add_argument("--no-ablation", action="store_true", help="Table 3 only: skip the ablation (Table 4)")
    sub.add_argument("--ablation-backbone", help="the backbone to ablate (default: the config's first)")
    sub.add_argument(
        "--published",
        metavar="YAML",
        help="the paper's published figures (default configs/published/paper.yaml)",
    )
    sub.set_defaults(handler=cmd_reproduce)


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the data pass (warnings allowed), 1 when a blocking check failed."""
    if args.purpose == "evaluation":
        config = _data_only_run_config(args.config, _parse_overrides(args.set))
    else:
        config = load_run_config(args.config, _parse_overrides(args.set))
    _check_summary_path(args.summary_json)
    paths = _environment(args.workdir)
    from components.validation import ManifestValidationError
    from cxr.runner import latest_run_id, run_validation, steward_outputs
    from pipelines.data import PIPELINE_NAME

    try:
        outputs = run_validation(config, paths, PROJECT_ROOT, zenml_overlays=args.zenml_config, purpose=args.purpose)
    except ManifestValidationError:
        outputs = steward_outputs(latest_run_id(PIPELINE_NAME))
    print(format_validation(outputs))
    summary = outputs.summary
    if args.summary_json and summary is not None:
        # The same content as the report folder's summary.json.
        Path(args.summary_json).write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
    return 0 if summary is not None and summary.success else 1


def format_validation(outputs: StewardOutputs) -> str:
    from components.steward_report import EXCLUDED_ROWS_CSV, SUMMARY_HTML, SUMMARY_JSON, summary_text

    summary, folder = outputs.summary, outputs.reports_folder
    if summary is None or folder is None:
        return f"Data validation run '{outputs.run_name}' ended ({outputs.status}) before its report was written."
    lines = ["", "=" * 72, summary_text(summary), ""]
    lines += [
        f"Steward report:    {Path(folder) / SUMMARY_HTML}",
        f"Summary (JSON):    {Path(folder) / SUMMARY_JSON}",
        f"Excluded rows:     {Path(folder) / EXCLUDED_ROWS_CSV}",
        "=" * 72,
    ]
    return "\n".join(lines)


def _with_ci(assessment, key: str) -> str:
    value = assessment.metrics.scalar(key)
    if value != value:  # NaN: undefined on this split
        return f"{key} undefined"
    interval = assessment.intervals.get(key)
    ci = "" if interval is None or interval.low is None else f" [{interval.low:.2f}-{interval.high:.2f}]"
    return f"{key} {value:.3f}{ci}"


def format_assessment(assessment) -> str:
    """Balanced numbers first, with 95% CIs: per-class sensitivity and specificity, macro-F1, ROC-AUC; then accuracy."""
    from components.evaluation_card import summary_keys

    metrics = assessment.metrics
    keys = [*summary_keys(metrics.class_names), "accuracy"]
    return f"{assessment.split} ({metrics.n_images} images): " + ", ".join(_with_ci(assessment, k) for k in keys)


def _serve_hint(summary: TrainingRunSummary, paths) -> str:
    promotion = summary.promotion
    if not promotion.promoted and promotion.champion_version is None:
        return "Serve champion:    none yet: no version has passed the gate (cxr models; cxr promote after review)"
    version = promotion.version if promotion.promoted else promotion.champion_version
    return (
        f"Serve champion:    .venv/bin/cxr{_workdir_option(paths)} serve --model-name {promotion.model_name}   "
        f"(version {version}; then POST base64 PNGs to http://127.0.0.1:5001/invocations)"
    )


def format_summary(summary: TrainingRunSummary, paths) -> str:
    promotion = summary.promotion
    lines = [
        "",
        "=" * 72,
        f"Training run '{summary.run_name}' finished ({summary.task}).",
        f"Best backbone:     {summary.backbone} (on validation); decision "
        f"{summary.registration.evidence.decision.describe()}",
        f"Registered model:  {promotion.model_name} version {promotion.version} -> alias '{promotion.alias}'",
        f"Why:               {promotion.reason}",
    ]
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in promotion.criteria]
    lines += ["Metrics (95% CI, patient bootstrap):"]
    lines += [f"  {format_assessment(a)}" for a in promotion.assessments.values()]
    lines += [
        f"Evaluation card:   {summary.evaluation_card}",
        f"Data validation:   {summary.data_docs_index}",
        f"Steward report:    {summary.steward_report}/summary.html",
        f"MLflow run:        {summary.mlflow_run_id} (experiment '{summary.experiment}')",
        f"MLflow UI:         .venv/bin/mlflow ui --backend-store-uri {paths.tracking_uri} --port 5000",
        f"ZenML dashboard:   ZENML_CONFIG_PATH={paths.zenml_config} .venv/bin/zenml login --local",
        f"Models:            .venv/bin/cxr{_workdir_option(paths)} models --model-name {promotion.model_name}",
        _serve_hint(summary, paths),
    ]
    if summary.deployment is not None:
        lines.append(f"Deployment:        {summary.deployment.message}")
    lines.append("=" * 72)
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Exit 0 when the version was evaluated, 1 when the data gate blocked the drop (its summary printed)."""
    from components.registered_evaluation import parse_model_reference

    parse_model_reference(args.model)  # ModelReferenceError (exit 2) before anything runs
    _check_summary_path(args.summary_json)
    paths = _registry_paths(args.workdir)
    from components.validation import ManifestValidationError
    from cxr.runner import latest_run_id, registered_version, run_evaluation, steward_outputs
    from pipelines.evaluation import PIPELINE_NAME

    registered = registered_version(args.model)
    config = _evaluation_run_config(args.config, _parse_overrides(args.set), registered)
    try:
        summary = run_evaluation(config, args.model, paths, PROJECT_ROOT, zenml_overlays=args.zenml_config)
    except ManifestValidationError:
        print(format_validation(steward_outputs(latest_run_id(PIPELINE_NAME))))
        print(f"{registered.model_uri} was not evaluated: the data gate blocked this drop.")
        return 1
    print(format_evaluation(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(summary.model_dump_json(indent=2))
    return 0


def _data_only_run_config(path: str, overrides: dict[str, Any]):
    """A data config for `cxr validate --purpose evaluation`: the same file `cxr evaluate` takes, which may
    leave out `backbones` (nothing is trained or predicted when validating); --set applies last."""
    unused = [{"name": "MobileNet", "weights": "none"}]  # validation only: no backbone runs
    return load_run_config(path, overrides, missing={"backbones": unused})


def _evaluation_run_config(path: str, overrides: dict[str, Any], registered: RegisteredVersion):
    """The run config of `cxr evaluate`: a data config may leave out `task` and `backbones`, which then
    default to the registered version's own (its contract); --set applies last."""
    contract = registered.contract
    missing: dict[str, Any] = {}
    if "task" in contract:
        missing["task"] = contract["task"]
    if "backbone" in contract and "image_size" in contract:
        missing["backbones"] = [
            {"name": contract["backbone"], "image_size": contract["image_size"], "weights": registered.pinned_uri}
        ]
    return load_run_config(path, overrides, missing=missing)


def _warnings(text: str | None) -> list[str]:
    """The card summary's warning (evaluating on the model's own training data), as a line of its own."""
    return [f"WARNING:{text.split('WARNING:', 1)[1]}"] if text and "WARNING:" in text else []


def format_evaluation(summary: EvaluationRunSummary) -> str:
    level = summary.assessments[0].confidence_level if summary.assessments else 0.95
    given = f" ({summary.model_uri})" if summary.model_uri != f"models:/{summary.model_name}/{summary.version}" else ""
    lines = [
        "",
        "=" * 72,
        f"Evaluation run '{summary.run_name}' finished.",
        f"Model:             {summary.model_name} version {summary.version}{given}",
        f"Decision rule:     {summary.decision}; recorded at registration, not re-chosen on this data",
        f"Data version:      {summary.dataset_version} (not split: every image it did not train on is evaluated)",
        *(
            [f"WARNING:{summary.summary.split('WARNING:', 1)[1]}"]
            if summary.summary and "WARNING:" in summary.summary
            else []
        ),
        f"Metrics ({level:.0%} CI, patient bootstrap), per source:",
    ]
    lines += [f"  {format_assessment(a)}" for a in summary.assessments]
    lines += [
        f"Evaluation card:   {summary.evaluation_card}",
        f"Card (JSON):       {summary.evaluation_card_json}",
        f"Recorded:          tag evaluated_on.{summary.dataset_version} on version {summary.version} "
        f"= {summary.card_mlflow_uri}; no alias moved",
        f"Steward report:    {summary.steward_report}/summary.html",
        f"MLflow run:        {summary.mlflow_run_id} (experiment '{summary.experiment}')",
        "=" * 72,
    ]
    return "\n".join(lines)


def cmd_predict_batch(args: argparse.Namespace) -> int:
    """Exit 0 when the drop was scored, 1 when a blocking input drift stopped it (its summary printed)."""
    from components.batch_inference import BatchDriftError, NothingToScoreError
    from components.registered_evaluation import parse_model_reference
    from cxr.runner import registered_version, run_batch_inference

    _check_summary_path(args.summary_json)
    paths = _registry_paths(args.workdir)
    overrides = _parse_overrides(args.set)
    if args.explain is not None:
        overrides["batch.explain"] = args.explain
    first = _data_only_run_config(args.config, overrides)
    model_uri = args.model or first.batch.model or f"models:/{first.registry.model_name}@champion"
    parse_model_reference(model_uri)  # ModelReferenceError (exit 2) before anything runs
    registered = registered_version(model_uri)
    config = _evaluation_run_config(args.config, overrides, registered)
    try:
        summary = run_batch_inference(config, model_uri, paths, PROJECT_ROOT, zenml_overlays=args.zenml_config)
    except (BatchDriftError, NothingToScoreError) as stopped:
        print(format_batch(stopped.summary))
        print(f"error: {stopped}", file=sys.stderr)
        return 1
    print(format_batch(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(summary.model_dump_json(indent=2))
    return 0


def format_batch(summary) -> str:
    """What `cxr predict-batch` prints: the version, the data, drift verdicts and where the outputs are."""
    given = f" ({summary.model_uri})" if summary.model_uri != f"models:/{summary.model_name}/{summary.version}" else ""
    excluded = ", ".join(f"{count} {reason}" for reason, count in summary.excluded.items()) or "none"
    predicted = ", ".join(f"{name} {count}" for name, count in summary.predicted.items()) or "none"
    written = summary.predictions_csv is not None
    stopped = "STOPPED by input drift." if summary.blocking_features else "STOPPED: nothing to score."
    lines = [
        "",
        "=" * 72,
        f"Batch run '{summary.run_name}' " + ("finished." if written else stopped),
        f"Model:             {summary.model_name} version {summary.version}{given}",
        f"Data version:      {summary.dataset_version}: {summary.images} files, {summary.scored} usable"
        + (", scored" if written else ", none scored"),
        f"Excluded:          {excluded}",
    ]
    if summary.seen_by_version:
        lines.append(
            f"WARNING: {summary.seen_by_version} of the usable images were in version {summary.version}'s training or "
            "validation data: drift against them is expected and their predictions are not an evaluation"
        )
    lines += [
        f"Input drift:       {summary.input_drift}",
        *[f"  {line}" for line in summary.input_drift_summary.splitlines()],
    ]
    if written:
        lines += [
            f"Output drift:      {summary.output_drift}",
            *[f"  {line}" for line in summary.output_drift_summary.splitlines()],
            f"Predicted:         {predicted}; {summary.ood_flagged} flagged out of distribution",
            f"Predictions:       {summary.predictions_csv}",
            f"                   {summary.predictions_parquet}",
        ]
    if summary.evaluation_card:
        lines.append(f"Evaluation card:   {summary.evaluation_card} (labelled rows)")
    lines += [
        f"Report:            {summary.report}",
        f"MLflow run:        {summary.mlflow_run_id} (experiment 'cxr_batch_inference')",
        "=" * 72,
    ]
    return "\n".join(lines)


def _serving_config(args: argparse.Namespace):
    """The run config of --config (with --set) for `cxr serve` and `cxr predict`, or None without --config."""
    if args.set and not args.config:
        raise ConfigError("--set overrides a field of --config; give --config FILE too")
    return load_run_config(args.config, _parse_overrides(args.set)) if args.config else None


def _registered_model_uri(args: argparse.Namespace, config=None) -> tuple[str, str]:
    """(model name, version) holding --alias; RegisteredModelNotFoundError (one line: how to train one) if none.

    The name is --model-name, else --config's registry.model_name, else DEFAULT_MODEL_NAME.
    """
    import mlflow
    from mlflow import MlflowClient

    from components.registry import RegisteredModelNotFoundError, aliases_of, current_champion

    name = args.model_name or (config.registry.model_name if config is not None else DEFAULT_MODEL_NAME)
    version = current_champion(MlflowClient(), name, args.alias)
    if version is None:
        workdir = (
            "" if Path(args.workdir).resolve() == Path(DEFAULT_WORKDIR).resolve() else f" --workdir {args.workdir}"
        )
        if others := aliases_of(MlflowClient(), name):  # e.g. only a challenger: serving it is one option away
            held = ", ".join(f"{alias} (version {v})" for alias, v in sorted(others.items()))
            raise RegisteredModelNotFoundError(
                f"no version of registered model {name!r} holds the alias {args.alias!r}; it has {held}: "
                f"give --alias {sorted(others)[0]}, or promote a version (cxr promote)"
            )
        raise RegisteredModelNotFoundError(
            f"no version of registered model {name!r} holds the alias {args.alias!r} in the registry at "
            f"{mlflow.get_registry_uri()}; train one: .venv/bin/cxr{workdir} train --config "
            f"{args.config or 'configs/quickstart.yaml'} (or check --model-name, --alias, --config and --workdir)"
        )
    return name, str(version.version)


def _workdir_option(paths) -> str:
    """' --workdir DIR' when the run used another work folder than the default, else ''."""
    return "" if Path(paths.workdir).resolve() == Path(DEFAULT_WORKDIR).resolve() else f" --workdir {paths.workdir}"


def _serving_section(args: argparse.Namespace, config):
    """The run config's `serving` section (defaults without --config) with the command's options over it."""
    from pydantic import ValidationError

    from components.config import ServingConfig

    options = {key: getattr(args, key, None) for key in SERVING_OPTIONS}
    data = (config.serving if config is not None else ServingConfig()).model_dump()
    data.update({key: value for key, value in options.items() if value is not None})
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        raise ConfigError(f"--{'-'.join(map(str, item['loc'])).replace('_', '-')}: {item['msg']}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; a taken port or no champion: one error line, before the model loads."""
    from components.validation import ValidationConfig

    config = _serving_config(args)
    serving = _serving_section(args, config)
    from components.server import ServedModel, ServerSettings, bind_socket, serve
    from components.serving import InputLimits

    sock = bind_socket(serving.host, serving.port)  # a taken port fails now, not after loading the model
    try:
        _registry_paths(args.workdir)
        name, version = _registered_model_uri(args, config)
        validation = config.validation if config is not None else ValidationConfig()
        settings = ServerSettings(
            model=ServedModel(name=name, version=version, alias=args.alias),
            serving=serving,
            limits=InputLimits.from_config(serving, validation),
        )
        url = f"http://{serving.host}:{serving.port}"
        print(
            f"Serving {name} version {version} (@{args.alias}) on {url}/invocations; loading the model "
            f"({serving.workers} worker{'s' if serving.workers > 1 else ''}); ready when {url}/health answers",
            flush=True,
        )
        serve(settings, sock)
    except KeyboardInterrupt:  # Ctrl+C while the model loads
        return 130
    finally:
        sock.close()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every image was scored, 1 when some could not be (named in the table's error column)."""
    config = _serving_config(args)
    _registry_paths(args.workdir)
    from components.serving import InputLimits, collect_image_paths, format_predictions, predict_files
    from components.validation import ValidationConfig

    if args.output and Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output} is a folder; give a file name")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise ConfigError(f"--output {args.output}: folder {Path(args.output).resolve().parent} does not exist")
    skipped: list[str] = []
    paths = collect_image_paths(args.images, skipped)
    if skipped:  # nothing left out unsaid: name a few of the files a folder held besides images
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        print(
            f"skipped {len(skipped)} file(s) that are not .png/.jpg/.jpeg/.dcm/.dicom by name: {shown} "
            "(name a file to score it whatever its name)",
            file=sys.stderr,
        )
    name, version = _registered_model_uri(args, config)
    limits = InputLimits.from_config(
        _serving_section(args, config), config.validation if config is not None else ValidationConfig()
    )
    table = predict_files(f"models:/{name}/{version}", paths, limits)
    text = format_predictions(table, args.format)
    if args.output:
        Path(args.output).write_text(text)
        print(f"{len(table)} images scored by {name} version {version}: {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    failed = table[table["error"] != ""]
    if failed.empty:
        return 0
    listed = "; ".join(f"{row.path}: {row.error}" for row in failed.head(5).itertuples())
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    print(
        f"error: {len(failed)} of {len(table)} images could not be decoded or scored (error column): {listed}{more}",
        file=sys.stderr,
    )
    return 1


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 with the PNG written; an unusable image, no such model or class: one `error:` line (main)."""
    config = load_run_config(args.config, {}) if args.config else None
    _registry_paths(args.workdir)
    from components.serving import InputLimits
    from cxr.explain import explain_image, format_explanation

    name = config.registry.model_name if config is not None else DEFAULT_MODEL_NAME
    limits = InputLimits.from_config(config.serving, config.validation) if config is not None else None
    result = explain_image(args.image, args.model or f"models:/{name}@champion", args.output, args.cls, limits)
    print(format_explanation(result))
    return 0


def _add_explain_parser(commands) -> None:
    sub = commands.add_parser("explain", help="one image: the champion's prediction and its Grad-CAM heat map (PNG)")
    sub.add_argument("image", help="an image file (PNG, JPEG)")
    sub.add_argument(
        "--model",
        metavar="URI",
        help="models:/<name>@<alias> or models:/<name>/<version> (default: models:/<--config's "
        f"registry.model_name, else {DEFAULT_MODEL_NAME}>@champion)",
    )
    sub.add_argument("--config", help="a run config: its registry.model_name, `serving` limits and ingest minimum size")
    sub.add_argument("--output", metavar="FILE.png", help="the PNG to write (default: <image stem>-gradcam.png here)")
    sub.add_argument("--class", dest="cls", metavar="NAME", help="the class to explain (default: the predicted one)")
    sub.set_defaults(handler=cmd_explain)


def cmd_ui(args: argparse.Namespace) -> int:
    paths = _environment(args.workdir)
    print(f".venv/bin/mlflow ui --backend-store-uri {paths.tracking_uri} --port 5000")
    return 0


def _model_name(args: argparse.Namespace) -> str:
    """--model-name, else the registry.model_name of --config, else the default."""
    if getattr(args, "config", None):
        return load_run_config(args.config, {}).registry.model_name
    return args.model_name


def cmd_models(args: argparse.Namespace) -> int:
    _registry_paths(args.workdir)
    from cxr import models

    name = _model_name(args)
    if args.models_command == "show":
        print(models.show_version(name, args.version))
    elif args.models_command == "history":
        print(models.history(name))
    else:
        print(models.list_versions(name))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Exit 0 when the version got `champion`, 1 when the gate kept it `challenger`."""
    _registry_paths(args.workdir)
    from cxr import models

    promotion = models.promote(_model_name(args), args.version, args.reason, args.force)
    print(models.format_promotion(promotion))
    return 0 if promotion.promoted else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    _registry_paths(args.workdir)
    from cxr import models

    print(models.roll_back(_model_name(args), args.reason, args.to))
    return 0


def _reason(text: str) -> str:
    """A --reason that says something: it is what the promotion history keeps."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a reason: it is recorded with who and when (an empty one is not)")
    return text.strip()


def _add_registry_parsers(commands) -> None:
    """cxr models [show VERSION | history], cxr promote, cxr rollback."""

    def model_options(sub) -> None:
        sub.add_argument("--model-name", default="cxr-classifier", help="registered model (default cxr-classifier)")
        sub.add_argument("--config", help="take the model name from this run config's registry.model_name")

    sub = commands.add_parser("models", help="list registered versions; show one; the promotion history")
    model_options(sub)
    actions = sub.add_subparsers(dest="models_command")
    show = actions.add_parser("show", help="one version: card, decision rule, gate criteria")
    show.add_argument("version")
    actions.add_parser("history", help="every alias move, oldest first")
    sub.set_defaults(handler=cmd_models, models_command=None)

    sub = commands.add_parser("promote", help="give a version `champion` by hand (gated unless --force)")
    model_options(sub)
    sub.add_argument("version")
    sub.add_argument("--reason", required=True, type=_reason, help="why; recorded with who and when")
    sub.add_argument("--force", action="store_true", help="promote even when gate criteria fail (recorded)")
    sub.set_defaults(handler=cmd_promote)

    sub = commands.add_parser("rollback", help="give `champion` back to the previous champion")
    model_options(sub)
    sub.add_argument("--reason", required=True, type=_reason, help="why; recorded with who and when")
    sub.add_argument("--to", metavar="VERSION", help="a specific earlier version (default: the previous champion)")
    sub.set_defaults(handler=cmd_rollback)


def _deployment_stack(workdir: str):
    """The work folder's registry and its local stack, activated in the folder's own ZenML repository
    (a `cxr train --stack NAME` may have left another one active there)."""
    from cxr.stack import ensure_local_stack

    paths = _registry_paths(workdir)
    ensure_local_stack(paths, PROJECT_ROOT)
    return paths


def cmd_deploy(args: argparse.Namespace) -> int:
    """Exit 0 when the version serves (deployed or kept), 1 when it failed to start or its canary."""
    _deployment_stack(args.workdir)
    from cxr.deploy import deploy

    settings = load_run_config(args.config, {}).deployment if args.config else DeploymentConfig()
    print(deploy(_model_name(args), args.version, args.alias, settings))
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    _deployment_stack(args.workdir)
    from cxr.deploy import format_deployments
    from steps.deployment import deployments

    print(format_deployments(deployments(args.model_name if args.model_name != "*" else None)))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    _deployment_stack(args.workdir)
    from steps.deployment import undeploy

    removed = undeploy(_model_name(args))
    print("\n".join(f"stopped {d.model_name} v{d.version} ({d.url})" for d in removed) or "nothing was deployed")
    return 0


def _add_deployment_parsers(commands) -> None:
    """cxr deploy, cxr deployments, cxr undeploy."""
    sub = commands.add_parser("deploy", help="serve a version with the stack's model deployer (serve before switch)")
    sub.add_argument("--model-name", default="cxr-classifier", help="registered model (default cxr-classifier)")
    sub.add_argument("--config", help="model name and deployment settings from this run config")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--version", help="a version number")
    which.add_argument("--alias", help="an alias (default: champion)")
    sub.set_defaults(handler=cmd_deploy)

    sub = commands.add_parser("deployments", help="running model servers: URL, version, since when, healthy")
    sub.add_argument("--model-name", default="*", help="one registered model (default: all)")
    sub.set_defaults(handler=cmd_deployments)

    sub = commands.add_parser("undeploy", help="stop and delete a model's servers")
    sub.add_argument("--model-name", default="cxr-classifier", help="registered model (default cxr-classifier)")
    sub.add_argument("--config", help="take the model name from this run config's registry.model_name")
    sub.set_defaults(handler=cmd_undeploy)


def cmd_sources(args: argparse.Namespace) -> int:
    """List the registered source kinds and their options (no TensorFlow, no ZenML)."""
    from components.sources import describe_sources

    print(describe_sources())
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """cxr data versions | approve VERSION --reason TEXT | reject VERSION --reason TEXT (cxr/data.py)."""
    if not Path(args.workdir).exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        # Decisions live in a work folder or on a shared tracking server: a mistyped --workdir is not created.
        raise ConfigError(
            f"no work folder {Path(args.workdir).resolve()}: no data was validated there yet (cxr validate), or "
            "give the work folder with --workdir (or MLFLOW_TRACKING_URI for a shared tracking server)"
        )
    paths = _environment(args.workdir)
    from cxr.data import cmd_data as run_data_command

    return run_data_command(args, paths)


def cmd_backbones(args: argparse.Namespace) -> int:
    """List the registered backbones (no TensorFlow, no ZenML)."""
    from components.backbones import describe_backbones

    print(describe_backbones())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classification MLOps pipeline")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="local state folder (default: .cxr in the project)")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, handler, help_text in (
        ("train", cmd_train, "run the training pipeline"),
        ("validate", cmd_validate, "ingest and validate the data only; write the steward's report"),
        ("check-config", cmd_check_config, "validate a run config without running anything"),
    ):
        sub = commands.add_parser(name, help=help_text)
        _add_run_arguments(
            sub,
            "run config YAML (see configs/)",
            name != "check-config",
            "also write the run summary to this JSON file",
        )
        if name == "train":
            sub.add_argument(
                "--if-data-changed",
                action="store_true",
                help="train only when the data differs from the champion's (a listing first; files hashed only "
                "when it changed); the decision is printed and appended to <workdir>/reports/"
                "retraining_decisions.jsonl",
            )
            sub.add_argument(
                "--stack",
                help="run on this registered ZenML stack (e.g. the Kubernetes stack of infra/"
                "register_kubernetes_stack.sh) instead of the work folder's local stack",
            )
        sub.set_defaults(handler=handler)

    commands.choices["validate"].add_argument(
        "--purpose",
        choices=["training", "evaluation"],
        default="training",
        help="training: split the drop (evaluation.external_sources held out); evaluation: an evaluation-only "
        "drop, every image external, no split and no training thresholds (labels still required)",
    )
    _add_ablation_parser(commands)
    _add_reproduce_parser(commands)
    sub = commands.add_parser("evaluate", help="evaluate a registered model version on a labelled data drop")
    sub.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="models:/<name>@<alias> (e.g. models:/cxr-classifier@champion) or models:/<name>/<version>",
    )
    _add_run_arguments(
        sub,
        "data config YAML: a run config whose data is evaluated (task and backbones default to the model's)",
        True,
        "also write the evaluation summary (assessments with CIs) to this JSON file",
    )
    sub.set_defaults(handler=cmd_evaluate)
    sub = commands.add_parser(
        "predict-batch", help="score a drop of new images with a registered model; drift checks; Parquet/CSV, report"
    )
    sub.add_argument(
        "--model",
        metavar="URI",
        help="models:/<name>@<alias> or models:/<name>/<version> (default: batch.model, else "
        "models:/<registry.model_name>@champion)",
    )
    sub.add_argument(
        "--explain",
        type=int,
        nargs="?",
        const=16,
        metavar="N",
        help="Grad-CAM heat maps of the first N images in the report (default N 16; batch.explain)",
    )
    _add_run_arguments(
        sub,
        "batch config YAML: data.sources to score (e.g. kind images), optional batch section (drift, explain)",
        True,
        "also write the batch summary to this JSON file",
    )
    sub.set_defaults(handler=cmd_predict_batch)
    _add_registry_parsers(commands)
    _add_deployment_parsers(commands)
    commands.add_parser("setup", help="create and activate the local ZenML stack").set_defaults(handler=cmd_setup)
    add_stack_parser(commands)  # cxr stack up [--team], cxr stack down
    add_data_parser(commands, cmd_data)  # cxr data versions | approve | reject
    commands.add_parser("ui", help="print the MLflow UI command").set_defaults(handler=cmd_ui)
    commands.add_parser("sources", help="list the source kinds and their options").set_defaults(handler=cmd_sources)
    commands.add_parser("backbones", help="list the backbones").set_defaults(handler=cmd_backbones)

    _add_serving_parsers(commands)
    _add_explain_parser(commands)
    _add_schedule_parser(commands)
    from cxr.k8s_manifests import add_parser as add_k8s_manifests_parser

    add_k8s_manifests_parser(commands)
    return parser


def cmd_schedule(args: argparse.Namespace) -> int:
    """cxr schedule create|list|pause|resume|delete (cxr/schedule.py). `create` exits 1 where ZenML refuses
    schedules (the local stack), after printing the crontab line and systemd units that run the same job."""
    if args.schedule_command == "create":
        from components.schedules import schedule_name, validate_cron

        cron = validate_cron(args.cron)  # CronError (exit 2) before anything else
        name = schedule_name(args.name, args.config)
        config = load_run_config(args.config, _parse_overrides(args.set))
        paths = _environment(args.workdir)
        from cxr.schedule import create_schedule

        status, text = create_schedule(
            name=name,
            cron=cron,
            config=config,
            config_path=args.config,
            paths=paths,
            project_root=PROJECT_ROOT,
            if_data_changed=args.if_data_changed,
            zenml_overlays=args.zenml_config,
            overrides=args.set,
            stack=args.stack,
        )
        print(text)
        return status
    _environment(args.workdir)
    from cxr import schedule

    if args.schedule_command == "list":
        print(schedule.list_text())
    elif args.schedule_command in ("pause", "resume"):
        print(schedule.set_active(args.name, active=args.schedule_command == "resume"))
    else:
        print(schedule.delete_schedule(args.name))
    return 0


def _add_schedule_parser(commands) -> None:
    """cxr schedule create|list|pause|resume|delete."""
    sub = commands.add_parser("schedule", help="scheduled retraining: ZenML schedules, or cron/systemd locally")
    actions = sub.add_subparsers(dest="schedule_command", required=True)
    create = actions.add_parser(
        "create", help="schedule `cxr train` (a CronJob on Kubernetes, a recurring run on Kubeflow; locally: cron)"
    )
    _add_run_arguments(create, "run config YAML the scheduled runs train with", False)
    create.add_argument("--cron", required=True, help='five-field cron, e.g. "0 3 * * 1" (Mondays 03:00) or @daily')
    create.add_argument("--name", help="schedule name (default train-<config file stem>)")
    create.add_argument(
        "--if-data-changed", action="store_true", help="each scheduled run trains only when the data changed"
    )
    add_zenml_config_option(create)
    create.add_argument("--stack", help="ZenML stack to schedule on (default: the active one, else the local stack)")
    actions.add_parser("list", help="ZenML schedules: state, cron, orchestrator, next run")
    for verb, help_text in (
        ("pause", "suspend a schedule (where the orchestrator allows)"),
        ("resume", "resume a paused schedule"),
        ("delete", "delete a schedule on its orchestrator (where ZenML can) and in ZenML"),
    ):
        actions.add_parser(verb, help=help_text).add_argument("name")
    sub.set_defaults(handler=cmd_schedule)


def _add_serving_parsers(commands) -> None:
    """cxr serve, cxr predict."""
    for name, handler, help_text in (
        ("serve", cmd_serve, "serve the champion over HTTP (limits, /health, /version; README 'Serving')"),
        ("predict", cmd_predict, "score image files, folders or a CSV list with the champion; write a table"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--model-name",
            help=f"registered model (default: --config's registry.model_name, else {DEFAULT_MODEL_NAME})",
        )
        sub.add_argument("--alias", default="champion", help="the alias whose version is used (default champion)")
        sub.add_argument(
            "--config", help="a run config: its registry.model_name, its `serving` section and ingest's minimum size"
        )
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        sub.set_defaults(handler=handler)
    serve = commands.choices["serve"]
    serve.add_argument("--host", help="address to listen on (default serving.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default serving.port, 5001)")
    serve.add_argument("--workers", type=int, help="server processes, each loading the model (default 1)")
    serve.add_argument("--max-body-bytes", type=int, help="larger request bodies get 413 (default 64 MiB)")
    serve.add_argument("--max-rows", type=int, help="images per request; more get 400 (default 64)")
    serve.add_argument("--request-timeout-s", type=float, help="seconds before a request gets 504 (default 60)")
    serve.add_argument(
        "--max-batch-rows", type=int, help="rows of concurrent requests per model call; 1: no micro-batching (32)"
    )
    serve.add_argument(
        "--max-batch-wait-ms", type=float, help="ms a model call may wait for requests being decoded (default 5)"
    )
    predict = commands.choices["predict"]
    predict.add_argument(
        "images",
        nargs="+",
        help="image files, folders (searched for .png/.jpg/.jpeg/.dcm/.dicom) or .csv lists (column path)",
    )
    predict.add_argument("--format", choices=["tsv", "csv", "json"], default="tsv", help="table format (default tsv)")
    predict.add_argument("--output", metavar="FILE", help="write the table to FILE (default: standard output)")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors about the user's config, data, weights or environment print one `error:` line
    (or message), their traceback goes to the command's log file (cxr.run_log) when a work folder is open."""
    global _COMMAND, _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    action = getattr(args, f"{args.command}_command", None)  # e.g. `cxr data approve`: "approve"
    _COMMAND = f"{args.command}-{action}" if action else args.command
    install_console_filters(_is_user_facing)
    try:
        return _main(args)
    finally:
        close_run_log()


def _main(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        # Ctrl+C: one line, no traceback (the pipeline run, if one started, is left failed in ZenML and MLflow).
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cxr sources | head`: the reader left; say nothing more (Python docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        # Errors about the user's config, data, weights or environment end the run with their
        # message, not a traceback; anything else is a bug and keeps its traceback.
        if _is_unreadable_database(error):
            print(
                f"error: the MLflow database at {os.environ.get('MLFLOW_TRACKING_URI')} cannot be read: "
                f"{getattr(error, 'orig', error)}",
                file=sys.stderr,
            )
            return 1
        if _is_unreachable_server(error):
            print(
                f"error: the MLflow tracking server at {os.environ.get('MLFLOW_TRACKING_URI')} cannot be reached "
                "(is it running? `cxr stack up --team` starts the local team stack; or unset MLFLOW_TRACKING_URI "
                "to use the work folder's own registry)",
                file=sys.stderr,
            )
            return 1
        if not _is_user_facing(error):
            log_exception(error, "unexpected error (a bug): its traceback follows on the console too")
            raise
        log_exception(error, f"error: {error}")
        if (run_log := active_run_log()) is not None and run_log.step_failed:
            print(f"(the failed step's trace is in {run_log.path})", file=sys.stderr)  # before: the error ends
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1


def _is_unreachable_server(error: BaseException) -> bool:
    """MLflow's REST client giving up on a tracking server that refuses or does not answer connections."""
    text = str(error)
    return type(error).__name__ == "MlflowException" and (
        "Connection refused" in text or "Max retries exceeded" in text or "Failed to establish" in text
    )


def _is_unreadable_database(error: BaseException) -> bool:
    """SQLAlchemy's DatabaseError (e.g. "file is not a database"), however MLflow wrapped it."""
    seen = 0
    while error is not None and seen < 5:
        if type(error).__name__ == "DatabaseError" and type(error).__module__.startswith("sqlalchemy"):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _registry_paths(workdir: str):
    """The work folder's paths, refusing a work folder whose MLflow registry does not exist yet.

    Commands that read the registry (models, promote, rollback, evaluate, deploy, serve, predict)
    would otherwise create an empty one and report "no versions", hiding a wrong --workdir. The check
    comes before the work folder is opened, so that a mistyped --workdir is not created either.
    """
    from cxr.stack import LocalPaths

    planned = LocalPaths(Path(workdir).resolve())
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if (not user_uri or user_uri == planned.tracking_uri) and not planned.mlflow_db.is_file():
        raise ConfigError(
            f"no MLflow registry in the work folder {planned.workdir} ({planned.mlflow_db} does not exist): nothing "
            "was trained there yet (cxr train), or give the work folder that holds your models with --workdir"
        )
    paths = _environment(workdir)
    if os.environ.get("MLFLOW_TRACKING_URI") == paths.tracking_uri and not paths.mlflow_db.is_file():
        raise ConfigError(
            f"no MLflow registry in the work folder {paths.workdir} ({paths.mlflow_db} does not exist): nothing "
            "was trained there yet (cxr train), or give the work folder that holds your models with --workdir"
        )
    return paths


def _is_user_facing(error: BaseException) -> bool:
    """A components.errors.CxrError (every user-facing error class derives from it), or a
    FileNotFoundError: a source root or weights path that does not exist (its message names it)."""
    return isinstance(error, (CxrError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
