"""The whole training pipeline on a few dozen synthetic images, for real:
ZenML local orchestrator, Great Expectations, imgaug, Keras, MLflow registry."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import parse_run_config
from components.registry import CHAMPION

pytestmark = pytest.mark.slow


def tiny_config(data_root: Path, **changes) -> dict:
    config = {
        "name": "pipeline-test",
        "task": "multiclass",
        "seed": 3,
        "data": {
            "synthetic": {"root": str(data_root), "n_patients_per_class": 6, "images_per_patient": 2,
                          "image_size": 96, "seed": 1},
            "sources": [{"kind": "folder", "root": str(data_root), "name": "synthetic", "default_view": "PA"}],
        },
        "validation": {"min_width": 64, "min_height": 64, "min_images_per_class": 5},
        "augmentation": {"preset": "paper", "copies_per_image": 1},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
        "training": {"epochs": 1, "batch_size": 8, "patience": 1},
        "registry": {"model_name": "cxr-pipeline-test"},
    }
    config.update(changes)
    return config


def test_training_pipeline_registers_a_champion(local_stack, tmp_path):
    from cxr.cli import PROJECT_ROOT
    from cxr.runner import run_training

    config = parse_run_config(tiny_config(tmp_path / "synthetic"))
    summary = run_training(config, local_stack, PROJECT_ROOT)

    client = MlflowClient(local_stack.tracking_uri)
    champion = client.get_model_version_by_alias("cxr-pipeline-test", CHAMPION)
    assert str(champion.version) == summary["promotion"]["version"] == "1"
    assert summary["promotion"]["alias"] == CHAMPION

    run = client.get_run(summary["mlflow_run_id"])
    for key in ("test_accuracy", "test_precision_macro", "test_recall_macro", "test_f1_macro"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert run.data.metrics["test_f1_macro"] == pytest.approx(summary["test_metrics"]["f1_macro"])
    assert run.data.tags["best_backbone"] == "MobileNet"
    # Per-backbone child runs carry the epoch curves and the confusion matrix.
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    train_runs = [child for child in children if "loss" in child.data.metrics]
    assert train_runs and "val_loss" in train_runs[0].data.metrics
    artifacts = {item.path for child in children for item in client.list_artifacts(child.info.run_id)}
    assert "confusion_matrix_test.png" in artifacts

    docs = Path(summary["data_docs_index"])
    assert docs.is_file() and docs.stat().st_size > 0
    assert str(local_stack.reports) in str(docs)
