"""The team stack on real servers on 127.0.0.1: PostgreSQL (the `pgserver` wheel), an MLflow tracking
server on it whose artifacts go to S3 (`rclone serve s3`, the session's S3 server), and ZenML's S3
artifact store on the same S3 server. Registration and promotion (components.registry), the promotion
race of two processes, the whole training pipeline, and `cxr stack up --team` / `cxr stack down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import psycopg2
import pytest
from mlflow import MlflowClient

from components import registry
from components.metrics import Decision
from tests.servers import start_mlflow_server, start_postgres, stop_postgres, stop_process_group
from tests.test_registry import QUALITY_TAG, evidence, predictor, race_promotions

pytestmark = pytest.mark.slow

MLFLOW_BUCKET = "team-mlflow"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = start_postgres(tmp_path_factory.mktemp("postgres") / "pgdata")
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="module")
def team_mlflow(postgres, s3_server, tmp_path_factory):
    """`mlflow server` on PostgreSQL, artifacts on S3 (s3://team-mlflow/mlflow); MLflow in this process uses it."""
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    server = start_mlflow_server(postgres["uri"], f"s3://{MLFLOW_BUCKET}/mlflow", s3_server, log, workers=2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", server["url"])
            mlflow.set_tracking_uri(server["url"])
            # MLflow keeps the active experiment's id across tracking URIs: an id of the session's store
            # (set by an earlier test in this process) does not exist on the server.
            mlflow.set_experiment(experiment_id="0")
            try:
                yield {**server, "bucket_dir": Path(s3_server["dir"]) / MLFLOW_BUCKET, "postgres_uri": postgres["uri"]}
            finally:
                mlflow.set_tracking_uri(None)
                mlflow.set_experiment(experiment_id="0")  # and the server's id means nothing to the next store
    finally:
        stop_process_group(server["process"])


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def postgres_rows(uri: str, query: str, *parameters) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(uri)) as connection, connection.cursor() as cursor:
        cursor.execute(query, parameters)
        return cursor.fetchall()


# MLflow asks for type hints on `predict` (for a schema) when the class is defined and when it is logged.
TYPE_HINTS_WARNING = ".*Add type hints to the `predict` method"

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=TYPE_HINTS_WARNING)

    class Halves(mlflow.pyfunc.PythonModel):
        """A stand-in model: 0.5 for each class of each row."""

        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"prob_a": [0.5] * len(model_input), "prob_b": [0.5] * len(model_input)})


def log_version(client: MlflowClient, name: str, quality: float) -> str:
    """A run that logs its evidence and a (stand-in) model through the server, registered with register_version."""
    with mlflow.start_run() as run:
        mlflow.log_text(evidence(quality).model_dump_json(), registry.EVIDENCE_ARTIFACT)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TYPE_HINTS_WARNING)
            info = mlflow.pyfunc.log_model(name="model", python_model=Halves(), pip_requirements=[])
    version = registry.register_version(
        info.model_uri,
        name,
        backbone="MobileNet",
        decision=Decision(rule="argmax"),
        metric_key="f1_macro",
        metric_value=quality,
        test_fingerprint="fingerprint",
        dataset_version="dataset",
    )
    assert version.run_id == run.info.run_id
    client.set_model_version_tag(name, version.version, QUALITY_TAG, str(quality))
    return str(version.version)


def test_versions_are_registered_and_promoted_through_the_tracking_server(team_mlflow):
    client, name = MlflowClient(), "team-registered"
    first = registry.promote_with_gate(client, name, log_version(client, name, 0.8), evidence(0.8), predictor)
    assert first.alias == registry.CHAMPION
    worse = registry.promote_with_gate(client, name, log_version(client, name, 0.7), evidence(0.7), predictor)
    assert worse.alias == registry.CHALLENGER
    assert worse.champion_version == "1"
    assert [(e.alias, e.version) for e in registry.promotion_history(client, name)] == [
        ("champion", "1"),
        ("challenger", "2"),
    ]
    # The aliases are rows of the server's PostgreSQL database.
    rows = postgres_rows(
        team_mlflow["postgres_uri"],
        "SELECT alias, version FROM registered_model_aliases WHERE name = %s ORDER BY alias",
        name,
    )
    assert rows == [("challenger", 2), ("champion", 1)]
    # The runs' artifacts (evidence, model) went through the server to the S3 server's bucket.
    stored = files_under(team_mlflow["bucket_dir"])
    assert sum(path.endswith(registry.EVIDENCE_ARTIFACT) for path in stored) == 2
    assert sum(path.endswith("/MLmodel") for path in stored) == 2
    # ... and the champion loads back from there.
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.predict(pd.DataFrame({"image": ["x", "y"]})).shape == (2, 2)


