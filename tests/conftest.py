"""Test session setup: ZenML, MLflow and Keras point at a temporary folder.

This runs before any test module imports ZenML (which reads ZENML_CONFIG_PATH
once), so nothing a test does touches the developer's `.cxr/` state.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cxr-tests-"))

for _key in ("ZENML_CONFIG_PATH", "MLFLOW_TRACKING_URI", "ZENML_STORE_URL", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(_key, None)
os.environ["KERAS_HOME"] = str(_SESSION_DIR / "keras")  # no pre-seeded ImageNet weights in tests
# ZenML's repository (.zen): the work folder's own, set by configure_environment (never the project root's).
os.environ.pop("ZENML_REPOSITORY_PATH", None)

from cxr.stack import configure_environment  # noqa: E402  (must follow the env set-up)

SESSION_PATHS = configure_environment(_SESSION_DIR / "work")


@pytest.fixture(autouse=True)
def session_mlflow_tracking():
    """Each test starts on the session's MLflow store: ZenML's MLflow tracker blanks
    MLFLOW_TRACKING_URI after its steps, and MLflow would then fall back to ./mlruns or
    ./mlflow.db in the current folder."""
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):  # modules with their own store set it; keep theirs
        os.environ["MLFLOW_TRACKING_URI"] = SESSION_PATHS.tracking_uri
        mlflow.set_tracking_uri(SESSION_PATHS.tracking_uri)
    yield


@pytest.fixture(scope="session")
def session_paths():
    return SESSION_PATHS


@pytest.fixture(scope="session")
def local_stack(session_paths):
    """The real local stack (local orchestrator, MLflow tracker/registry/deployer) in the temp folder."""
    from cxr.stack import ensure_local_stack

    ensure_local_stack(session_paths, PROJECT_ROOT)
    return session_paths


@pytest.fixture(scope="session")
def shared_datasets():
    if not SHARED_DATASETS.exists():
        pytest.skip(f"{SHARED_DATASETS} not present")
    return SHARED_DATASETS


def pytest_sessionfinish(session, exitstatus):
    # Model servers the deployer left running (a test that failed before undeploying): stop them.
    import signal

    for pid_file in _SESSION_DIR.rglob("service.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (`rclone serve s3`) for the session: {"endpoint",
    "access_key", "secret_key", "dir", "settle_s", ...}. Top-level folders of `dir` are
    buckets; files written there directly are served after `settle_s` seconds."""
    from tests.servers import start_rclone_s3, stop_process_group

    root = tmp_path_factory.mktemp("s3-server")
    server = start_rclone_s3(root / "data", root / "rclone.log")
    try:
        yield server
    finally:
        stop_process_group(server["process"])


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path_factory):
    """The standard AWS variables point boto3 at `s3_server` (and nowhere else: no
    ~/.aws files, no profile, no instance metadata); the S3 client cache is cleared
    before and after the test."""
    from components import s3

    isolated = tmp_path_factory.mktemp("aws-config")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(isolated / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(isolated / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3.reset_client()
    yield s3_server
    s3.reset_client()
