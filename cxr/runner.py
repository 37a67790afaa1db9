"""Run the training pipeline for a validated RunConfig and collect what it produced."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from components.config import RunConfig, merged_yaml_file
from cxr.stack import EXPERIMENT_NAME, LocalPaths, ensure_local_stack


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


def resolved_run(config: RunConfig) -> dict[str, Any]:
    """The run config as JSON with source roots made absolute (steps may run elsewhere)."""
    run = config.model_dump(mode="json")
    for source in run["data"]["sources"]:
        if "://" not in source["root"]:
            source["root"] = str(Path(source["root"]).resolve())
    return run


def _run_pipeline(
    pipeline: Any, config: RunConfig, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> Any:
    """Run a pipeline of this project with the merged ZenML config; returns the pipeline run."""
    zenml_config = merged_yaml_file(
        [project_root / "zenml_config.yaml", *zenml_overlays], paths.workdir / "zenml_run_config.yaml"
    )
    return pipeline.with_options(config_path=str(zenml_config))(
        run=resolved_run(config), docs_dir=str(paths.reports / "data_docs"), reports_dir=str(paths.reports)
    )


def _prepare(config: RunConfig, paths: LocalPaths, project_root: Path) -> None:
    os.environ.setdefault("ZENML_REPOSITORY_PATH", str(project_root))
    ensure_local_stack(paths, project_root)
    ensure_synthetic_dataset(config)


def run_training(
    config: RunConfig, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> dict[str, Any]:
    _prepare(config, paths, project_root)
    from pipelines.training import training_pipeline

    pipeline_run = _run_pipeline(training_pipeline, config, paths, project_root, zenml_overlays)
    return collect_summary(pipeline_run.id, config)


def run_validation(
    config: RunConfig, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> dict[str, Any]:
    """Ingest + validate + split + steward report, no training. A blocked data drop
    raises ManifestValidationError after its report has been written."""
    _prepare(config, paths, project_root)
    from pipelines.data import data_validation_pipeline

    pipeline_run = _run_pipeline(data_validation_pipeline, config, paths, project_root, zenml_overlays)
    return steward_outputs(pipeline_run.id)


def latest_run_id(pipeline_name: str) -> Any:
    from zenml.client import Client

    runs = Client().list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", size=1)
    return runs.items[0].id if runs.items else None


def steward_outputs(pipeline_run_id) -> dict[str, Any]:
    """The steward's summary and where its files are, from a (possibly blocked) run."""
    from zenml.client import Client

    from steps.names import STEWARD_SUMMARY

    run = Client().get_pipeline_run(pipeline_run_id)
    step = run.steps.get("steward_report")
    if step is None or STEWARD_SUMMARY not in step.outputs:
        return {"run_name": run.name, "status": run.status.value, "summary": None, "reports_folder": None}
    artifact = step.outputs[STEWARD_SUMMARY][0]
    return {
        "run_name": run.name,
        "status": run.status.value,
        "summary": artifact.load(),
        "reports_folder": artifact.run_metadata.get("reports_folder"),
    }


def collect_summary(pipeline_run_id, config: RunConfig) -> dict[str, Any]:
    """Read the promotion, registration and evaluation artifacts of a finished run."""
    from zenml.client import Client

    from steps.names import DATA_DOCS_INDEX, PROMOTION, REGISTRATION

    run = Client().get_pipeline_run(pipeline_run_id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    promotion = run.steps["promote_model"].outputs[PROMOTION][0].load()
    registration = run.steps["register_best_model"].outputs[REGISTRATION][0].load()
    return {
        "run_name": run.name,
        "task": config.task,
        "backbone": registration["backbone"],
        "promotion": promotion,
        "registration": registration,
        "test_metrics": registration["test_metrics"],
        "data_docs_index": run.steps["validate_data"].outputs[DATA_DOCS_INDEX][0].load(),
        "steward_report": steward_outputs(pipeline_run_id)["reports_folder"],
        "mlflow_run_id": registration["mlflow_run_id"],
        "experiment": EXPERIMENT_NAME,
    }


def run_ablation(
    config: RunConfig,
    paths: LocalPaths,
    project_root: Path,
    backbone: str | None = None,
    task: str | None = None,
    zenml_overlays: list[str] = (),
) -> dict[str, Any]:
    """The paper's ablation (Table 4) for one backbone (the config's first, or `backbone`) and
    task (the config's, or `task`): four variants on one split, one table. Nothing is registered."""
    from components.ablation import ablation_config

    config = ablation_config(config, backbone=backbone, task=task)  # ConfigError before anything runs
    _prepare(config, paths, project_root)
    from pipelines.ablation import PIPELINE_NAME, ablation_pipeline

    pipeline_run = _run_pipeline(ablation_pipeline, config, paths, project_root, zenml_overlays)
    return collect_ablation(pipeline_run.id, PIPELINE_NAME)


def collect_ablation(pipeline_run_id, experiment: str) -> dict[str, Any]:
    """The ablation table (Markdown, CSV) and its rows from a finished ablation run."""
    from zenml.client import Client

    from steps.ablation import ABLATION_CSV, ABLATION_SUMMARY, ABLATION_TABLE

    run = Client().get_pipeline_run(pipeline_run_id)
    if run.status.value != "completed":
        raise RuntimeError(f"pipeline run {run.name} ended with status {run.status.value}")
    outputs = run.steps["ablation_report"].outputs
    summary = outputs[ABLATION_SUMMARY][0].load()
    return {
        "run_name": run.name,
        **summary,
        "markdown": str(outputs[ABLATION_TABLE][0].load()),
        "csv": str(outputs[ABLATION_CSV][0].load()),
        "experiment": experiment,
    }
