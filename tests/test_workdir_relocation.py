"""A moved (or copied) work folder points at its own files once it is opened again.

Real stores, no mocks: the work folder's ZenML stack is created and reopened in a subprocess
(this process's ZenML is the test session's, read from ZENML_CONFIG_PATH once), and a small
pyfunc model is logged and registered in its MLflow store the way a training run does (a run of
the `cxr_training` experiment, `registered_model_name`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.relocation import MARKER_NAME, WorkdirError
from cxr.cli import main
from cxr.stack import EXPERIMENT_NAME, LocalPaths, configure_environment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "relocation-probe"

# Opens a work folder with the project's functions in a fresh process (ZenML reads its config
# folder once per process) and prints what the stack and an artifact saved there say.
OPEN_STACK = """
import json, sys
from pathlib import Path
from cxr.stack import ARTIFACT_STORE, MODEL_DEPLOYER, configure_environment, ensure_local_stack
from steps.names import EXPERIMENT_TRACKER
paths = configure_environment(sys.argv[1])
ensure_local_stack(paths, Path(sys.argv[2]))
from zenml import load_artifact, save_artifact
from zenml.client import Client
from zenml.enums import StackComponentType
if sys.argv[3] == "save":
    save_artifact({"probe": 1}, name="relocation_probe")
client = Client()
configuration = lambda name, kind: client.get_stack_component(StackComponentType(kind), name).configuration
print("RESULT " + json.dumps({
    "artifact_store": configuration(ARTIFACT_STORE, "artifact_store")["path"],
    "tracking_uri": configuration(EXPERIMENT_TRACKER, "experiment_tracker")["tracking_uri"],
    "service_path": configuration(MODEL_DEPLOYER, "model_deployer")["service_path"],
    "artifact_uri": client.get_artifact_version("relocation_probe").uri,
    "artifact": load_artifact("relocation_probe"),
}))
"""


class Doubler(mlflow.pyfunc.PythonModel):
    """The smallest registered model: its input times two."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return model_input * 2


def open_stack(workdir: Path, repository: Path, mode: str = "open") -> tuple[dict, str]:
    """Open `workdir` with configure_environment + ensure_local_stack in a new process: (result, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZENML_CONFIG_PATH", "ZENML_STORE_URL")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.update(ZENML_REPOSITORY_PATH=str(repository), ZENML_ANALYTICS_OPT_IN="false", PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", OPEN_STACK, str(workdir), str(repository), mode],
        env=env,
        cwd=repository,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(result.removeprefix("RESULT ")), done.stderr


def text_values_containing(database: Path, text: str) -> list[str]:
    """'table.column: value' for every text value of the SQLite file that contains `text`."""
    found = []
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]:
                rows = connection.execute(
                    f'SELECT "{column}" FROM "{table}" WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (text,),
                ).fetchall()
                found += [f"{table}.{column}: {value}" for (value,) in rows]
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def open_here(workdir: Path) -> tuple[LocalPaths, list[str]]:
    """configure_environment in this process; the lines cxr.stack logged."""
    records = Records()
    logger = logging.getLogger("cxr.stack")
    logger.addHandler(records)
    try:
        return configure_environment(workdir), records.messages
    finally:
        logger.removeHandler(records)


def use_registry(paths: LocalPaths, patch: pytest.MonkeyPatch) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", paths.tracking_uri)
    patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(paths.tracking_uri)


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A work folder with a ZenML stack, an artifact and a registered model, moved to another place
    (another parent, another name) and opened there: in this process, then in a fresh one."""
    root = tmp_path_factory.mktemp("relocation")
    repository = root / "repository"
    repository.mkdir()
    old, new = root / "before" / "work", root / "after" / "moved-work"
    open_stack(old, repository, mode="save")
    paths = LocalPaths(old.resolve())
    with pytest.MonkeyPatch.context() as patch:
        use_registry(paths, patch)
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_param("reports_dir", str(paths.reports))
            mlflow.pyfunc.log_model(
                name="model", python_model=Doubler(), pip_requirements=[], registered_model_name=MODEL_NAME
            )
        mlflow.set_tracking_uri(None)
    new.parent.mkdir()
    shutil.move(old, new)
    new_paths, logged = open_here(new)
    stack, stack_log = open_stack(new, repository)
    return {"old": old.resolve(), "new": new.resolve(), "paths": new_paths, "logged": logged, "stack": stack}


def test_a_registered_model_loads_from_the_new_place(moved):
    with pytest.MonkeyPatch.context() as patch:
        use_registry(moved["paths"], patch)
        try:
            model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
            predicted = model.predict(pd.DataFrame({"x": [1.0, 2.5]}))
        finally:
            mlflow.set_tracking_uri(None)
    assert predicted["x"].tolist() == [2.0, 5.0]


def test_no_value_of_the_mlflow_store_names_the_old_place(moved):
    assert text_values_containing(moved["paths"].mlflow_db, str(moved["old"])) == []


