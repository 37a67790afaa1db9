"""Helpers for the servers and stores that tests run locally (127.0.0.1, temporary folders)."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop the server and its uvicorn worker (the whole process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    try:  # the worker may outlive the CLI: make sure nothing of the group is left
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 90) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    pytest.fail(f"server not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def sqlite_mlflow(root: Path, experiment: str):
    """A SQLite tracking/registry store with an explicit artifact location, active inside
    the block; yields {"uri", "experiment_id"}. One per test module: the schema costs seconds."""
    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield {"uri": uri, "experiment_id": mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())}
        finally:
            mlflow.set_tracking_uri(None)
