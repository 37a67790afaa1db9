"""The local ZenML stack and the environment this project runs in.

Everything a local run writes lives below one work folder (default `.cxr/` in
the project): ZenML's config and SQLite store, the artifact store, the MLflow
SQLite tracking/registry database and MLflow's artifacts. `configure_environment`
must run before ZenML is imported, because ZenML reads ZENML_CONFIG_PATH once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

STACK_NAME = "cxr_local"
ARTIFACT_STORE = "cxr_local_artifacts"
MODEL_REGISTRY = "cxr_mlflow_registry"
MODEL_DEPLOYER = "cxr_mlflow_deployer"
EXPERIMENT_NAME = "cxr_training"  # = the training pipeline's name, which ZenML uses as experiment
DATA_EXPERIMENT_NAME = "cxr_data_validation"  # = the data validation pipeline's name
ABLATION_EXPERIMENT_NAME = "cxr_ablation"  # = the ablation pipeline's name
EVALUATION_EXPERIMENT_NAME = "cxr_evaluation"  # = the evaluation pipeline's name (cxr evaluate)
BATCH_EXPERIMENT_NAME = "cxr_batch_inference"  # = the batch inference pipeline's name (cxr predict-batch)
REPRODUCTION_EXPERIMENT_NAME = "cxr_reproduction"  # cxr reproduce: the paper's Tables 3 and 4 (a run, no pipeline)


@dataclass(frozen=True)
class LocalPaths:
    workdir: Path

    @property
    def zenml_config(self) -> Path:
        return self.workdir / "zenml"

    @property
    def artifact_store(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def mlflow_db(self) -> Path:
        return self.workdir / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.workdir / "mlflow" / "artifacts"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    @property
    def deployments(self) -> Path:
        return self.workdir / "deployments"


def configure_environment(workdir: str | Path) -> LocalPaths:
    """Point ZenML and MLflow at the work folder; analytics and telemetry off.

    Variables already set by the user (e.g. a remote ZENML_STORE_URL or
    MLFLOW_TRACKING_URI) are kept.
    """
    paths = LocalPaths(Path(workdir).resolve())
    defaults = {
        "ZENML_CONFIG_PATH": str(paths.zenml_config),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "ZENML_LOGGING_COLORS_DISABLED": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Reading a small artifact (evidence.json, a model) drew tqdm bars in the command's output.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_TRACKING_URI": paths.tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "AUTOGRAPH_VERBOSITY": "0",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        if not os.environ.get(key):  # unset or empty (ZenML's MLflow tracker blanks MLFLOW_TRACKING_URI)
            os.environ[key] = value
    if "mlflow" in sys.modules:
        import mlflow

        # MLflow's own setting outranks the variable: after each step ZenML's MLflow tracker sets it to ""
        # (a second command in one process, tests or notebooks, would read ./mlruns), and an earlier
        # command may have set another work folder's. The variable (the user's, else this folder's) wins.
        if mlflow.get_tracking_uri() != os.environ["MLFLOW_TRACKING_URI"]:
            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    for folder in (
        paths.zenml_config,
        paths.artifact_store,
        paths.mlflow_db.parent,
        paths.mlflow_artifacts,
        paths.reports,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    return paths


def ensure_mlflow_experiment(tracking_uri: str, artifact_root: Path, name: str = EXPERIMENT_NAME) -> str:
    """Create the experiment with an explicit artifact location (else MLflow uses ./mlruns)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=(artifact_root / name).as_uri())


def ensure_local_stack(paths: LocalPaths, project_root: Path) -> str:
    """Create (once) and activate the local stack; returns its name. Idempotent."""
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration
    from zenml.enums import StackComponentType

    from steps.names import EXPERIMENT_TRACKER

    GlobalConfiguration().analytics_opt_in = False  # the env variable alone leaves it on
    if not Client.is_repository_directory(project_root):
        Client.initialize(root=project_root)
    client = Client()
    wanted = [
        (ARTIFACT_STORE, StackComponentType.ARTIFACT_STORE, "local", {"path": str(paths.artifact_store)}),
        (EXPERIMENT_TRACKER, StackComponentType.EXPERIMENT_TRACKER, "mlflow", {"tracking_uri": paths.tracking_uri}),
        (MODEL_REGISTRY, StackComponentType.MODEL_REGISTRY, "mlflow", {}),
        (MODEL_DEPLOYER, StackComponentType.MODEL_DEPLOYER, "mlflow", {"service_path": str(paths.deployments)}),
    ]
    for name, component_type, flavor, configuration in wanted:
        existing = client.list_stack_components(name=name, type=component_type)
        if not existing.total:
            client.create_stack_component(name, flavor, component_type, configuration)
    for experiment in (
        EXPERIMENT_NAME,
        DATA_EXPERIMENT_NAME,
        ABLATION_EXPERIMENT_NAME,
        EVALUATION_EXPERIMENT_NAME,
        BATCH_EXPERIMENT_NAME,
        REPRODUCTION_EXPERIMENT_NAME,
    ):
        ensure_mlflow_experiment(paths.tracking_uri, paths.mlflow_artifacts, experiment)
    if not client.list_stacks(name=STACK_NAME).total:
        client.create_stack(
            STACK_NAME,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: ARTIFACT_STORE,
                StackComponentType.EXPERIMENT_TRACKER: EXPERIMENT_TRACKER,
                StackComponentType.MODEL_REGISTRY: MODEL_REGISTRY,
                StackComponentType.MODEL_DEPLOYER: MODEL_DEPLOYER,
            },
        )
    client.activate_stack(STACK_NAME)
    return STACK_NAME
