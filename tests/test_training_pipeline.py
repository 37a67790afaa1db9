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
    from components.synthetic import generate_dataset
    from cxr.cli import PROJECT_ROOT
    from cxr.runner import run_training

    data_root = tmp_path_factory.mktemp("data") / "synthetic"
    # A second hospital held out as an external source: evaluated in its own column, never trained on.
    external_root = tmp_path_factory.mktemp("data") / "hospital-x"
    generate_dataset(external_root, n_patients_per_class=3, images_per_patient=1, image_size=96, seed=30)
    base = tiny_config(data_root)
    sources = [*base["data"]["sources"], {"kind": "folder", "root": str(external_root), "name": "hospital-x"}]
    # Offline expansion: the augment step writes shards (2 workers, 16 images each) into
    # the artifact store and the train step reads them back through tf.data.
    config = parse_run_config(
        tiny_config(
            data_root,
            augmentation=OFFLINE,
            data={**base["data"], "sources": sources},
            evaluation={"external_sources": ["hospital-x"], "bootstrap_resamples": 200},
        )
    )
    from steps.deployment import undeploy

    try:
        yield {"summary": run_training(config, local_stack, PROJECT_ROOT), "data_root": data_root}
    finally:
        undeploy(MODEL_NAME)  # the deploy step's model server


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

    # The pipeline's last step deployed the new champion (serve before switch: its canary passed).
    import requests

    assert summary.deployment.action == "deployed"
    assert summary.deployment.deployment.version == "1"
    assert summary.deployment.canary.passed
    assert requests.get(summary.deployment.deployment.health_url, timeout=5).status_code == 200

    docs = Path(summary.data_docs_index)
    assert docs.is_file()
    assert docs.stat().st_size > 0
    assert str(local_stack.reports) in str(docs)


def test_the_run_writes_the_evaluation_card_and_explains_itself_in_both_registries(trained, local_stack):
    import json

    from zenml.client import Client

    summary = trained["summary"]
    card = Path(summary.evaluation_card)
    assert card.name == "evaluation_card.html"
    content = json.loads(card.with_name("evaluation_card.json").read_text())
    assert [a["split"] for a in content["assessments"]] == ["test", "external:hospital-x"]
    assert "sensitivity:COVID-19" in content["assessments"][0]["intervals"]
    assert [c.name for c in summary.promotion.criteria] == ["data gate passed"]  # floors [] in this config

    client = MlflowClient(local_stack.tracking_uri)
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.tags["evaluation_card"].endswith("evaluation/evaluation_card.html")
    assert "sensitivity:COVID-19" in version.description
    assert "Intended use" in client.get_registered_model(MODEL_NAME).description
    assert [a.path for a in client.list_artifacts(summary.mlflow_run_id, "evaluation")] == [
        "evaluation/canary.json",
        "evaluation/drift_reference.json",
        "evaluation/evaluation_card.html",
        "evaluation/evaluation_card.json",
        "evaluation/evidence.json",
        "evaluation/ood_reference.json",
    ]
    assert Client().get_model_version(MODEL_NAME, "v1").stage == "production"


