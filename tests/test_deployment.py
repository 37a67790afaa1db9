"""Deployment checks that need no model server (the serve-before-switch runs with a real trained
champion and the stack's real MLflow deployer are in tests/test_training_pipeline.py)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from components.deployment import Canary, DeploymentError, check_canary


def test_a_version_without_a_canary_is_not_deployed(local_stack):
    from cxr.stack import ensure_mlflow_experiment
    from steps.deployment import load_canary

    experiment = ensure_mlflow_experiment(local_stack.tracking_uri, local_stack.mlflow_artifacts, "cxr-deploy-test")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("{}", "evaluation/other.json")
    client = MlflowClient()
    client.create_registered_model("cxr-no-canary")
    version = client.create_model_version(
        "cxr-no-canary", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    with pytest.raises(DeploymentError, match="has no evaluation/canary.json in its run"):
        load_canary(client, "cxr-no-canary", str(version.version))


def test_a_canary_sent_where_nothing_listens_fails_with_the_reason():
    from tests.servers import free_port

    canary = Canary(class_names=["a", "b"], uris=["x.png"], images=["AAAA"], expected=[[0.5, 0.5]])
    result = check_canary(f"http://127.0.0.1:{free_port()}/invocations", canary, 1e-5, 5, timeout_s=2)
    assert not result.passed
    assert result.detail.startswith("no answer from http://127.0.0.1:")
