"""Serve before switch with the stack's real model deployer (ZenML's MLflow deployer: daemon MLflow scoring servers).

Each version here is a tiny real Keras model logged as this project's pyfunc and registered
in the session's MLflow registry; its canary is stored in its run as at registration.
"""

from __future__ import annotations

import base64

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from components import serving
from components.backbones import build_classifier
from components.config import DeploymentConfig
from components.deployment import CANARY_ARTIFACT, Canary, DeploymentError, check_canary
from tests.factories import write_noise_image

pytestmark = pytest.mark.slow

MODEL = "cxr-deploy-test"
SETTINGS = DeploymentConfig(start_timeout_s=120, latency_budget_s=60)


def experiment_id(paths) -> str:
    """This module's experiment, its artifacts in the session's work folder (not ./mlruns)."""
    from cxr.stack import ensure_mlflow_experiment

    return ensure_mlflow_experiment(paths.tracking_uri, paths.mlflow_artifacts, "cxr-deploy-test")


def register_version(paths, tmp_path, seed: int, wrong_canary: Canary | None = None) -> tuple[str, Canary]:
    """A new version of MODEL (a MobileNet with its own random weights) and its canary.

    The canary holds 3 images and the probabilities the logged pyfunc gives them in this
    process, unless `wrong_canary` is given: then that canary is stored instead (a model
    that does not reproduce its own evaluation, as a broken export would).
    """
    import keras

    keras.utils.set_random_seed(seed)
    path = tmp_path / f"model-{seed}.keras"
    model = build_classifier("MobileNet", 2, 64, alpha=0.25)
    # An untrained head answers 0.5/0.5 whatever the weights: a bias per seed makes each version its own.
    head = model.layers[-1]
    head.bias.assign(np.full(head.bias.shape, 0.3 * seed, dtype="float32"))  # binary: one sigmoid unit
    model.save(path)
    images = [write_noise_image(tmp_path / f"canary-{seed}-{i}.png", seed=i, size=(96, 96)) for i in range(3)]
    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in images]
    with mlflow.start_run(experiment_id=experiment_id(paths)):
        info = serving.log_pyfunc_model(str(path), serving.build_contract("binary", "MobileNet", 64))
        served = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({serving.IMAGE_COLUMN: encoded}))
        canary = wrong_canary or Canary(
            class_names=["non-COVID", "COVID-19"],
            uris=[str(p) for p in images],
            images=encoded,
            expected=served[["prob_non-COVID", "prob_COVID-19"]].to_numpy().tolist(),
        )
        mlflow.log_text(canary.model_dump_json(), CANARY_ARTIFACT)
    version = mlflow.register_model(info.model_uri, MODEL)
    return str(version.version), canary


def test_a_version_serves_only_after_its_canary_and_a_failed_one_leaves_the_old_one_serving(local_stack, tmp_path):
    from steps.deployment import deploy_version, deployments, load_canary, undeploy

    client = MlflowClient()
    v1, canary1 = register_version(local_stack, tmp_path, seed=1)
    # v2 stores v1's probabilities: its own weights answer otherwise, so its canary must fail.
    v2, _ = register_version(local_stack, tmp_path, seed=2, wrong_canary=canary1)
    try:
        first = deploy_version(MODEL, v1, SETTINGS, load_canary(client, MODEL, v1))
        assert first.action == "deployed"
        assert first.canary.passed
        assert first.canary.max_abs_difference <= 1e-5
        url = first.deployment.url
        assert requests.get(first.deployment.health_url, timeout=5).status_code == 200

        again = deploy_version(MODEL, v1, SETTINGS, load_canary(client, MODEL, v1))
        assert again.action == "kept"
        assert again.deployment.url == url

        with pytest.raises(DeploymentError, match=f"{MODEL} v{v2} failed its canary: probabilities differ"):
            deploy_version(MODEL, v2, SETTINGS, load_canary(client, MODEL, v2))
        serving_now = deployments(MODEL)
        assert [(d.version, d.healthy) for d in serving_now] == [(v1, True)]  # the failed server was removed
        assert check_canary(url, canary1, 1e-5, 60).passed  # and the old one still answers as before
    finally:
        removed = undeploy(MODEL)
    assert [d.version for d in removed] == [v1]
    assert deployments(MODEL) == []
    with pytest.raises(requests.RequestException):
        requests.get(first.deployment.health_url, timeout=2)


def test_a_version_without_a_canary_is_not_deployed(local_stack, tmp_path):
    from steps.deployment import load_canary

    paths = local_stack
    with mlflow.start_run(experiment_id=experiment_id(paths)):
        mlflow.log_text("{}", "evaluation/other.json")
        run_id = mlflow.active_run().info.run_id
    client = MlflowClient()
    client.create_registered_model("cxr-no-canary")
    version = client.create_model_version("cxr-no-canary", source=f"runs:/{run_id}/model", run_id=run_id)
    with pytest.raises(DeploymentError, match="has no evaluation/canary.json in its run"):
        load_canary(client, "cxr-no-canary", str(version.version))


def test_a_canary_sent_where_nothing_listens_fails_with_the_reason():
    from tests.servers import free_port

    canary = Canary(class_names=["a", "b"], uris=["x.png"], images=["AAAA"], expected=[[0.5, 0.5]])
    result = check_canary(f"http://127.0.0.1:{free_port()}/invocations", canary, 1e-5, 5, timeout_s=2)
    assert not result.passed
    assert result.detail.startswith("no answer from http://127.0.0.1:")
