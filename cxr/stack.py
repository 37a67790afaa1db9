"""The local ZenML stack and the environment this project runs in.

Everything a local run writes lives below one work folder (default `.cxr/` in
the project): ZenML's config and SQLite store, ZenML's repository (`.zen`, which
records the active stack), the artifact store, the MLflow SQLite tracking/registry
database, MLflow's artifacts and the command logs. Two work folders share nothing,
so runs on different folders, one after the other or at the same time, never change
each other's stack. `configure_environment` must run before ZenML is imported,
because ZenML reads ZENML_CONFIG_PATH and ZENML_CUSTOM_SOURCE_ROOT once.

The stores record absolute paths, so a work folder remembers where it is
(`<workdir>/.location`); one found elsewhere (moved or copied) is rewritten to
point at its own files when it is opened (`open_workdir`, components.relocation),
and `ensure_local_stack` points the stack's components at it.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, field_validator

from components.relocation import (
    Relocation,
    WorkdirError,
    read_location,
    relocate,
    sqlite_rows,
    workdir_from_recorded,
)

logger = logging.getLogger(__name__)

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
# The team stack (`cxr stack up --team`, ensure_team_stack): S3 artifact store, MLflow on a tracking server.
TEAM_STACK_NAME = "cxr_team"
TEAM_ARTIFACT_STORE = "cxr_team_artifacts"
TEAM_S3_SECRET = "cxr_team_s3"  # the ZenML secret holding the artifact store's S3 key and secret
TEAM_MLFLOW_SECRET = "cxr_team_mlflow"  # the ZenML secret holding the tracking server's credentials
# The project's code: ZenML's source root (it resolves step and pipeline code from it and packages it for
# container orchestrators); ZenML would otherwise take its repository, which is each work folder's own.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# Which work folder configure_environment set this process's variables for: a `cxr` started by another
# `cxr` (or by a test session) inherits them, and replaces those that name the other work folder.
WORKDIR_VARIABLE = "CXR_WORKDIR_ENVIRONMENT"
# Variables through which ZenML pins a stack or project by id: they hold for one ZenML store only.
PINNED_ZENML_IDS = ("ZENML_ACTIVE_STACK_ID", "ZENML_ACTIVE_PROJECT_ID")


@dataclass(frozen=True)
class LocalPaths:
    workdir: Path

    @property
    def zenml_config(self) -> Path:
        return self.workdir / "zenml"

    @property
    def zenml_repository(self) -> Path:
        """ZenML's repository root: its `.zen` folder records the active stack and project of this folder."""
        return self.workdir

    @property
    def artifact_store(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def zenml_global_config(self) -> Path:
        """ZenML's global config: it records the absolute URL of ZenML's SQLite store."""
        return self.zenml_config / "config.yaml"

    @property
    def zenml_db(self) -> Path:
        """ZenML's SQLite store where ZenML puts it below ZENML_CONFIG_PATH."""
        return self.zenml_config / "local_stores" / "default_zen_store" / "zenml.db"

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

    @property
    def logs(self) -> Path:
        """One log file per command (cxr.cli): everything logged, tracebacks included."""
        return self.workdir / "logs"

    @property
    def team_stack(self) -> Path:
        """The team stack this folder runs on (TeamStackConfig, JSON); absent: the local stack."""
        return self.workdir / "team_stack.json"


def _folder_variables(paths: LocalPaths) -> dict[str, str]:
    """The variables that name the work folder's own files (what configure_environment sets for it)."""
    return {
        "ZENML_CONFIG_PATH": str(paths.zenml_config),
        "ZENML_REPOSITORY_PATH": str(paths.zenml_repository),
        "MLFLOW_TRACKING_URI": paths.tracking_uri,
    }


def _drop_other_folders_variables(paths: LocalPaths) -> None:
    """In a new process, forget the variables a parent `cxr` set for another work folder.

    A variable is dropped only when it still holds what configure_environment set for that folder
    (a value the user set differs, and is kept). ZENML_ACTIVE_STACK_ID (which the deploy step pins)
    and ZENML_ACTIVE_PROJECT_ID name ids of that folder's ZenML store: dropped with its config path.
    Once ZenML is imported it keeps the store it read, so an earlier command's variables stay.
    """
    previous = os.environ.get(WORKDIR_VARIABLE)
    if not previous or previous == str(paths.workdir) or "zenml" in sys.modules:
        return
    theirs = _folder_variables(LocalPaths(Path(previous)))
    if os.environ.get("ZENML_CONFIG_PATH") == theirs["ZENML_CONFIG_PATH"]:
        for key in PINNED_ZENML_IDS:
            os.environ.pop(key, None)
    for key, value in theirs.items():
        if os.environ.get(key) == value:
            del os.environ[key]


def configure_environment(workdir: str | Path) -> LocalPaths:
    """Point ZenML (its store and its repository) and MLflow at the work folder; analytics and telemetry off.

    Variables already set by the user (e.g. a remote ZENML_STORE_URL or MLFLOW_TRACKING_URI) are kept;
    those a parent `cxr` set for another work folder are not (`_drop_other_folders_variables`). A work
    folder that was moved or copied since it was last opened is rewritten to point at its own files
    (`open_workdir`).

    Raises:
        WorkdirError: The folder cannot be created, or it was moved and cannot be rewritten.
    """
    paths = LocalPaths(Path(workdir).resolve())
    _drop_other_folders_variables(paths)
    defaults = {
        **_folder_variables(paths),
        # ZenML resolves and packages the project's code from its source root, by default its repository.
        "ZENML_CUSTOM_SOURCE_ROOT": str(SOURCE_ROOT),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "ZENML_LOGGING_COLORS_DISABLED": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Reading a small artifact (evidence.json, a model) drew tqdm bars in the command's output.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # A tracking server that is down: MLflow's default (7 retries, backoff factor 2) waits about 250 s in
        # silence before it fails; 3 retries with factor 1 fail in about 7 s. Set them to wait longer.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "AUTOGRAPH_VERBOSITY": "0",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        if not os.environ.get(key):  # unset or empty (ZenML's MLflow tracker blanks MLFLOW_TRACKING_URI)
            os.environ[key] = value
    if "zenml" not in sys.modules:  # the variables are this folder's from here on (ZenML reads them once)
        os.environ[WORKDIR_VARIABLE] = str(paths.workdir)
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
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WorkdirError(
                f"work folder {paths.workdir}: cannot create {folder} ({error.strerror or error})"
            ) from None
    open_workdir(paths)
    return paths


def zenml_repository(paths: LocalPaths) -> Path:
    """The ZenML repository ZenML reads in this process: ZENML_REPOSITORY_PATH (the work folder's, unless the
    user set another), created when missing. Never the project's root: one `.zen` there would record one
    active stack for every work folder."""
    from zenml.client import Client

    root = Path(os.environ.get("ZENML_REPOSITORY_PATH") or paths.zenml_repository)
    if not Client.is_repository_directory(root):
        Client.initialize(root=root)
    return root


def _location_recorded_by_stores(paths: LocalPaths) -> Path | None:
    """Where a folder made before `.location` existed was: ZenML's store URL, else MLflow's experiments."""
    import yaml

    try:
        store = yaml.safe_load(paths.zenml_global_config.read_text())["store"]
        recorded = [str(store[key]) for key in ("database", "url") if store.get(key)]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        recorded = []
    zenml_db = paths.zenml_db.relative_to(paths.workdir).as_posix()
    for value in recorded:
        if found := workdir_from_recorded(value, zenml_db):
            return found
    artifacts = paths.mlflow_artifacts.relative_to(paths.workdir).as_posix()
    for name, location in sqlite_rows(paths.mlflow_db, "SELECT name, artifact_location FROM experiments"):
        if isinstance(location, str) and (found := workdir_from_recorded(location, f"{artifacts}/{name}")):
            return found
    return None


def open_workdir(paths: LocalPaths) -> Relocation | None:
    """Rewrite the paths the folder's stores record if it was moved or copied; record where it is.

    The place recorded in `<workdir>/.location` (for an older folder without one: the place its
    ZenML store URL or MLflow experiments name) is compared with the folder's; when they differ,
    MLflow's and ZenML's SQLite stores and ZenML's config.yaml are rewritten (components.relocation)
    and one line is logged. `ensure_local_stack` then checks the stack's components through ZenML.

    Returns:
        What was rewritten, or None when the folder is where it was.

    Raises:
        WorkdirError: The folder was moved and a store or the record cannot be rewritten
            (read-only folder, locked or corrupt database), or `.location` is not readable.
    """
    previous = read_location(paths.workdir)
    if previous is None:
        previous = _location_recorded_by_stores(paths)
    relocation = relocate(
        paths.workdir,
        previous,
        databases=[paths.mlflow_db, paths.zenml_db],
        yaml_files=[paths.zenml_global_config],
    )
    if relocation is not None:
        logger.warning(relocation.summary())
    return relocation


def ensure_mlflow_experiment(tracking_uri: str, artifact_root: Path, name: str = EXPERIMENT_NAME) -> str:
    """Create the experiment with an explicit artifact location (else MLflow uses ./mlruns)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=(artifact_root / name).as_uri())


def ensure_local_stack(paths: LocalPaths, project_root: Path) -> str:
    """Create (once) and activate the local stack; returns its name. Idempotent.

    The stack is activated in the work folder's own ZenML repository (`zenml_repository`), never in
    one at ``project_root`` (the project's code, ZenML's source root: SOURCE_ROOT). A work folder set up
    for the team stack (`cxr stack up --team`: `paths.team_stack` exists)
    gets that stack instead (ensure_team_stack with the recorded TeamStackConfig).
    """
    if (team := read_team_config(paths)) is not None:
        return ensure_team_stack(paths, project_root, team)
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration
    from zenml.enums import StackComponentType

    from steps.names import EXPERIMENT_TRACKER

    GlobalConfiguration().analytics_opt_in = False  # the env variable alone leaves it on
    zenml_repository(paths)
    client = Client()
    wanted = [
        (ARTIFACT_STORE, StackComponentType.ARTIFACT_STORE, "local", {"path": str(paths.artifact_store)}),
        (EXPERIMENT_TRACKER, StackComponentType.EXPERIMENT_TRACKER, "mlflow", {"tracking_uri": paths.tracking_uri}),
        (MODEL_REGISTRY, StackComponentType.MODEL_REGISTRY, "mlflow", {}),
        (MODEL_DEPLOYER, StackComponentType.MODEL_DEPLOYER, "mlflow", {"service_path": str(paths.deployments)}),
    ]
    # The stack is this folder's when ZenML's store is the folder's own (not a remote or another ZENML_CONFIG_PATH).
    own_store = GlobalConfiguration().store_configuration.url == f"sqlite:///{paths.zenml_db}"
    repointed = []
    for name, component_type, flavor, configuration in wanted:
        existing = client.list_stack_components(name=name, type=component_type)
        if not existing.total:
            client.create_stack_component(name, flavor, component_type, configuration)
            continue
        # The components must name this folder: open_workdir rewrites a moved folder's store, this is the
        # guarantee through ZenML's API (a folder whose .location was lost, a component edited by hand).
        stale = {
            key: value for key, value in configuration.items() if existing.items[0].configuration.get(key) != value
        }
        if own_store and stale:
            client.update_stack_component(name, component_type, configuration=stale)
            repointed.extend(f"{name}.{key}" for key in stale)
    if repointed:
        logger.warning(f"ZenML stack components now point at the work folder {paths.workdir}: {', '.join(repointed)}")
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


# ---------------------------------------------------------------- the team stack


class TeamStackConfig(BaseModel):
    """Where the team stack's services are: an MLflow tracking server and an S3 prefix for ZenML's artifacts.

    ``s3_endpoint_url`` is for an S3-compatible server other than AWS (MinIO, rclone, Ceph); None for AWS.
    The S3 key and secret are not recorded here: ensure_team_stack reads them from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY into a ZenML secret, or, without them, S3 uses boto's own credential chain.
    """

    tracking_uri: str
    artifact_path: str
    s3_endpoint_url: str | None = None
    region: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _remote_tracking(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"tracking_uri {value!r}: the team stack needs an MLflow tracking server (http[s]://)")
        return value.rstrip("/")

    @field_validator("artifact_path")
    @classmethod
    def _s3_path(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"artifact_path {value!r}: the team stack's artifact store is on S3 (s3://bucket/prefix)")
        return value.rstrip("/")


def read_team_config(paths: LocalPaths) -> TeamStackConfig | None:
    """The team stack recorded in the work folder, or None (the folder runs on the local stack).

    Raises:
        WorkdirError: The record exists but cannot be read or is not a TeamStackConfig.
    """
    if not paths.team_stack.is_file():
        return None
    try:
        return TeamStackConfig.model_validate_json(paths.team_stack.read_text())
    except (OSError, ValueError) as error:
        raise WorkdirError(f"{paths.team_stack}: not a team stack record ({error})") from None


def ensure_team_stack(paths: LocalPaths, project_root: Path, team: TeamStackConfig) -> str:
    """Create or update, and activate, the team stack; record it in the work folder. Idempotent.

    The stack: ZenML's local orchestrator, an S3 artifact store at ``team.artifact_path`` (ZenML's s3 flavor,
    s3fs), MLflow experiment tracker and model registry on the tracking server, and the MLflow model deployer
    (local daemons, as on the local stack). The S3 key and secret, when AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY are set, go into the ZenML secret TEAM_S3_SECRET, which the artifact store names;
    the tracking server's credentials (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or
    MLFLOW_TRACKING_TOKEN: ZenML's tracker wants one of them for a remote server) go into TEAM_MLFLOW_SECRET.
    Steps name their tracker EXPERIMENT_TRACKER, so the folder's tracker component points at the tracking
    server: keep the team stack in its own work folder. MLflow in this process points at the server too
    unless MLFLOW_TRACKING_URI names another one.

    Returns:
        TEAM_STACK_NAME.

    Raises:
        WorkdirError: No credentials for the tracking server in the environment (or both kinds).
    """
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration
    from zenml.enums import StackComponentType

    from steps.names import EXPERIMENT_TRACKER

    GlobalConfiguration().analytics_opt_in = False
    zenml_repository(paths)
    client = Client()
    artifact_store: dict = {"path": team.artifact_path}
    client_kwargs = {
        key: value for key, value in (("endpoint_url", team.s3_endpoint_url), ("region_name", team.region)) if value
    }
    if client_kwargs:
        artifact_store["client_kwargs"] = client_kwargs
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        _store_secret(client, TEAM_S3_SECRET, {"aws_access_key_id": key, "aws_secret_access_key": secret})
        artifact_store["key"] = f"{{{{{TEAM_S3_SECRET}.aws_access_key_id}}}}"
        artifact_store["secret"] = f"{{{{{TEAM_S3_SECRET}.aws_secret_access_key}}}}"
    tracker = {"tracking_uri": team.tracking_uri}
    # ZenML's MLflow tracker wants exactly one way to authenticate to a remote server: MLflow's own variables.
    credentials = {
        name: os.environ[variable]
        for name, variable in (
            ("tracking_username", "MLFLOW_TRACKING_USERNAME"),
            ("tracking_password", "MLFLOW_TRACKING_PASSWORD"),
            ("tracking_token", "MLFLOW_TRACKING_TOKEN"),
        )
        if os.environ.get(variable)
    }
    if set(credentials) not in ({"tracking_token"}, {"tracking_username", "tracking_password"}):
        raise WorkdirError(
            f"the team stack's MLflow tracking server {team.tracking_uri} needs credentials for ZenML: set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN (only one of the two)"
        )
    _store_secret(client, TEAM_MLFLOW_SECRET, credentials)
    tracker.update({name: f"{{{{{TEAM_MLFLOW_SECRET}.{name}}}}}" for name in credentials})
    wanted = [
        (TEAM_ARTIFACT_STORE, StackComponentType.ARTIFACT_STORE, "s3", artifact_store),
        (EXPERIMENT_TRACKER, StackComponentType.EXPERIMENT_TRACKER, "mlflow", tracker),
        (MODEL_REGISTRY, StackComponentType.MODEL_REGISTRY, "mlflow", {}),
        (MODEL_DEPLOYER, StackComponentType.MODEL_DEPLOYER, "mlflow", {"service_path": str(paths.deployments)}),
    ]
    for name, component_type, flavor, configuration in wanted:
        existing = client.list_stack_components(name=name, type=component_type)
        if not existing.total:
            client.create_stack_component(name, flavor, component_type, configuration)
        elif {k: v for k, v in configuration.items() if existing.items[0].configuration.get(k) != v}:
            client.update_stack_component(name, component_type, configuration=configuration)
    components = {
        StackComponentType.ORCHESTRATOR: "default",
        StackComponentType.ARTIFACT_STORE: TEAM_ARTIFACT_STORE,
        StackComponentType.EXPERIMENT_TRACKER: EXPERIMENT_TRACKER,
        StackComponentType.MODEL_REGISTRY: MODEL_REGISTRY,
        StackComponentType.MODEL_DEPLOYER: MODEL_DEPLOYER,
    }
    if not client.list_stacks(name=TEAM_STACK_NAME).total:
        client.create_stack(TEAM_STACK_NAME, components=components)
    client.activate_stack(TEAM_STACK_NAME)
    if read_team_config(paths) != team:
        paths.team_stack.write_text(team.model_dump_json(indent=2))
    if os.environ.get("MLFLOW_TRACKING_URI", "") in ("", paths.tracking_uri):
        os.environ["MLFLOW_TRACKING_URI"] = team.tracking_uri
    elif os.environ["MLFLOW_TRACKING_URI"] != team.tracking_uri:
        logger.warning(
            f"MLFLOW_TRACKING_URI is {os.environ['MLFLOW_TRACKING_URI']}; the team stack tracks to {team.tracking_uri}"
        )
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return TEAM_STACK_NAME


def _store_secret(client, name: str, values: dict[str, str]) -> None:
    """Create the ZenML secret `name` with `values`, or set them on the existing one."""
    try:
        client.get_secret(name, allow_partial_name_match=False, allow_partial_id_match=False)
    except KeyError:
        client.create_secret(name, values=values)
    else:
        client.update_secret(name, add_or_update_values=values)
