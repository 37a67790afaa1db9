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


def run_training(
    config: RunConfig, paths: LocalPaths, project_root: Path, zenml_overlays: list[str] = ()
) -> dict[str, Any]:
    os.environ.setdefault("ZENML_REPOSITORY_PATH", str(project_root))
    ensure_local_stack(paths, project_root)
    ensure_synthetic_dataset(config)
    from pipelines.training import training_pipeline

    zenml_config = merged_yaml_file(
        [project_root / "zenml_config.yaml", *zenml_overlays], paths.workdir / "zenml_run_config.yaml"
    )
    pipeline_run = training_pipeline.with_options(config_path=str(zenml_config))(
        run=resolved_run(config), docs_dir=str(paths.reports / "data_docs")
    )
    return collect_summary(pipeline_run.id, config)


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
        "mlflow_run_id": registration["mlflow_run_id"],
        "experiment": EXPERIMENT_NAME,
    }
