"""The whole training pipeline on a few dozen synthetic images, for real:
ZenML local orchestrator, Great Expectations, imgaug, Keras, MLflow registry;
then the champion served by `cxr serve` (MLflow scoring server) and `cxr predict`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import parse_run_config
from components.registry import CHAMPION
from components.training import TrainingSummary
from steps.names import SPLIT_MANIFEST, SPLIT_STEP, TRAIN_SHARDS, TRAINING_SUMMARY, train_step_id

pytestmark = pytest.mark.slow

MODEL_NAME = "cxr-pipeline-test"


def tiny_config(data_root: Path, **changes) -> dict:
    config = {
        "name": "pipeline-test",
        "task": "multiclass",
        "seed": 3,
        "data": {
            "synthetic": {
                "root": str(data_root),
                "n_patients_per_class": 6,
                "images_per_patient": 2,
                "image_size": 96,
                "seed": 1,
            },
            "sources": [{"kind": "folder", "root": str(data_root), "name": "synthetic", "default_view": "PA"}],
        },
        # Synthetic patients are drawn from one template: keep near-duplicate grouping tight.
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 5, "near_duplicate_max_distance": 2},
        "augmentation": {"preset": "paper", "copies_per_image": 1},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "training": {"epochs": 1, "batch_size": 8, "patience": 1},
        # One epoch on 24 images is near chance: the default floors would (rightly) keep it challenger.
        # This module tests the plumbing to the served champion; the gate has its own tests (test_registry).
        "registry": {"model_name": MODEL_NAME, "gate": {"floors": []}},
    }
    config.update(changes)
    return config


def run_cxr(local_stack, command: str, config: dict, folder: Path, *options: str) -> int:
    """`cxr <command> --config <config as YAML in folder> [options]` on the test stack, in-process; its exit code."""
    import yaml

    from cxr.cli import main

    path = folder / f"{command}-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["--workdir", str(local_stack.workdir), command, "--config", str(path), *options])


CXR = str(Path(sys.executable).with_name("cxr"))
OFFLINE = {"preset": "paper", "copies_per_image": 2, "mode": "offline", "workers": 2, "images_per_shard": 16}


@pytest.fixture(scope="module")
def trained(local_stack, tmp_path_factory):
    from cxr.cli import PROJECT_ROOT
    from cxr.runner import run_training

    data_root = tmp_path_factory.mktemp("data") / "synthetic"
    # Offline expansion: the augment step writes shards (2 workers, 16 images each) into
    # the artifact store and the train step reads them back through tf.data.
    config = parse_run_config(tiny_config(data_root, augmentation=OFFLINE))
    return {"summary": run_training(config, local_stack, PROJECT_ROOT), "data_root": data_root}


def test_training_pipeline_registers_a_champion(trained, local_stack):
    summary = trained["summary"]

    client = MlflowClient(local_stack.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert str(champion.version) == "1"
    assert summary.promotion.version == "1"
    assert summary.promotion.alias == CHAMPION

    run = client.get_run(summary.mlflow_run_id)
    for key in ("test_accuracy", "test_precision_macro", "test_recall_macro", "test_f1_macro"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert run.data.metrics["test_f1_macro"] == pytest.approx(summary.test_metrics.f1_macro)
    assert run.data.tags["best_backbone"] == "MobileNet"
    # Per-backbone child runs carry the epoch curves and the confusion matrix.
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    train_runs = [child for child in children if "loss" in child.data.metrics]
    assert train_runs
    assert "val_loss" in train_runs[0].data.metrics
    artifacts = {item.path for child in children for item in client.list_artifacts(child.info.run_id)}
    assert "confusion_matrix_test.png" in artifacts

    docs = Path(summary.data_docs_index)
    assert docs.is_file()
    assert docs.stat().st_size > 0
    assert str(local_stack.reports) in str(docs)


def test_offline_shards_are_written_to_the_artifact_store_and_trained_on(trained, local_stack):
    from zenml.client import Client

    from components.shards import ShardSet

    run = Client().get_pipeline_run(trained["summary"].run_name)
    originals = run.steps[SPLIT_STEP].outputs[SPLIT_MANIFEST][0].load()
    n_train = int((originals["split"] == "train").sum())
    artifact = run.steps["expand_training_data"].outputs[TRAIN_SHARDS][0]
    shards = artifact.load()
    assert isinstance(shards, ShardSet)
    assert shards.count == 3 * n_train  # originals + 2 copies each
    assert len(shards.index["shards"]) == -(-shards.count // OFFLINE["images_per_shard"])
    # In the artifact store, every shard and the index; the scratch folder is gone.
    assert Path(shards.folder) == Path(artifact.uri)
    assert Path(artifact.uri).is_relative_to(local_stack.artifact_store)
    assert sorted(path.name for path in Path(artifact.uri).iterdir()) == sorted(
        [*shards.index["shards"], "shards.json"]
    )
    assert artifact.run_metadata["digest"] == shards.digest()
    summary = run.steps[train_step_id("MobileNet")].outputs[TRAINING_SUMMARY][0].load()
    assert isinstance(summary, TrainingSummary)
    assert summary.training_data == "ShardSet"
    assert summary.train_images == shards.count


def _some_images(data_root: Path, count: int = 2) -> list[Path]:
    return sorted(data_root.rglob("*.png"))[:count]


def test_cxr_serve_answers_with_the_champion(trained, local_stack, tmp_path):
    import requests

    from components.serving import encode_image_file
    from tests.servers import free_port, stop_process_group, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [CXR, "--workdir", str(local_stack.workdir), "serve", "--model-name", MODEL_NAME, "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )
    try:
        wait_ready(process, url, log, timeout_s=120)
        images = [encode_image_file(path) for path in _some_images(trained["data_root"])]
        answer = requests.post(
            f"{url}/invocations",
            timeout=60,
            json={"dataframe_split": {"columns": ["image"], "data": [[b] for b in images]}},
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert len(rows) == 2
        for row in rows:
            probabilities = [value for key, value in row.items() if key.startswith("prob_")]
            assert len(probabilities) == 3
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
            assert row["label"] in ("COVID-19", "normal", "pneumonia")
        malformed = requests.post(
            f"{url}/invocations",
            timeout=60,
            json={"dataframe_split": {"columns": ["image"], "data": [["not base64 !!"]]}},
        )
        assert 400 <= malformed.status_code < 500
    finally:
        stop_process_group(process)


def test_cxr_predict_prints_label_and_probabilities(trained, local_stack):
    import json

    paths = _some_images(trained["data_root"])
    result = subprocess.run(
        [CXR, "--workdir", str(local_stack.workdir), "predict", "--model-name", MODEL_NAME, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(paths[0].parent.parent))]
    assert len(lines) == 2
    path, label, probabilities = lines[0].split("\t")
    assert label in ("COVID-19", "normal", "pneumonia")
    assert sum(json.loads(probabilities).values()) == pytest.approx(1.0, abs=1e-3)


def test_cxr_predict_names_a_file_it_cannot_decode(trained, local_stack, tmp_path, capsys):
    from cxr.cli import main

    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    code = main(["--workdir", str(local_stack.workdir), "predict", "--model-name", MODEL_NAME, str(fake)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 1 images could not be decoded")
    assert str(fake) in last


def test_blocking_validation_failure_stops_the_run_with_a_summary(trained, local_stack, tmp_path, capsys):
    config = tiny_config(trained["data_root"], validation={"min_images_per_class": 1000})
    del config["data"]["synthetic"]
    code = run_cxr(local_stack, "train", config, tmp_path)
    message = capsys.readouterr().err
    assert code == 1
    assert "BLOCKING FAILED" in message
    assert "min_images_per_class" in message
    assert "index.html" in message
    assert "Traceback" not in message


def test_missing_source_folder_is_named_without_a_traceback(local_stack, tmp_path, capsys):
    config = tiny_config(tmp_path / "nowhere")
    del config["data"]["synthetic"]
    code = run_cxr(local_stack, "train", config, tmp_path)
    message = capsys.readouterr().err
    assert code == 1
    assert str(tmp_path / "nowhere") in message
    assert "not a directory" in message
    assert "Traceback" not in message
