"""Run the training pipeline for a validated RunConfig and collect what it produced."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from components.ablation import VARIANTS, AblationSummary, ablation_config
from components.assessment import Assessment
from components.config import ConfigError, RunConfig, merged_yaml_file, misspelt_step_ids
from components.deployment import DeploymentOutcome
from components.errors import CxrError
from components.evaluation import Evaluation
from components.labels import Task
from components.metrics import SplitMetrics
from components.privacy import pseudonymization_key
from components.registry import Promotion, Registration
from components.reproduce import (
    ReproductionFiles,
    ReproductionTables,
    load_published,
    reproduction_tables,
    task_config,
    to_markdown,
    write_reproduction,
)
from components.splitting import TRAINING, DataPurpose
from components.steward_report import StewardSummary
from cxr.stack import (
    EVALUATION_EXPERIMENT_NAME,
    EXPERIMENT_NAME,
    REPRODUCTION_EXPERIMENT_NAME,
    STACK_NAME,
    LocalPaths,
    ensure_local_stack,
)
from cxr.zenml_keys import zenml_config_keys
from steps.names import (
    ABLATION_CSV,
    ABLATION_REPORT_STEP,
    ABLATION_SUMMARY,
    ABLATION_TABLE,
    DATA_DOCS_INDEX,
    DEPLOY_STEP,
    DEPLOYMENT,
    EVALUATION_CARD_HTML,
    PROMOTE_STEP,
    PROMOTION,
    REGISTER_STEP,
    REGISTRATION,
    VALIDATE_STEP,
    train_step_id,
)

# The paper's published figures that `cxr reproduce` shows beside its own (components.reproduce.PublishedNumbers).
PUBLISHED_FIGURES = Path("configs") / "published" / "paper.yaml"


def ensure_synthetic_dataset(config: RunConfig) -> Path | None:
    """Generate the embedded synthetic dataset unless the same one is already on disk."""
    synthetic = config.data.synthetic
    if synthetic is None:
        return None
    from components.synthetic import generate_dataset

    root = Path(synthetic.root).resolve()
    marker = root / "generator.json"
    wanted = synthetic.model_dump(mode="json", exclude={"root"})
    if marker.exists() and json.loads(marker.read_text()) == wanted and (root / "metadata.csv").exists():
        return root
    generate_dataset(root, **wanted)
    marker.write_text(json.dumps(wanted, indent=2))
    return root


def resolved_config(config: RunConfig) -> RunConfig:
    """The run config with local source roots made absolute (steps may run in another folder)."""
    sources = [
        source if "://" in source.root else source.model_copy(update={"root": str(Path(source.root).resolve())})
        for source in config.data.sources
    ]
    return config.model_copy(update={"data": config.data.model_copy(update={"sources": sources})})


# A prebuilt step image: the steps run in it as it is (ZenML DockerSettings parent_image + skip_build).
# Set where no image can be built, e.g. in the pod of the retraining CronJob (infra/k8s/retraining).
STEP_IMAGE_VARIABLE = "CXR_STEP_IMAGE"


def step_image_overlay(paths: LocalPaths) -> list[Path]:
    """[a ZenML config file that runs the steps in $CXR_STEP_IMAGE without building], or [] when unset."""
    image = os.environ.get(STEP_IMAGE_VARIABLE, "").strip()
    if not image:
        return []
    path = paths.workdir / "zenml_step_image.yaml"
    path.write_text(yaml.safe_dump({"settings": {"docker": {"parent_image": image, "skip_build": True}}}))
    return [path]


def _run_pipeline(
    pipeline: Any,
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    zenml_overlays: list[str] = (),
    train_step_ids: list[str] = (),
    **parameters: Any,
) -> Any:
    """Run a pipeline of this project with the merged ZenML config; returns the pipeline run.

    The `train_steps` settings of the ZenML config files apply to each of `train_step_ids`;
    `parameters` are further pipeline parameters (e.g. the data steps' `purpose`).
    """
    zenml_config = merged_yaml_file(
        [project_root / "zenml_config.yaml", *zenml_overlays, *step_image_overlay(paths)],
        paths.workdir / "zenml_run_config.yaml",
        train_step_ids=train_step_ids,
        known_keys=zenml_config_keys(),
    )
    arguments = {
        "run": resolved_config(config),
        "docs_dir": str(paths.reports / "data_docs"),
        "reports_dir": str(paths.reports),
        **parameters,
    }
    configured = pipeline.with_options(config_path=str(zenml_config))
    probe = configured.with_options()
    probe.prepare(**arguments)  # builds the step graph only; nothing runs
    check_step_ids(zenml_config, list(probe.invocations), zenml_overlays)
    return configured(**arguments)


def check_step_ids(zenml_config: Path, step_ids: Sequence[str], overlays: Sequence[str | Path]) -> None:
    """Refuse a `steps.<id>` of the merged ZenML config that misspells one of `step_ids` (misspelt_step_ids).

    Args:
        zenml_config: the merged ZenML run config.
        step_ids: the pipeline's step invocation ids (after ``pipeline.prepare``).
        overlays: the --zenml-config files, named in the error.

    Raises:
        ConfigError: one names a step the pipeline lacks but closely resembles one it has.
    """
    steps = (yaml.safe_load(zenml_config.read_text()) or {}).get("steps") or {}
    if problems := misspelt_step_ids(list(steps), list(step_ids)):
        files = ", ".join(str(path) for path in overlays) or "zenml_config.yaml"
        raise ConfigError(f"ZenML run config {files}: {'; '.join(problems)}")


class StackNotFoundError(CxrError, LookupError):
    """`--stack NAME` names no ZenML stack of the store; the message lists the stacks."""


def use_stack(paths: LocalPaths, project_root: Path, stack: str | None) -> str:
    """Activate the stack a run goes to: the work folder's local (or team) stack, or `stack` by name.

    Args:
        paths: the work folder.
        project_root: the repository (the local stack's ZenML repository).
        stack: a stack registered in ZenML's store (e.g. by infra/register_kubernetes_stack.sh), or
            None (or the local stack's name) for the work folder's own stack (ensure_local_stack).

    Returns:
        The active stack's name.

    Raises:
        StackNotFoundError: no stack of that name.
    """
    if stack is None or stack == STACK_NAME:
        return ensure_local_stack(paths, project_root)
    from zenml.client import Client

    client = Client()
    try:
        client.activate_stack(stack)
    except KeyError:
        names = ", ".join(sorted(s.name for s in client.list_stacks(size=100).items))
        raise StackNotFoundError(f"--stack {stack}: no such ZenML stack (stacks: {names})") from None
    return stack


def _prepare(config: RunConfig, paths: LocalPaths, project_root: Path, stack: str | None = None) -> None:
    if config.data.pseudonymize_patient_ids:
        pseudonymization_key()  # ConfigError now, not from the ingest step after the pipeline started
    use_stack(paths, project_root, stack)
    ensure_synthetic_dataset(config)


class TrainingRunSummary(BaseModel):
    """What `cxr train` prints and writes with --summary-json: the run, its registration and promotion."""

    run_name: str
    task: Task
    backbone: str
    promotion: Promotion
    registration: Registration
    test_metrics: SplitMetrics
    deployment: DeploymentOutcome | None = None  # the deploy step's outcome (None in runs without one)
    evaluation_card: str | None  # the card's HTML file
    data_docs_index: str
    steward_report: str | None
    mlflow_run_id: str
    experiment: str


def run_training(
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    zenml_overlays: list[str] = (),
    stack: str | None = None,
) -> TrainingRunSummary:
    _prepare(config, paths, project_root, stack)
    from pipelines.training import training_pipeline

    train_steps = [train_step_id(backbone.name) for backbone in config.backbones]
    pipeline_run = _run_pipeline(training_pipeline, config, paths, project_root, zenml_overlays, train_steps)
    return collect_summary(pipeline_run.id, config)


def run_validation(
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    zenml_overlays: list[str] = (),
    purpose: DataPurpose = TRAINING,
) -> StewardOutputs:
    """Ingest + validate + split + steward report, no training. A blocked data drop
    raises ManifestValidationError after its report has been written. Purpose "evaluation":
    an evaluation-only drop, not split, every row external (pipelines.data)."""
    _prepare(config, paths, project_root)
    from pipelines.data import data_validation_pipeline

    pipeline_run = _run_pipeline(data_validation_pipeline, config, paths, project_root, zenml_overlays, purpose=purpose)
    return steward_outputs(pipeline_run.id)


def latest_run_id(pipeline_name: str) -> Any:
    from zenml.client import Client

    runs = Client().list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", size=1)
    return runs.items[0].id if runs.items else None


class StewardOutputs(BaseModel):
    """What `cxr validate` prints: the steward's summary and the folder of its files."""

    run_name: str
    status: str  # the pipeline run's status, e.g. "completed" or "failed" (blocked at the data gate)
    summary: StewardSummary | None  # None when the run ended before the report was written
    reports_folder: str | None  # holds summary.html, summary.json, excluded_rows.csv


def steward_outputs(pipeline_run_id) -> StewardOutputs:
    """The steward's summary and where its files are, from a (possibly blocked) run."""
    from zenml.client import Client

    from steps.names import STEWARD_STEP, STEWARD_SUMMARY

    run = Client().get_pipeline_run(pipeline_run_id)
    step = run.steps.get(STEWARD_STEP)
    if step is None or STEWARD_SUMMARY not in step.outputs:
        return StewardOutputs(run_name=run.name, status=run.status.value, summary=None, reports_folder=None)
    artifact = step.outputs[STEWARD_SUMMARY][0]
    return StewardOutputs(
        run_name=run.name,
        status=run.status.value,
        summary=artifact.load(),
        reports_folder=artifact.run_metadata.get("reports_folder"),
    )


def collect_summary(pipeline_run_id, config: RunConfig) -> TrainingRunSummary:
    """Read the promotion, registration and evaluation artifacts of a finished run."""
    from zenml.client import Client

    run = Client().get_pipeline_run(pipeline_run_id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    promotion = run.steps[PROMOTE_STEP].outputs[PROMOTION][0].load()
    registration = run.steps[REGISTER_STEP].outputs[REGISTRATION][0].load()
    deployment = run.steps[DEPLOY_STEP].outputs[DEPLOYMENT][0].load() if DEPLOY_STEP in run.steps else None
    return TrainingRunSummary(
        run_name=run.name,
        task=config.task,
        backbone=registration.backbone,
        promotion=promotion,
        registration=registration,
        test_metrics=registration.test_metrics,
        deployment=deployment,
        evaluation_card=_card_path(run),
        data_docs_index=run.steps[VALIDATE_STEP].outputs[DATA_DOCS_INDEX][0].load(),
        steward_report=steward_outputs(pipeline_run_id).reports_folder,
        mlflow_run_id=registration.mlflow_run_id,
        experiment=EXPERIMENT_NAME,
    )


def _card_path(run) -> str | None:
    """The evaluation card's HTML file, from the promote step's card artifact metadata (None when absent)."""
    outputs = run.steps[PROMOTE_STEP].outputs
    if EVALUATION_CARD_HTML not in outputs:
        return None
    return outputs[EVALUATION_CARD_HTML][0].run_metadata.get("path")


class RegisteredVersion(BaseModel):
    """A registered version a `models:/` URI names now, and its model contract (task, classes, backbone)."""

    model_uri: str  # as given: models:/<name>@<alias> or models:/<name>/<version>
    model_name: str
    version: str
    contract: dict[str, Any]

    @property
    def pinned_uri(self) -> str:
        """models:/<name>/<version>: this version, whatever the alias points at later."""
        return f"models:/{self.model_name}/{self.version}"


def registered_version(model_uri: str) -> RegisteredVersion:
    """Resolve a `models:/` URI in the configured MLflow registry and read the version's contract.

    Raises:
        ModelReferenceError: not models:/<name>@<alias> or models:/<name>/<version>.
        RegisteredModelNotFoundError: no such model, alias or version (the message lists what exists).
        ModelContractMismatchError: the version has no model contract.
    """
    from mlflow import MlflowClient

    from components.registered_evaluation import model_contract, parse_model_reference, resolve_model_version

    reference = parse_model_reference(model_uri)
    version = str(resolve_model_version(MlflowClient(), reference).version)
    contract = model_contract(f"models:/{reference.name}/{version}")
    return RegisteredVersion(model_uri=model_uri, model_name=reference.name, version=version, contract=contract)


class EvaluationRunSummary(BaseModel):
    """What `cxr evaluate` prints and writes with --summary-json: the version, the data, each source's assessment."""

    run_name: str
    model_uri: str  # as given
    model_name: str
    version: str  # the version evaluated (an alias resolved when the run started)
    dataset_version: str
    decision: str  # the decision rule recorded on the version at registration, described
    summary: str | None = None  # the card's one-line summary (warns when these are the training data)
    assessments: list[Assessment]  # one per source, "external:<source>"
    evaluation_card: str | None  # the card's HTML file
    evaluation_card_json: str | None
    card_mlflow_uri: str | None  # also the version's tag evaluated_on.<dataset_version>
    mlflow_run_id: str | None
    steward_report: str | None
    experiment: str


def run_evaluation(
    config: RunConfig, model_uri: str, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> EvaluationRunSummary:
    """Evaluate a registered version (`models:/<name>@<alias>` or `models:/<name>/<version>`) on the data of
    `config` through the data steps with purpose "evaluation" (pipelines/evaluation.py). The reference and the
    model's task are checked before anything runs; a blocked data drop raises ManifestValidationError after
    its steward report has been written."""
    from components.registered_evaluation import check_model_contract

    registered = registered_version(model_uri)
    check_model_contract(registered.contract, registered.pinned_uri, config.task, list(config.class_names))
    _prepare(config, paths, project_root)
    from pipelines.evaluation import evaluation_pipeline

    pipeline_run = _run_pipeline(
        evaluation_pipeline, config, paths, project_root, zenml_overlays, model_uri=registered.model_uri
    )
    return collect_evaluation(pipeline_run.id, model_uri)


def collect_evaluation(pipeline_run_id, model_uri: str) -> EvaluationRunSummary:
    """The card and its files from a finished evaluation run."""
    from zenml.client import Client

    from steps.names import EVALUATE_REGISTERED_STEP, EVALUATION_CARD

    run = Client().get_pipeline_run(pipeline_run_id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    outputs = run.steps[EVALUATE_REGISTERED_STEP].outputs
    card = outputs[EVALUATION_CARD][0].load()
    files = outputs[EVALUATION_CARD_HTML][0].run_metadata
    return EvaluationRunSummary(
        run_name=run.name,
        model_uri=model_uri,
        model_name=card.model_name,
        version=str(card.model_version),
        dataset_version=card.dataset_version,
        summary=card.decision_summary,
        decision=card.decision.describe(),
        assessments=card.assessments,
        evaluation_card=files.get("path"),
        evaluation_card_json=files.get("json"),
        card_mlflow_uri=files.get("mlflow"),
        mlflow_run_id=files.get("mlflow_run_id"),
        steward_report=steward_outputs(pipeline_run_id).reports_folder,
        experiment=EVALUATION_EXPERIMENT_NAME,
    )


def run_batch_inference(
    config: RunConfig, model_uri: str, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> Any:
    """Score the data of `config` with the registered version `model_uri` names (pipelines/batch_inference.py).

    Returns:
        The run's components.batch.BatchSummary.

    Raises:
        BatchDriftError: a blocking input drift stopped the run before predictions were written (it carries the
            summary and the report's path).
    """
    _prepare(config, paths, project_root)
    from pipelines.batch_inference import batch_inference_pipeline

    pipeline_run = _run_pipeline(
        batch_inference_pipeline, config, paths, project_root, zenml_overlays, model_uri=model_uri
    )
    from zenml.client import Client

    from steps.names import BATCH_SUMMARY, PREDICT_BATCH_STEP

    run = Client().get_pipeline_run(pipeline_run.id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    return run.steps[PREDICT_BATCH_STEP].outputs[BATCH_SUMMARY][0].load()


class AblationRunSummary(AblationSummary):
    """What `cxr ablation` prints and writes with --summary-json: the table and where it is logged."""

    run_name: str
    markdown: str
    csv: str
    experiment: str


def run_ablation(
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    backbone: str | None = None,
    task: Task | None = None,
    zenml_overlays: list[str] = (),
) -> AblationRunSummary:
    """The paper's ablation (Table 4) for one backbone (the config's first, or `backbone`) and
    task (the config's, or `task`): four variants on one split, one table. Nothing is registered."""
    config = ablation_config(config, backbone=backbone, task=task)  # ConfigError before anything runs
    _prepare(config, paths, project_root)
    from pipelines.ablation import PIPELINE_NAME, ablation_pipeline

    train_steps = [train_step_id(variant.key) for variant in VARIANTS]
    pipeline_run = _run_pipeline(ablation_pipeline, config, paths, project_root, zenml_overlays, train_steps)
    return collect_ablation(pipeline_run.id, PIPELINE_NAME)


def collect_ablation(pipeline_run_id, experiment: str) -> AblationRunSummary:
    """The ablation table (Markdown, CSV) and its rows from a finished ablation run."""
    from zenml.client import Client

    run = Client().get_pipeline_run(pipeline_run_id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    outputs = run.steps[ABLATION_REPORT_STEP].outputs
    summary = outputs[ABLATION_SUMMARY][0].load()
    return AblationRunSummary(
        **summary.model_dump(),
        run_name=run.name,
        markdown=str(outputs[ABLATION_TABLE][0].load()),
        csv=str(outputs[ABLATION_CSV][0].load()),
        experiment=experiment,
    )


class ReproductionSummary(BaseModel):
    """What `cxr reproduce` prints and writes with --summary-json: Tables 3 and 4, their files and runs."""

    name: str
    tasks: list[Task]
    tables: ReproductionTables
    markdown: str
    files: ReproductionFiles
    training_runs: dict[str, str]  # task -> ZenML run name of the training pipeline
    registered_models: dict[str, str]  # task -> the registered model name (the config's, suffixed with the task)
    ablation_runs: dict[str, str]  # task -> ZenML run name of the ablation pipeline (empty with ablation off)
    published_available: bool  # whether the published-figures file gives any figure
    mlflow_run_id: str
    experiment: str


def run_reproduction(
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    tasks: Sequence[Task] = ("binary", "multiclass"),
    ablation: bool = True,
    zenml_overlays: list[str] = (),
    ablation_backbone: str | None = None,
    published: str | Path | None = None,
) -> ReproductionSummary:
    """The paper reproduced: per task a training run with every backbone of `config` (Table 3), then the
    ablation of one backbone (the config's first, or `ablation_backbone`; Table 4); then both tables, with
    CIs and beside the published figures (`published`, default configs/published/paper.yaml), written under
    ``<reports>/reproduce/<config name>`` and logged to an MLflow run of experiment `cxr_reproduction`.

    Each task trains into its own registered model, ``<registry.model_name>-<task>``. Every config (each
    task's, each ablation's) and the published figures are checked before anything runs.

    Raises:
        ConfigError: no task or a task twice, a config invalid for a task, an ablation that cannot run
            (weights none, augmentation off, an unknown backbone), or an invalid published-figures file.
        RuntimeError: a pipeline run ended without completing.
    """
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"reproduce: give each task once (binary, multiclass), got {tasks}")
    figures = load_published(published or project_root / PUBLISHED_FIGURES)
    configs = {task: task_config(config, task) for task in tasks}
    if ablation:
        for task, task_run_config in configs.items():
            ablation_config(task_run_config, backbone=ablation_backbone, task=task)
    evaluations, ablations, training_runs, ablation_runs = {}, {}, {}, {}
    for task, task_run_config in configs.items():
        trained = run_training(task_run_config, paths, project_root, zenml_overlays)
        training_runs[task] = trained.run_name
        evaluations[task] = collect_evaluations(trained.run_name, task_run_config)
        if ablation:
            ablated = run_ablation(
                task_run_config,
                paths,
                project_root,
                backbone=ablation_backbone,
                task=task,
                zenml_overlays=zenml_overlays,
            )
            ablation_runs[task] = ablated.run_name
            ablations[task] = ablated  # an AblationSummary (with the run's name and files)
    runs = {f"training ({task})": name for task, name in training_runs.items()}
    runs |= {f"ablation ({task})": name for task, name in ablation_runs.items()}
    tables = reproduction_tables(config.name, evaluations, ablations, config.evaluation, config.seed, figures, runs)
    files = write_reproduction(tables, paths.reports / "reproduce" / config.name)
    return ReproductionSummary(
        name=config.name,
        tasks=tasks,
        tables=tables,
        markdown=to_markdown(tables),
        files=files,
        training_runs=training_runs,
        registered_models={task: task_run_config.registry.model_name for task, task_run_config in configs.items()},
        ablation_runs=ablation_runs,
        published_available=figures.available,
        mlflow_run_id=_log_reproduction(paths, tables, files),
        experiment=REPRODUCTION_EXPERIMENT_NAME,
    )


def collect_evaluations(pipeline_run, config: RunConfig) -> list[Evaluation]:
    """Each backbone's Evaluation (the `evaluate_<Backbone>` steps) of a finished training run, in config order."""
    from zenml.client import Client

    from steps.names import EVALUATION, evaluate_step_id

    run = Client().get_pipeline_run(pipeline_run)
    return [run.steps[evaluate_step_id(b.name)].outputs[EVALUATION][0].load() for b in config.backbones]


def _log_reproduction(paths: LocalPaths, tables: ReproductionTables, files: ReproductionFiles) -> str:
    """An MLflow run (experiment cxr_reproduction) with every figure as a metric and the files as artifacts."""
    from mlflow import MlflowClient

    from cxr.stack import ensure_mlflow_experiment

    client = MlflowClient(paths.tracking_uri)
    experiment_id = ensure_mlflow_experiment(paths.tracking_uri, paths.mlflow_artifacts, REPRODUCTION_EXPERIMENT_NAME)
    tags = {"reproduction": tables.name, **{f"run.{what}": name for what, name in tables.runs.items()}}
    run_id = client.create_run(experiment_id, run_name=f"reproduce-{tables.name}", tags=tags).info.run_id
    metrics = {}
    for row in tables.table3:
        metrics[f"table3.{row.task}.{row.backbone}.test_accuracy"] = row.accuracy.point
        metrics[f"table3.{row.task}.{row.backbone}.test_f1_macro"] = row.f1.point
    for row in tables.table4:
        metrics[f"table4.{row.task}.{row.variant}.test_f1_macro"] = row.f1.point
        metrics[f"table4.{row.task}.{row.variant}.delta_f1_macro"] = row.delta.point
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, key, value)
    for path in (files.markdown, files.table3_csv, files.table4_csv, files.html, files.json_file):
        client.log_artifact(run_id, path, "reproduce")
    client.set_terminated(run_id)
    return run_id