def test_the_mlflow_store_names_the_new_place(moved):
    locations = text_values_containing(moved["paths"].mlflow_db, str(moved["new"]))
    tables = {value.split(".")[0] for value in locations}
    assert {"experiments", "runs", "logged_models", "model_versions", "params"} <= tables


def test_the_zenml_stack_points_at_the_new_place(moved):
    assert moved["stack"]["artifact_store"] == str(moved["paths"].artifact_store)


def test_the_zenml_tracker_and_deployer_point_at_the_new_place(moved):
    assert moved["stack"]["tracking_uri"] == moved["paths"].tracking_uri
    assert moved["stack"]["service_path"] == str(moved["paths"].deployments)


def test_a_zenml_artifact_saved_before_the_move_loads_from_the_new_place(moved):
    assert moved["stack"]["artifact_uri"].startswith(str(moved["paths"].artifact_store) + "/")
    assert moved["stack"]["artifact"] == {"probe": 1}


def test_no_value_of_the_zenml_store_starts_with_the_old_place(moved):
    """ZenML's recorded run configurations may quote the old place inside JSON; no value starts with it."""
    old = str(moved["old"])
    values = text_values_containing(moved["paths"].zenml_db, old)
    starts = [v for v in values if v.split(": ", 1)[1].lstrip('"').removeprefix("sqlite:///").startswith(old)]
    assert starts == []


def test_no_encoded_zenml_configuration_names_the_old_place(moved):
    """ZenML stores stack component configurations as base64-encoded JSON."""
    with sqlite3.connect(moved["paths"].zenml_db) as connection:
        rows = connection.execute("SELECT name, configuration FROM stack_component").fetchall()
    configurations = {name: base64.b64decode(blob).decode() for name, blob in rows}
    assert [name for name, text in configurations.items() if str(moved["old"]) in text] == []


def test_zenml_opened_the_moved_store_and_did_not_recreate_the_old_folder(moved):
    assert not moved["old"].exists()


def test_the_move_is_logged_in_one_line(moved):
    lines = [line for line in moved["logged"] if "work folder moved" in line]
    assert len(lines) == 1
    assert f"from {moved['old']} to {moved['new']}" in lines[0]


def test_the_folder_records_its_new_place(moved):
    assert json.loads((moved["new"] / MARKER_NAME).read_text()) == {"path": str(moved["new"])}


def test_a_folder_opened_again_at_the_same_place_rewrites_nothing(moved):
    before = (sha256(moved["paths"].mlflow_db), sha256(moved["paths"].zenml_db))
    _, logged = open_here(moved["new"])
    assert logged == []
    assert (sha256(moved["paths"].mlflow_db), sha256(moved["paths"].zenml_db)) == before


def test_a_copy_points_at_its_own_files_and_the_original_keeps_its_own(moved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(moved["new"], copy)
    paths, logged = open_here(copy)
    assert len(logged) == 1
    assert text_values_containing(paths.mlflow_db, str(moved["new"]) + "/") == []
    assert text_values_containing(moved["paths"].mlflow_db, str(copy)) == []


def test_a_folder_without_a_location_record_is_placed_by_its_zenml_store_url(moved, tmp_path):
    """A folder made before `.location` existed: its ZenML config names where it was."""
    copy = tmp_path / "legacy"
    shutil.copytree(moved["new"], copy)
    (copy / MARKER_NAME).unlink()
    _, logged = open_here(copy)
    assert [line.split(":")[0] for line in logged] == [f"work folder moved from {moved['new']} to {copy}"]


def test_a_new_folder_records_its_place_and_logs_nothing(tmp_path):
    paths, logged = open_here(tmp_path / "fresh")
    assert logged == []
    assert json.loads((paths.workdir / MARKER_NAME).read_text()) == {"path": str(paths.workdir)}


def test_a_moved_folder_whose_store_cannot_be_rewritten_is_one_error_line(tmp_path, capsys):
    """The CLI ends with one line naming the folder, the old place and the file (a corrupt database here)."""
    workdir = tmp_path / "work"
    (workdir / "mlflow").mkdir(parents=True)
    (workdir / MARKER_NAME).write_text(json.dumps({"path": str(tmp_path / "elsewhere")}))
    (workdir / "mlflow" / "mlflow.db").write_text("garbage")
    original = mlflow.get_tracking_uri()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
            assert main(["--workdir", str(workdir), "models", "--model-name", "m"]) == 1
    finally:
        mlflow.set_tracking_uri(original)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"error: the work folder {workdir} was moved or copied from {tmp_path / 'elsewhere'}")
    assert "mlflow.db" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only folders")
def test_a_moved_read_only_folder_is_a_clear_error(moved, tmp_path):
    copy = tmp_path / "read-only"
    shutil.copytree(moved["new"], copy)
    for folder in [copy, *(p for p in copy.rglob("*") if p.is_dir())]:
        folder.chmod(0o555)
    try:
        with pytest.raises(WorkdirError, match="was moved or copied from .* but .*mlflow.db"):
            configure_environment(copy)
    finally:
        for folder in [copy, *(p for p in copy.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
