"""Everything a run writes lives under its work folder, ZenML's repository (`.zen`) included (issue 13).

Two `cxr` processes on different --workdir, one after the other and at the same time, each keep their own
ZenML stack: neither writes the project root's `.zen`, neither sees the other's stack. The processes
inherit this test session's environment as it is (its ZenML and MLflow variables name the session's
work folder): the product, not the test, keeps them apart.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr.stack import LocalPaths

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CXR = str(Path(sys.executable).with_name("cxr"))

# What a process on another work folder would print had it found this folder's stack gone from the repository.
STACK_GONE = "no longer available"


def small_config(tmp_path: Path) -> Path:
    """A data config on a small synthetic drop (generated once, shared by both work folders)."""
    root = tmp_path / "synthetic"
    config = {
        "name": "workdirs",
        "task": "multiclass",
        "data": {
            "synthetic": {"root": str(root), "n_patients_per_class": 4, "images_per_patient": 2, "image_size": 96},
            "sources": [{"kind": "folder", "root": str(root), "name": "synthetic", "default_view": "PA"}],
            "workers": 1,
        },
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 2, "near_duplicate_max_distance": 2},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(workdir: Path, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [CXR, "--workdir", str(workdir), *arguments],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def active_stack_id(workdir: Path) -> str:
    return yaml.safe_load((workdir / ".zen" / "config.yaml").read_text())["active_stack_id"]


def stack_ids(workdir: Path) -> set[str]:
    """The ids of the stacks in the work folder's own ZenML store (SQLite stores ids as hex without dashes)."""
    with sqlite3.connect(LocalPaths(workdir).zenml_db) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM stack")}


def undashed(uuid_text: str) -> str:
    return uuid_text.replace("-", "")


def root_active_stack() -> str | None:
    config = PROJECT_ROOT / ".zen" / "config.yaml"
    return yaml.safe_load(config.read_text()).get("active_stack_id") if config.is_file() else None


@pytest.mark.slow
def test_two_work_folders_keep_their_own_zenml_repository_and_stack(tmp_path):
    config = str(small_config(tmp_path))
    first, second = tmp_path / "first", tmp_path / "second"
    # At the same time: both create their store, repository and stack, and validate on it (one phase, not
    # setup then validate: the interleaving is the same, at half the cost).
    outputs = [
        finish(p) for p in [start(first, "validate", "--config", config), start(second, "validate", "--config", config)]
    ]
    for output in outputs:
        assert STACK_GONE not in output
    for workdir in (first, second):
        assert (workdir / ".zen" / "config.yaml").is_file()
        assert undashed(active_stack_id(workdir)) in stack_ids(workdir)
    assert active_stack_id(first) != active_stack_id(second)
    assert undashed(active_stack_id(first)) not in stack_ids(second)
    assert root_active_stack() not in {active_stack_id(first), active_stack_id(second)}
    for workdir in (first, second):  # each validation's report is in its own folder
        assert len(list((workdir / "reports").glob("cxr_data_validation-*/summary.json"))) == 1


SHOW_ENVIRONMENT = """
import json, os, sys
from cxr.stack import configure_environment
configure_environment(sys.argv[1])
keys = ("ZENML_CONFIG_PATH", "ZENML_REPOSITORY_PATH", "MLFLOW_TRACKING_URI", "ZENML_ACTIVE_STACK_ID",
        "ZENML_CUSTOM_SOURCE_ROOT", "CXR_WORKDIR_ENVIRONMENT")
print(json.dumps({key: os.environ.get(key) for key in keys}))
"""


def environment_of_child(workdir: Path, **variables: str) -> dict:
    """The variables configure_environment leaves in a new process started with `variables` (no ZenML import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "CXR_"))}
    env.update(variables, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", SHOW_ENVIRONMENT, str(workdir)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_child_on_another_work_folder_replaces_the_parents_folder_variables(tmp_path):
    parent, child = LocalPaths(tmp_path / "parent"), LocalPaths(tmp_path / "child")
    inherited = {
        "CXR_WORKDIR_ENVIRONMENT": str(parent.workdir),
        "ZENML_CONFIG_PATH": str(parent.zenml_config),
        "ZENML_REPOSITORY_PATH": str(parent.zenml_repository),
        "MLFLOW_TRACKING_URI": parent.tracking_uri,
        "ZENML_ACTIVE_STACK_ID": "0f0f0f0f-0000-0000-0000-000000000000",  # the deploy step's pin, parent's store
    }
    seen = environment_of_child(child.workdir, **inherited)
    assert seen["ZENML_CONFIG_PATH"] == str(child.zenml_config)
    assert seen["ZENML_REPOSITORY_PATH"] == str(child.zenml_repository)
    assert seen["MLFLOW_TRACKING_URI"] == child.tracking_uri
    assert seen["ZENML_ACTIVE_STACK_ID"] is None
    assert seen["ZENML_CUSTOM_SOURCE_ROOT"] == str(PROJECT_ROOT)
    assert seen["CXR_WORKDIR_ENVIRONMENT"] == str(child.workdir)


def test_variables_the_user_set_are_kept(tmp_path):
    parent, child = LocalPaths(tmp_path / "parent"), LocalPaths(tmp_path / "child")
    users = {
        "CXR_WORKDIR_ENVIRONMENT": str(parent.workdir),
        "MLFLOW_TRACKING_URI": "http://tracking.example:5000",
        "ZENML_REPOSITORY_PATH": str(tmp_path / "my-repository"),
    }
    seen = environment_of_child(child.workdir, **users)
    assert seen["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"
    assert seen["ZENML_REPOSITORY_PATH"] == str(tmp_path / "my-repository")
    assert seen["ZENML_CONFIG_PATH"] == str(child.zenml_config)


def test_the_same_work_folder_keeps_its_pinned_stack(tmp_path):
    folder = LocalPaths(tmp_path / "w")
    pinned = "0f0f0f0f-0000-0000-0000-000000000000"
    inherited = {
        "CXR_WORKDIR_ENVIRONMENT": str(folder.workdir),
        "ZENML_CONFIG_PATH": str(folder.zenml_config),
        "ZENML_ACTIVE_STACK_ID": pinned,
    }
    assert environment_of_child(folder.workdir, **inherited)["ZENML_ACTIVE_STACK_ID"] == pinned