def test_promoters_list_show_promote_and_roll_back_from_the_cli(trained, local_stack, capsys):
    """A second version of the same model (same run, same evidence): the gate re-evaluates the real champion
    (v1, loaded from the registry, on the real test images) and finds no improvement; --force promotes it
    anyway; rollback gives v1 back. Every move is in the history."""
    import mlflow
    from zenml.client import Client

    from cxr.cli import main

    registration = trained["summary"].registration
    mlflow.register_model(registration.model_uri, MODEL_NAME)  # v2
    workdir = ["--workdir", str(local_stack.workdir)]
    model = ["--model-name", MODEL_NAME]

    assert main([*workdir, "promote", *model, "2", "--reason", "same model again"]) == 1
    out = capsys.readouterr().out
    assert "v2 -> challenger" in out
    assert "FAIL  superiority on f1_macro vs champion v1" in out
    assert main([*workdir, "promote", *model, "2", "--reason", "radiology asked", "--force"]) == 0
    assert "v2 -> champion: FORCED" in capsys.readouterr().out

    assert main([*workdir, "models", *model]) == 0
    listing = capsys.readouterr().out
    assert "v1  [-]  MobileNet" in listing
    assert "v2  [champion]" in listing
    assert main([*workdir, "models", *model, "show", "2"]) == 0
    assert "FAIL  superiority" in capsys.readouterr().out

    assert main([*workdir, "rollback", *model, "--reason", "forced one misbehaves"]) == 0
    assert "champion v2 -> v1" in capsys.readouterr().out
    assert str(MlflowClient(local_stack.tracking_uri).get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert Client().get_model_version(MODEL_NAME, "v1").stage == "production"
    assert main([*workdir, "models", *model, "history"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in history] == ["champion", "challenger", "champion", "champion"]
    assert [line.split()[6] for line in history] == ["gate", "promote", "force", "rollback"]

    assert main([*workdir, "models", *model, "show", "9"]) == 1
    assert "has no version '9'" in capsys.readouterr().err


def test_deployments_are_listed_kept_and_a_wrong_version_is_one_error_line(trained, local_stack, capsys):
    from cxr.cli import main

    workdir = ["--workdir", str(local_stack.workdir)]
    deployed = trained["summary"].deployment.deployment
    assert main([*workdir, "deployments", "--model-name", MODEL_NAME]) == 0
    listing = capsys.readouterr().out
    assert f"{MODEL_NAME} v{deployed.version}  healthy  {deployed.url}" in listing
    assert main([*workdir, "deploy", "--model-name", MODEL_NAME, "--version", deployed.version]) == 0
    assert f"{MODEL_NAME} v{deployed.version} already serves at {deployed.url}: kept" in capsys.readouterr().out
    assert main([*workdir, "deploy", "--model-name", MODEL_NAME, "--version", "99"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: registered model {MODEL_NAME!r} has no version 99"

    # Every deployed answer names its model version.
    import json

    import requests

    from steps.deployment import load_canary

    canary = load_canary(MlflowClient(local_stack.tracking_uri), MODEL_NAME, deployed.version)
    body = {"dataframe_split": {"columns": ["image"], "data": [[canary.images[0]]]}}
    answer = requests.post(
        deployed.url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.json()["predictions"][0]["model_version"] == f"{MODEL_NAME}/{deployed.version}"

    # A server that died is listed as not healthy, and `cxr deploy` starts the version again.
    import os
    import signal
    import time

    pid_file = Path(deployed.log_file).with_name("service.pid")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    for _ in range(50):  # until its port refuses
        try:
            requests.get(deployed.health_url, timeout=1)
        except requests.RequestException:
            break
        time.sleep(0.2)
    assert main([*workdir, "deployments", "--model-name", MODEL_NAME]) == 0
    assert "NOT HEALTHY" in capsys.readouterr().out
    assert main([*workdir, "deploy", "--model-name", MODEL_NAME, "--version", deployed.version]) == 0
    assert f"{MODEL_NAME} v{deployed.version} serves at" in capsys.readouterr().out
    assert main([*workdir, "deployments", "--model-name", MODEL_NAME]) == 0
    listing = capsys.readouterr().out
    assert "  healthy  " in listing
    assert "since None" not in listing


def test_a_version_failing_its_canary_is_not_deployed_and_the_champion_keeps_serving(trained, local_stack):
    """The champion's own model registered again with a canary it does not reproduce (as a broken export
    would): its server starts beside the running one, fails the canary, and is removed; v1 still answers."""
    import mlflow
    import requests

    from components.deployment import CANARY_ARTIFACT, DeploymentError, check_canary
    from steps.deployment import deploy_version, deployments, load_canary

    client = MlflowClient(local_stack.tracking_uri)
    registration = trained["summary"].registration
    settings = parse_run_config(tiny_config(trained["data_root"])).deployment
    canary = load_canary(client, MODEL_NAME, registration.version)
    broken = canary.model_copy(update={"expected": [[p + 0.01 for p in row] for row in canary.expected]})
    run = client.create_run(client.get_run(registration.mlflow_run_id).info.experiment_id)
    client.log_text(run.info.run_id, broken.model_dump_json(), CANARY_ARTIFACT)
    client.set_terminated(run.info.run_id)
    version = str(client.create_model_version(MODEL_NAME, registration.model_uri, run_id=run.info.run_id).version)
    mlflow.set_tracking_uri(local_stack.tracking_uri)

    with pytest.raises(DeploymentError, match=f"{MODEL_NAME} v{version} failed its canary: probabilities differ"):
        deploy_version(MODEL_NAME, version, settings, load_canary(client, MODEL_NAME, version))
    serving = deployments(MODEL_NAME)
    assert [(d.version, d.healthy) for d in serving] == [(registration.version, True)]
    assert check_canary(serving[0].url, canary, 1e-5, 60).passed
    assert requests.get(serving[0].health_url, timeout=5).status_code == 200


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
    import csv
    import io

    paths = _some_images(trained["data_root"])
    result = subprocess.run(
        [CXR, "--workdir", str(local_stack.workdir), "predict", "--model-name", MODEL_NAME, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A TSV table: a header, then path, label, one prob_<class> column per class and error.
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    lines = [row for row in rows if row["path"].startswith(str(paths[0].parent.parent))]
    assert len(lines) == 2
    label = lines[0]["label"]
    probabilities = {key: float(value) for key, value in lines[0].items() if key.startswith("prob_")}
    assert label in ("COVID-19", "normal", "pneumonia")
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)


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


# ---------------------------------------------------------------- cxr evaluate: the champion on a new drop


def _batch_config(sources: list[dict], **batch) -> dict:
    """A batch config as a user writes one: sources and the model's registry name; task and backbone from the model."""
    return {
        "name": "batch-test",
        "data": {"sources": sources},
        "validation": {"min_width": 64, "min_height": 64},
        "registry": {"model_name": MODEL_NAME},
        "batch": batch,
    }


def _new_drop(root: Path, seed: int, invert: bool = False) -> Path:
    """A drop of unlabelled synthetic images like the training ones (another seed), optionally inverted,
    plus a file that is not an image and an image below the minimum size."""
    import numpy as np
    from PIL import Image

    from components.synthetic import generate_dataset

    generate_dataset(root / "generated", n_patients_per_class=4, images_per_patient=1, image_size=96, seed=seed)
    drop = root / "drop"
    for index, path in enumerate(sorted((root / "generated").glob("*/*.png"))):
        pixels = np.asarray(Image.open(path).convert("L"))
        (drop / "scans").mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - pixels if invert else pixels).save(drop / "scans" / f"p{index:02d}_scan.png")
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(drop / "tiny.png")
    (drop / "notes.txt").write_text("not an image")
    return drop


def _run_batch(local_stack, config: dict, folder: Path, capsys, *options: str):
    import json

    summary_path = folder / "batch-summary.json"
    code = run_cxr(local_stack, "predict-batch", config, folder, "--summary-json", str(summary_path), *options)
    captured = capsys.readouterr()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return code, captured, summary


def test_predict_batch_scores_a_drop_like_the_training_data_and_lists_what_it_excluded(
    trained, local_stack, tmp_path, capsys
):
    import pandas as pd

    drop = _new_drop(tmp_path, seed=77)
    config = _batch_config([{"kind": "images", "root": str(drop), "name": "ward-7"}], explain=2)
    code, captured, summary = _run_batch(local_stack, config, tmp_path, capsys)
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    assert summary["input_drift"] in ("passed", "warning"), summary["input_drift_summary"]
    assert summary["scored"] == 12
    assert summary["excluded"] == {"not a PNG/JPEG file": 1, "image too small": 1}
    assert summary["seen_by_version"] == 0  # new images: none of them trained or selected the version
    assert summary["run_name"].startswith("cxr_batch_inference-")  # the ZenML run's own name

    table = pd.read_parquet(summary["predictions_parquet"])
    assert len(table) == 12
    assert set(table["model_version"]) == {f"{MODEL_NAME}/{summary['version']}"}
    assert table.filter(like="prob_").sum(axis=1).round(6).eq(1).all()
    assert (table["reference_label"] == "").all()  # an images source has no labels
    csv_table = pd.read_csv(summary["predictions_csv"])
    assert list(csv_table["uri"]) == list(table["uri"])

    report = Path(summary["report"]).read_text(encoding="utf-8")
    assert "Input drift" in report
    assert "Grad-CAM" in report
    assert "tiny.png" in report  # excluded files are listed with their reason
    assert "image too small" in report


def test_predict_batch_stops_before_predicting_an_inverted_drop(trained, local_stack, tmp_path, capsys):
    drop = _new_drop(tmp_path, seed=77, invert=True)
    sources = [{"kind": "images", "root": str(drop), "name": "ward-7"}]
    # First scored with every blocking feature set to warn: predictions are written...
    blocking = ["embedding_pc", "ood_score", "intensity_mean", "intensity_std", "intensity_skewness", "sharpness"]
    lenient = _batch_config(sources, drift={"features": {name: {"severity": "warn"} for name in blocking}})
    code, captured, summary = _run_batch(local_stack, lenient, tmp_path, capsys)
    assert code == 0, captured.out[-3000:]
    assert summary["input_drift"] == "warning"
    # ...then with the defaults: blocked, and the same folder no longer holds the earlier predictions.
    config = _batch_config(sources)
    code, captured, _ = _run_batch(local_stack, config, tmp_path, capsys)
    assert code == 1, captured.out[-3000:]
    assert captured.err.strip().splitlines()[-1].startswith("error: input drift blocked the batch on ")
    assert "Traceback" not in captured.err
    folder = Path(captured.out.split("Report:")[1].split()[0]).parent
    assert (folder / "report.html").is_file()
    assert not (folder / "predictions.csv").exists()
    assert "BLOCKED" in (folder / "report.html").read_text(encoding="utf-8")


def test_predict_batch_of_nothing_usable_is_an_error_that_lists_the_exclusions(trained, local_stack, tmp_path, capsys):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "notes.txt").write_text("not an image")
    (drop / "scan.png").write_text("not a PNG either")
    config = _batch_config([{"kind": "images", "root": str(drop), "name": "ward-7"}])
    code, captured, _ = _run_batch(local_stack, config, tmp_path, capsys)
    assert code == 1, captured.out[-3000:]
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: nothing to score: all 2 file(s) of data version ")
    assert "1 not a PNG/JPEG file" in error
    assert "1 not an image (content)" in error


def test_predict_batch_on_shared_datasets_and_s3_flags_real_images_as_drifted(
    trained, local_stack, shared_datasets, s3_env, tmp_path, capsys
):
    import shutil
    import time

    import pandas as pd

    # Ten ieee8023 radiographs uploaded to the S3 server; the Actualmed set read in its own layout, on disk.
    bucket = Path(s3_env["dir"]) / "batch-drops" / "clinic"
    bucket.mkdir(parents=True)
    for path in sorted((shared_datasets / "covid-chestxray-dataset" / "images").glob("*.jp*g"))[:10]:
        shutil.copy(path, bucket / path.name)
    time.sleep(s3_env["settle_s"])
    sources = [
        {"kind": "actualmed", "root": str(shared_datasets / "actualmed-covid-chestxray-dataset"), "name": "actualmed"},
        {"kind": "images", "root": "s3://batch-drops/clinic", "name": "clinic"},
    ]
    # The champion was trained on synthetic images: real radiographs are drifted, as a warning here.
    blocking = ["embedding_pc", "ood_score", "intensity_mean", "intensity_std", "intensity_skewness", "sharpness"]
    drift = {"features": {name: {"severity": "warn"} for name in blocking}}
    config = _batch_config(sources, drift=drift)
    code, captured, summary = _run_batch(local_stack, config, tmp_path, capsys)
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    assert summary["input_drift"] == "warning", summary["input_drift_summary"]
    table = pd.read_parquet(summary["predictions_parquet"])
    assert set(table["source"]) == {"actualmed", "clinic"}
    assert table.loc[table["source"] == "clinic", "uri"].str.startswith("s3://batch-drops/clinic/").all()
    labelled = table[table["source"] == "actualmed"]["reference_label"]
    assert set(labelled) >= {"COVID-19", "normal"}  # Actualmed's own labels travel with the predictions
    # Labelled rows get the evaluation card of the version, from the batch's own predictions.
    card = Path(summary["evaluation_card"]).with_suffix(".json")
    import json

    assessed = json.loads(card.read_text())
    assert [a["split"] for a in assessed["assessments"]] == ["external:actualmed"]


@pytest.fixture(scope="module")
def evaluation_drop(tmp_path_factory) -> dict:
    """A data config (no task, no backbones: they default to the model's) over a fresh labelled
    SYNTHETIC drop from two sources the champion never saw (other generator seeds)."""
    from components.synthetic import generate_dataset

    folder = tmp_path_factory.mktemp("evaluation-drop")
    sources = []
    for index, name in enumerate(("hospital-a", "hospital-b")):
        root = folder / name
        generate_dataset(root, n_patients_per_class=3, images_per_patient=1, image_size=64, seed=20 + index)
        sources.append({"kind": "folder", "root": str(root), "name": name, "default_view": "PA"})
    return {
        "name": "evaluate-test",
        "data": {"sources": sources},
        "validation": {"min_width": 64, "min_height": 64, "near_duplicate_max_distance": 2},
        "evaluation": {"bootstrap_resamples": 50, "card_examples": 2},
    }


def test_cxr_evaluate_assesses_the_champion_on_each_source_of_a_new_drop(
    trained, local_stack, evaluation_drop, tmp_path, capsys
):
    import json

    # Earlier tests of this module may have moved `champion`: the alias is read now, as the command does.
    client = MlflowClient(local_stack.tracking_uri)
    champion = str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    summary_path = tmp_path / "evaluation.json"
    model = f"models:/{MODEL_NAME}@{CHAMPION}"
    code = run_cxr(
        local_stack, "evaluate", evaluation_drop, tmp_path, "--model", model, "--summary-json", str(summary_path)
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"{MODEL_NAME} version {champion} ({model})" in out
    assert "external:hospital-a (9 images): sensitivity:COVID-19" in out
    assert "external:hospital-b (9 images): sensitivity:COVID-19" in out
    assert "no alias moved" in out
    summary = json.loads(summary_path.read_text())
    assert Path(summary["evaluation_card"]).is_file()
    card = json.loads(Path(summary["evaluation_card_json"]).read_text())
    assert [a["split"] for a in card["assessments"]] == ["external:hospital-a", "external:hospital-b"]
    for assessment in card["assessments"]:
        assert assessment["intervals"]["f1_macro"]["low"] is not None
    assert card["model_version"] == champion
    assert card["dataset_version"] in Path(summary["evaluation_card"]).parent.name
    assert summary["evaluation_card"] in out
    version = client.get_model_version(MODEL_NAME, champion)
    assert version.tags[f"evaluated_on.{card['dataset_version']}"] == summary["card_mlflow_uri"]
    logged = {item.path for item in client.list_artifacts(summary["mlflow_run_id"], "evaluation")}
    assert "evaluation/evaluation_card.html" in logged
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == champion  # no alias moved


@pytest.mark.parametrize(
    ("model", "code", "fragments"),
    [
        (f"models:/{MODEL_NAME}@nope", 1, ("has no alias 'nope'", "its aliases: ", "champion (version ")),
        (f"models:/{MODEL_NAME}/99", 1, ("has no version 99", "its versions: 1")),  # and any later ones
        ("models:/no-such-model@champion", 1, ("no registered model 'no-such-model'", MODEL_NAME)),
        ("runs:/x", 2, ("'runs:/x' is not a registered model version", "models:/<name>@<alias>")),
    ],
)
def test_cxr_evaluate_names_a_wrong_model_reference(trained, local_stack, tmp_path, capsys, model, code, fragments):
    config = {"data": {"sources": [{"kind": "folder", "root": str(tmp_path), "name": "any"}]}}
    assert run_cxr(local_stack, "evaluate", config, tmp_path, "--model", model) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    for fragment in fragments:
        assert fragment in errors[0]


def test_cxr_evaluate_refuses_data_of_another_task(trained, local_stack, evaluation_drop, tmp_path, capsys):
    model = f"models:/{MODEL_NAME}/1"
    assert run_cxr(local_stack, "evaluate", evaluation_drop, tmp_path, "--model", model, "--set", "task=binary") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {model} predicts task 'multiclass'")
    assert "the run config's task is 'binary'" in last


def test_cxr_evaluate_refuses_a_source_without_labels(trained, local_stack, evaluation_drop, tmp_path, capsys):
    from tests.factories import write_class_folders

    unsorted = tmp_path / "unsorted-drop"
    write_class_folders(unsorted, labels=("unsorted",), patients_per_label=3, size=64)
    config = dict(evaluation_drop)
    config["data"] = {"sources": [{"kind": "folder", "root": str(unsorted), "name": "hospital-c"}]}
    code = run_cxr(local_stack, "evaluate", config, tmp_path, "--model", f"models:/{MODEL_NAME}@{CHAMPION}")
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: evaluation data needs labelled images: source 'hospital-c'")
    assert "unknown finding 3" in last


def test_cxr_evaluate_of_a_blocked_drop_prints_the_steward_summary(
    trained, local_stack, evaluation_drop, tmp_path, capsys
):
    model = f"models:/{MODEL_NAME}@{CHAMPION}"
    code = run_cxr(
        local_stack, "evaluate", evaluation_drop, tmp_path, "--model", model, "--set", "validation.min_width=1000"
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "min_width" in out
    assert "Steward report:" in out
    assert f"{model} was not evaluated: the data gate blocked this drop." in out


def test_cxr_evaluate_leaves_out_what_the_version_trained_on_and_refuses_a_drop_of_nothing_else(
    trained, local_stack, tmp_path, capsys
):
    """The version's own data as an 'evaluation drop': its training and validation images are left out
    and listed with their reason, its test images are evaluated; a drop made only of its training images
    is refused with one error line."""
    import json
    import shutil

    images = trained["summary"].registration.evidence.images
    n_seen = sum(split in ("train", "val") for split in images.split)
    n_test = images.split.count("test")
    data_root = trained["data_root"]
    own = {
        "name": "own-data",
        "data": {"sources": [{"kind": "folder", "root": str(data_root), "name": "synthetic", "default_view": "PA"}]},
        "validation": {"min_width": 64, "min_height": 64, "near_duplicate_max_distance": 2},
        "evaluation": {"bootstrap_resamples": 50, "card_examples": 2},
    }
    summary_path = tmp_path / "own.json"
    model = f"models:/{MODEL_NAME}/1"
    assert run_cxr(local_stack, "evaluate", own, tmp_path, "--model", model, "--summary-json", str(summary_path)) == 0
    capsys.readouterr()
    card = json.loads(Path(json.loads(summary_path.read_text())["evaluation_card_json"]).read_text())
    assert len(card["left_out"]) == n_seen
    assert {image["kind"] for image in card["left_out"]} <= {"same bytes", "same patient", "near-duplicate"}
    assert sum(sum(row) for row in card["assessments"][0]["metrics"]["confusion_matrix"]) == n_test
    assert f"{n_seen} image(s) that version 1 trained or was selected on were left out" in card["decision_summary"]

    seen_only = tmp_path / "seen-only"
    for image in card["left_out"]:
        target = seen_only / Path(image["uri"]).relative_to(data_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image["uri"], target)
    own["data"]["sources"][0]["root"] = str(seen_only)
    assert run_cxr(local_stack, "evaluate", own, tmp_path, "--model", model) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: every one of the {n_seen} images of this drop was in the training or validation data of "
            f"{MODEL_NAME} v1"
        )
    )


def test_cxr_explain_writes_the_grad_cam_of_the_champions_prediction(
    trained, local_stack, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    from cxr.cli import main

    image = _some_images(trained["data_root"], 1)[0]
    monkeypatch.chdir(tmp_path)  # the PNG's default folder
    champion = f"models:/{MODEL_NAME}@champion"
    code = main(["--workdir", str(local_stack.workdir), "explain", str(image), "--model", champion])
    out = capsys.readouterr().out
    assert code == 0
    predicted = next(line for line in out.splitlines() if line.startswith("Predicted:")).split()[1]
    assert predicted in ("COVID-19", "normal", "pneumonia")
    png = tmp_path / f"{image.stem}-gradcam.png"
    assert f"Grad-CAM:    {png}" in out
    with Image.open(png) as picture:
        assert picture.size == (128, 64)  # the 64 x 64 model input | its overlay
    other = "normal" if predicted != "normal" else "pneumonia"
    output = tmp_path / "other.png"
    options = ["--model", f"models:/{MODEL_NAME}/1", "--class", other, "--output", str(output)]
    code = main(["--workdir", str(local_stack.workdir), "explain", str(image), *options])
    assert code == 0
    assert f"(class {other}:" in capsys.readouterr().out
    assert output.is_file()


@pytest.mark.parametrize(
    ("case", "start"),
    [
        ("not an image", "error: {fake}: cannot decode image"),
        ("unknown class", f"error: --class 'no-such-class' is not a class of models:/{MODEL_NAME}/"),
        ("no such model", "error: models:/no-such-model@champion: no registered model 'no-such-model'"),
    ],
)
def test_cxr_explain_errors_are_one_line(trained, local_stack, tmp_path, capsys, case, start):
    from cxr.cli import main

    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    image = fake if case == "not an image" else _some_images(trained["data_root"], 1)[0]
    model = "models:/no-such-model@champion" if case == "no such model" else f"models:/{MODEL_NAME}@champion"
    options = ["--class", "no-such-class"] if case == "unknown class" else []
    code = main(["--workdir", str(local_stack.workdir), "explain", str(image), "--model", model, *options])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(start.format(fake=fake))