def test_concurrent_promotions_through_the_tracking_server_on_postgresql(team_mlflow):
    """test_registry's race (two processes promote v2 0.9 and v3 0.6 over champion v1 0.5 at the same
    moment), on the tracking server: the lock is a registered model created in PostgreSQL."""
    client = MlflowClient()
    names = [f"pg-race-{trial}" for trial in range(6)]
    assert race_promotions(client, team_mlflow["url"], names) == [0, 0]
    assert [str(registry.current_champion(client, name).version) for name in names] == ["2"] * len(names)
    for name in names:
        reasons = [client.get_model_version(name, v).tags[registry.TAG_REASON] for v in ("2", "3")]
        assert sum("vs champion v1" in reason for reason in reasons) == 1
    locks = postgres_rows(
        team_mlflow["postgres_uri"], "SELECT name FROM registered_models WHERE name LIKE %s", f"%{registry.LOCK_SUFFIX}"
    )
    assert locks == []


# ---------------------------------------------------------------- the CLI: its own work folder, in a subprocess

CXR = str(Path(sys.executable).with_name("cxr"))


def cli_environment(s3_server: dict | None) -> dict[str, str]:
    """This process's environment for a `cxr` subprocess with its own --workdir: no ZenML config path or
    MLflow URI of this session; the AWS variables of `s3_server` (none of the developer's AWS files)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        # ZENML_ACTIVE_STACK_ID: the deploy step pins this session's stack in its environment (steps/deployment.py).
        if not key.startswith(
            ("AWS_", "ZENML_CONFIG_PATH", "ZENML_ACTIVE_STACK_ID", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        )
    }
    environment.update(
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true"
    )
    # Its own ZenML repository: the project root's .zen records one active stack for every work folder (issue
    # 13), and the test session's other processes activate theirs there while this one runs.
    repository = Path(tempfile.mkdtemp(prefix="cxr-team-repo-"))
    (repository / ".zen").mkdir()
    environment["ZENML_REPOSITORY_PATH"] = str(repository)
    if s3_server is not None:
        environment.update(
            AWS_ACCESS_KEY_ID=s3_server["access_key"],
            AWS_SECRET_ACCESS_KEY=s3_server["secret_key"],
            AWS_ENDPOINT_URL=s3_server["endpoint"],
            AWS_DEFAULT_REGION="us-east-1",
            MLFLOW_TRACKING_TOKEN="team-test-token",  # ZenML's tracker wants credentials; the test server checks none
        )
    return environment


def run_cli(workdir: Path, *arguments: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CXR, "--workdir", str(workdir), *arguments], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cxr_stack_up_team_starts_the_servers_and_down_stops_them(tmp_path):
    workdir, env = tmp_path / "work", cli_environment(None)
    try:
        check_stack_up_and_down(workdir, env)
    finally:
        run_cli(workdir, "stack", "down", env=env)  # whatever failed: no server left running


def check_stack_up_and_down(workdir: Path, env: dict[str, str]) -> None:
    import requests

    from cxr.stack import LocalPaths
    from cxr.team import TeamFolders, free_port, postgres_pid, read_servers

    up = run_cli(
        workdir, "stack", "up", "--team", "--mlflow-port", str(free_port()), "--s3-port", str(free_port()), env=env
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ZenML stack 'cxr_team' is active" in up.stdout
    for noise in ("remaining pids", "cleaning last handle", "XDG_RUNTIME_DIR"):  # pgserver's bookkeeping
        assert noise not in up.stdout + up.stderr
    folders = TeamFolders(LocalPaths(workdir.resolve()))
    servers = read_servers(folders)
    assert requests.get(f"{servers.mlflow_url}/health", timeout=5).status_code == 200
    # MLflow's artifacts go through the server to the S3 server's folder; its database is PostgreSQL.
    client = MlflowClient(servers.mlflow_url)
    run = client.create_run("0")
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert [path for path in files_under(folders.s3_data) if path.endswith("note.txt")] != []
    assert postgres_rows(servers.postgres_uri, "SELECT count(*) FROM runs") == [(1,)]
    assert json.loads((workdir / "team_stack.json").read_text())["tracking_uri"] == servers.mlflow_url
    assert f"export MLFLOW_TRACKING_URI={servers.mlflow_url}" in folders.env_file.read_text()
    secret = re.search(r"AWS_SECRET_ACCESS_KEY=(\S+)", folders.env_file.read_text()).group(1).strip("'\"")
    (rclone,) = [record for record in servers.servers if record.name == "rclone"]
    assert secret not in Path(f"/proc/{rclone.pid}/cmdline").read_text()  # `ps` shows no S3 key

    again = run_cli(workdir, "stack", "up", "--team", env=env)  # running: found, not restarted
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_servers(folders) == servers

    down = run_cli(workdir, "stack", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped: mlflow, rclone, postgres"
    assert postgres_pid(Path(servers.pgdata)) is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{servers.mlflow_url}/health", timeout=5)


def test_cxr_stack_up_team_refuses_a_tracking_uri_without_an_artifact_path(tmp_path):
    result = run_cli(
        tmp_path / "work", "stack", "up", "--team", "--tracking-uri", "http://x", env=cli_environment(None)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: give both --tracking-uri and --artifact-path (real services), or neither (local servers)"
    )


def test_the_training_pipeline_runs_on_the_team_stack(team_mlflow, s3_server, tmp_path):
    """`cxr stack up --team` on the test's servers, then `cxr train` (offline shards): ZenML's artifacts on S3,
    the run, the model and the promotion on the MLflow server (PostgreSQL, artifacts on S3)."""
    import yaml

    from components.shards import INDEX_FILE
    from tests.test_training_pipeline import OFFLINE, tiny_config

    workdir, env, bucket, name = tmp_path / "work", cli_environment(s3_server), "team-zenml", "cxr-team-test"
    (Path(s3_server["dir"]) / bucket).mkdir(parents=True, exist_ok=True)
    up = run_cli(
        workdir,
        *("stack", "up", "--team", "--tracking-uri", team_mlflow["url"], "--artifact-path", f"s3://{bucket}/zenml"),
        *("--s3-endpoint-url", s3_server["endpoint"], "--region", "us-east-1"),
        env=env,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    config = tiny_config(
        tmp_path / "data" / "synthetic",
        augmentation=OFFLINE,
        evaluation={"bootstrap_resamples": 200},
    )
    config["registry"]["model_name"] = name
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        train = run_cli(
            workdir,
            *("train", "--config", str(tmp_path / "config.yaml"), "--summary-json", str(tmp_path / "summary.json")),
            env=env,
            timeout=1200,
        )
        assert train.returncode == 0, train.stdout[-5000:] + train.stderr[-5000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["promotion"]["alias"] == registry.CHAMPION
        # The deploy step served the champion from the tracking server (model files on S3) and its canary passed.
        import requests

        deployment = summary["deployment"]
        assert deployment["action"] == "deployed"
        assert deployment["canary"]["passed"]
        assert requests.get(deployment["deployment"]["health_url"], timeout=5).status_code == 200
    finally:
        run_cli(workdir, "undeploy", "--model-name", name, env=env)

    client = MlflowClient(team_mlflow["url"])
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "1"
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "test_f1_macro" in run.data.metrics
    rows = postgres_rows(
        team_mlflow["postgres_uri"], "SELECT alias, version FROM registered_model_aliases WHERE name = %s", name
    )
    assert rows == [("champion", 1)]
    # ZenML's artifacts, the offline shards among them, are in the S3 bucket; MLflow's model in its own.
    zenml_files = files_under(Path(s3_server["dir"]) / bucket)
    assert [path for path in zenml_files if path.endswith(INDEX_FILE)] != []
    assert [path for path in zenml_files if path.endswith(".tfrecord")] != []
    mlflow_files = files_under(team_mlflow["bucket_dir"])
    assert [path for path in mlflow_files if path.endswith(registry.EVIDENCE_ARTIFACT)] != []
