"""Registry and aliases on a real SQLite MLflow store (no mocks)."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from components import registry, serving
from components.backbones import build_classifier
from components.imaging import encode_png
from tests.servers import sqlite_mlflow

METRIC = "f1_macro"
SPLIT = registry.split_fingerprint(["sha-a", "sha-b", "sha-c"])


@pytest.mark.parametrize(
    ("candidate", "champion", "min_improvement", "min_metric", "promote", "in_reason"),
    [
        (0.70, None, 0.0, None, True, "first candidate promoted"),
        (0.70, None, 0.0, 0.80, False, "below the floor"),
        (0.80, 0.75, 0.0, None, True, "0.8000 > champion 0.7500"),
        (0.75, 0.75, 0.0, None, False, "does not exceed"),  # a tie keeps the champion
        (0.70, 0.75, 0.0, None, False, "champion kept"),
        (0.78, 0.75, 0.05, None, False, "needs > 0.8000"),
        (0.81, 0.75, 0.05, None, True, "min_improvement 0.0500: promoted"),
        (math.nan, 0.75, 0.0, None, False, "NaN"),
        (0.70, math.nan, 0.0, None, True, "no champion to compare"),
    ],
)
def test_decide_promotion(candidate, champion, min_improvement, min_metric, promote, in_reason):
    decided, reason = registry.decide_promotion(
        candidate, champion, min_improvement, metric_key=METRIC, min_metric=min_metric
    )
    assert decided is promote
    assert in_reason in reason


def test_split_fingerprint_ignores_order_and_duplicates():
    assert registry.split_fingerprint(["b", "a", "a"]) == registry.split_fingerprint(["a", "b"])
    assert registry.split_fingerprint(["a", "b"]) != registry.split_fingerprint(["a", "c"])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """Each test registers its own model name in this module's store."""
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "registry") as store:
        yield store["experiment_id"]


@pytest.fixture(scope="module")
def keras_model_path(tmp_path_factory):
    """A real (untrained) backbone from the backbone registry, as small as it gets."""
    path = tmp_path_factory.mktemp("keras") / "mobilenet.keras"
    build_classifier("MobileNet", 2, 32, alpha=0.25).save(path)
    return str(path)


def register_and_promote(client: MlflowClient, uri: str, name: str, f1: float) -> registry.Promotion:
    """What the pipeline's register and promote steps do, one after the other."""
    registered = registry.register_version(uri, name, METRIC, f1, SPLIT)
    return registry.promote_version(client, name, registered.version, METRIC)


def log_candidate(experiment_id: str, keras_model_path: str, f1: float) -> str:
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric(METRIC, f1)
        info = serving.log_pyfunc_model(keras_model_path, serving.build_contract("binary", "MobileNet", 32))
    return info.model_uri


def test_champion_and_challenger_aliases(tracking, keras_model_path):
    client, name = MlflowClient(), "cxr-aliases"
    assert registry.current_champion(client, name) is None  # no registered model yet
    assert registry.champion_metric(client, name, METRIC) is None

    results = []
    for f1 in (0.70, 0.65, 0.80):
        uri = log_candidate(tracking, keras_model_path, f1)
        results.append(register_and_promote(client, uri, name, f1))

    assert [(r.version, r.alias) for r in results] == [("1", "champion"), ("2", "challenger"), ("3", "champion")]
    assert "first candidate promoted" in results[0].reason
    assert "vs champion v1" in results[1].reason
    assert "0.6500" in results[1].reason
    assert results[2].metric == pytest.approx(0.80)

    champion = registry.current_champion(client, name)
    assert str(champion.version) == "3"
    assert registry.champion_metric(client, name, METRIC) == pytest.approx(0.80)
    versions = {v: client.get_model_version(name, v) for v in ("1", "2", "3")}
    assert versions["1"].aliases == []  # the old champion keeps its version, loses the alias
    assert versions["2"].aliases == ["challenger"]
    assert versions["2"].tags[registry.TAG_REASON] == results[1].reason
    assert versions["3"].tags[registry.TAG_FINGERPRINT] == SPLIT

    # The champion alias resolves to a servable model.
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    image = serving.encode_image_bytes(encode_png(np.zeros((40, 40), dtype=np.uint8)))
    result = model.predict(pd.DataFrame({"image": [image]}))
    assert result[["prob_non-COVID", "prob_COVID-19"]].sum(axis=1).iloc[0] == pytest.approx(1.0)


def test_split_mismatch_is_reported_and_metric_falls_back_to_the_run(tracking, keras_model_path):
    client, name = MlflowClient(), "cxr-split-mismatch"
    first = register_and_promote(client, log_candidate(tracking, keras_model_path, 0.70), name, 0.70)
    assert first.alias == "champion"

    # A version registered by log_model itself, tagged afterwards, on another test split.
    with mlflow.start_run(experiment_id=tracking):
        mlflow.log_metric(METRIC, 0.90)
        info = serving.log_pyfunc_model(
            keras_model_path, serving.build_contract("binary", "MobileNet", 32), registered_model_name=name
        )
    version = info.registered_model_version
    client.set_model_version_tag(name, str(version), registry.TAG_FINGERPRINT, "other-split")
    result = registry.promote_version(client, name, version, METRIC, min_improvement=0.05)

    assert result.alias == "champion"
    assert result.metric == pytest.approx(0.90)  # read from the run
    assert "test splits differ" in result.reason
    assert "other-split" in result.reason
    assert client.get_model_version(name, str(version)).tags[registry.TAG_SPLIT_MISMATCH] == "true"

    again = registry.promote_version(client, name, version, METRIC)
    assert again.alias == "champion"
    assert "already holds" in again.reason
