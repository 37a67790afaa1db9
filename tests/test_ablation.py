"""The ablation (the paper's Table 4): the table builder and plan on their own, then the
whole `cxr ablation` pipeline on a few dozen synthetic images (1 epoch, MobileNet α0.25 at 64 px)."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.ablation import (
    COLUMNS,
    DELTA_COLUMN,
    F1_COLUMN,
    ablation_config,
    ablation_plan,
    ablation_table,
    to_csv,
)
from components.config import ConfigError, parse_run_config
from steps.names import ABLATION_REPORT_STEP, DATA_GATE_STEP, REGISTER_STEP
from tests.test_training_pipeline import run_cxr, tiny_config

ROWS = ["Full model", "Without augmentation", "Without transfer learning", "Without both"]
VARIANT_KEYS = ["full", "no_augmentation", "no_transfer", "no_both"]


def _metrics(f1: float) -> dict:
    return {
        "f1_macro": f1,
        "accuracy": f1 + 0.01,
        "precision_macro": f1 + 0.02,
        "recall_macro": f1 - 0.01,
        "per_class": {},
        "confusion_matrix": [[1]],
    }


def test_ablation_table_has_the_papers_rows_and_differences_from_full():
    # Given out of order: the table follows the paper's order.
    metrics = {
        "no_both": _metrics(0.5),
        "full": _metrics(0.9),
        "no_transfer": _metrics(0.7),
        "no_augmentation": _metrics(0.8),
    }
    frame, markdown = ablation_table(metrics)
    assert list(frame.index) == ROWS
    assert tuple(frame.columns) == COLUMNS
    assert frame[F1_COLUMN].tolist() == [0.9, 0.8, 0.7, 0.5]
    assert frame.loc["Full model", DELTA_COLUMN] == 0.0
    assert frame[DELTA_COLUMN].tolist()[1:] == pytest.approx([-0.1, -0.2, -0.4])
    assert frame.loc["Without both", "Accuracy"] == pytest.approx(0.51)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Variant | F1 (macro) | Δ F1 vs full | Accuracy | Precision (macro) | Recall (macro) |"
    assert lines[2] == "| Full model | 0.9000 | 0.0000 | 0.9100 | 0.9200 | 0.8900 |"
    assert lines[5].startswith("| Without both | 0.5000 | -0.4000 |")
    csv_lines = to_csv(frame).splitlines()
    assert csv_lines[0] == "Variant,F1 (macro),Δ F1 vs full,Accuracy,Precision (macro),Recall (macro)"
    assert csv_lines[1].startswith("Full model,0.900000,0.000000,")


def test_ablation_table_needs_the_full_model_and_known_variants():
    with pytest.raises(ValueError, match="full model"):
        ablation_table({"no_both": _metrics(0.5)})
    with pytest.raises(ValueError, match="unknown ablation variant"):
        ablation_table({"full": _metrics(0.5), "no_dropout": _metrics(0.4)})
    frame, markdown = ablation_table({"full": {"f1_macro": 0.6}})  # missing metrics stay empty
    assert frame.loc["Full model", F1_COLUMN] == 0.6
    assert "| – |" in markdown


def test_ablation_plan_and_config(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")
    config = parse_run_config(
        tiny_config(
            tmp_path / "data",
            backbones=[
                {"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": str(weights)},
                {"name": "Xception", "image_size": 71, "weights": "imagenet"},
            ],
        )
    )
    narrowed = ablation_config(config, task="binary")
    assert narrowed.task == "binary"
    assert [b.name for b in narrowed.backbones] == ["MobileNet"]
    assert ablation_config(config, backbone="Xception").backbones[0].name == "Xception"
    with pytest.raises(ConfigError, match="configured: MobileNet, Xception"):
        ablation_config(config, backbone="InceptionV3")
    missing = parse_run_config(
        tiny_config(
            tmp_path / "data", backbones=[{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "no.h5"}]
        )
    )
    with pytest.raises(ConfigError, match="'no.h5' for MobileNet .* does not exist"):
        ablation_config(missing)

    plan = ablation_plan(narrowed.backbones[0], narrowed.augmentation)
    assert [variant.key for variant in plan] == VARIANT_KEYS
    assert [variant.backbone.weights for variant in plan] == [str(weights), str(weights), "none", "none"]
    assert [variant.augmentation for variant in plan] == [True, False, True, False]

    scratch = parse_run_config(tiny_config(tmp_path / "data"))  # weights: none
    with pytest.raises(ConfigError, match="needs transfer weights"):
        ablation_config(scratch)
    no_augmentation = parse_run_config(
        tiny_config(
            tmp_path / "data",
            augmentation={"preset": "none", "copies_per_image": 1},
            backbones=[{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": str(weights)}],
        )
    )
    with pytest.raises(ConfigError, match="needs augmentation on"):
        ablation_config(no_augmentation)


def _backbone_weights_file(path: Path) -> Path:
    """Stand-in for ImageNet weights (nothing can be downloaded): a freshly built MobileNet's base."""
    import keras

    from components.backbones import build_classifier

    model = build_classifier("MobileNet", 3, 64, weights="none", alpha=0.25)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    base.save_weights(str(path))
    return path


@pytest.fixture
def eager_tensorflow():
    """Four MobileNets at 64 px on a few dozen images: tracing tf.functions costs more than the
    steps (measured: 1 epoch from scratch 25 s traced, 10 s eager). Same code path, run eagerly."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.mark.slow
def test_ablation_pipeline_writes_the_table(local_stack, eager_tensorflow, tmp_path, capsys):
    from zenml.client import Client
    from zenml.types import CSVString, MarkdownString

    from pipelines.ablation import PIPELINE_NAME
    from steps.ablation import ABLATION_CSV, ABLATION_TABLE

    weights = _backbone_weights_file(tmp_path / "mobilenet_0.25_64.weights.h5")
    config = tiny_config(
        tmp_path / "synthetic",
        name="ablation-test",
        backbones=[{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": str(weights)}],
        # On the fly: the augmented variants' train steps augment each epoch in 2 worker processes.
        augmentation={"preset": "paper", "copies_per_image": 1, "mode": "on_the_fly", "workers": 2},
    )
    summary_file = tmp_path / "summary.json"
    code = run_cxr(local_stack, "ablation", config, tmp_path, "--summary-json", str(summary_file))
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(summary_file.read_text())

    # The table: four rows in the paper's order, F1 in [0, 1], Δ of the full model 0.
    rows = {row["Variant"]: row for row in summary["rows"]}
    assert list(rows) == ROWS
    for row in rows.values():
        assert 0.0 <= row[F1_COLUMN] <= 1.0
        assert row[DELTA_COLUMN] == pytest.approx(row[F1_COLUMN] - rows["Full model"][F1_COLUMN])
    assert rows["Full model"][DELTA_COLUMN] == 0.0
    assert summary["backbone"] == "MobileNet"
    assert summary["task"] == "multiclass"
    for label in ROWS:
        assert f"| {label} |" in printed
        assert f"| {label} |" in summary["markdown"]

    # One pipeline run: shared data steps, two augmentations, 4 x train/evaluate, the report; no registration.
    run = Client().get_pipeline_run(summary["run_name"])
    assert run.pipeline.name == PIPELINE_NAME
    expected = {
        DATA_GATE_STEP,
        "augment_on",
        "augment_off",
        ABLATION_REPORT_STEP,
        *(f"{stage}_{key}" for stage in ("train", "evaluate") for key in VARIANT_KEYS),
    }
    assert expected <= set(run.steps)
    assert REGISTER_STEP not in run.steps
    outputs = run.steps[ABLATION_REPORT_STEP].outputs
    markdown, csv = outputs[ABLATION_TABLE][0].load(), outputs[ABLATION_CSV][0].load()
    assert isinstance(markdown, MarkdownString)
    assert isinstance(csv, CSVString)
    assert csv.splitlines()[0].startswith("Variant,F1 (macro),")
    # Both augment steps pass the originals on; the augmented variants' train steps saw
    # originals plus one fresh copy each per epoch, the others the originals only.
    on = run.steps["augment_on"].outputs["train_images"][0].load()
    off = run.steps["augment_off"].outputs["train_images"][0].load()
    assert len(on) == len(off)
    assert len(on) > 0
    trained_on = {key: run.steps[f"train_{key}"].outputs["training_summary"][0].load() for key in VARIANT_KEYS}
    assert {key: value.training_data for key, value in trained_on.items()} == {
        "full": "OnTheFlyData",
        "no_transfer": "OnTheFlyData",
        "no_augmentation": "ArrayData",
        "no_both": "ArrayData",
    }
    assert trained_on["full"].train_images == 2 * len(on)
    assert trained_on["no_both"].train_images == len(on)

    # MLflow: the pipeline's run holds the table and the F1 per variant.
    client = MlflowClient(local_stack.tracking_uri)
    mlflow_run = client.get_run(summary["mlflow_run_id"])
    assert client.get_experiment(mlflow_run.info.experiment_id).name == PIPELINE_NAME
    assert {item.path for item in client.list_artifacts(mlflow_run.info.run_id, "ablation")} == {
        "ablation/ablation.md",
        "ablation/ablation.csv",
    }
    logged = Path(client.download_artifacts(mlflow_run.info.run_id, "ablation/ablation.md", str(tmp_path)))
    assert logged.read_text() == str(markdown)
    assert mlflow_run.data.metrics["test_f1_macro_full"] == pytest.approx(rows["Full model"][F1_COLUMN])
