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
    VARIANTS_BY_KEY,
    AblationIntervals,
    AblationSummary,
    ablation_config,
    ablation_intervals,
    ablation_plan,
    ablation_table,
    to_csv,
)
from components.assessment import PredictionsMismatchError, assess
from components.bootstrap import Difference
from components.config import ConfigError, EvaluationConfig, parse_run_config
from components.metrics import ARGMAX, Decision, Interval, classification_metrics
from steps.names import ABLATION_REPORT_STEP, DATA_GATE_STEP, REGISTER_STEP
from tests.factories import scored_predictions
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


# Nested models of known quality on the same 100 patients (2 images each): every patient a
# worse variant gets right, the better ones do too.
QUALITIES = {"full": 0.9, "no_augmentation": 0.85, "no_transfer": 0.7, "no_both": 0.5}
FEW_RESAMPLES = EvaluationConfig(bootstrap_resamples=300)


def _variant_predictions(qualities: dict[str, float] = QUALITIES) -> dict:
    return {key: scored_predictions(quality) for key, quality in qualities.items()}


def _argmax_everywhere(keys) -> dict[str, Decision]:
    return dict.fromkeys(keys, ARGMAX)


def _f1(predictions) -> float:
    y_true, probabilities = predictions.arrays()
    return classification_metrics(y_true, probabilities, predictions.class_names).f1_macro


def test_ablation_intervals_cover_each_f1_and_pair_the_differences():
    predictions = _variant_predictions()
    intervals = ablation_intervals(predictions, _argmax_everywhere(predictions), FEW_RESAMPLES, seed=7)

    assert list(intervals.f1) == VARIANT_KEYS  # the paper's order
    assert intervals.n_images == 200
    assert intervals.n_patients == 100
    assert intervals.n_resamples == 300
    for key, variant in predictions.items():
        assert intervals.f1[key].low <= _f1(variant) <= intervals.f1[key].high
        delta = intervals.delta[key]
        assert delta.point == pytest.approx(_f1(variant) - _f1(predictions["full"]))
        assert delta.low <= delta.point <= delta.high
    assert intervals.delta["full"] == Difference(point=0.0, low=0.0, high=0.0)
    # Clearly worse than the full model: the paired interval of the difference lies below 0.
    assert intervals.delta["no_both"].high < 0
    # Paired on the same resamples, nested models: ΔF1 varies less than either F1 does.
    no_transfer = intervals.f1["no_transfer"]
    delta = intervals.delta["no_transfer"]
    assert delta.high - delta.low < no_transfer.high - no_transfer.low


def test_ablation_intervals_use_the_full_models_resamples_whatever_the_row_order():
    predictions = _variant_predictions()
    decisions = _argmax_everywhere(predictions)
    intervals = ablation_intervals(predictions, decisions, FEW_RESAMPLES, seed=7)
    # The full model's F1 CI is the one its assessment (same split, config and seed) states.
    assessed = assess(predictions["full"], ARGMAX, FEW_RESAMPLES, seed=7)
    assert intervals.f1["full"] == assessed.intervals["f1_macro"]
    # A variant's rows in another order are paired by image (sha256), not by position.
    reversed_rows = predictions["no_transfer"].subset(list(range(199, -1, -1)))
    shuffled = ablation_intervals({**predictions, "no_transfer": reversed_rows}, decisions, FEW_RESAMPLES, seed=7)
    assert shuffled == intervals
    assert ablation_intervals(predictions, decisions, FEW_RESAMPLES, seed=8) != intervals


def test_ablation_intervals_keep_each_variants_decision():
    predictions = _variant_predictions({"full": 0.9, "no_both": 0.9})
    everything_covid = Decision(rule="fixed", rule_value=0.0, threshold=0.0, positive_class="COVID-19")
    intervals = ablation_intervals(predictions, {"full": ARGMAX, "no_both": everything_covid}, FEW_RESAMPLES, seed=0)
    # Same probabilities, but no_both calls every image COVID-19: F1 (macro) 1/3 on balanced classes.
    assert intervals.delta["no_both"].point == pytest.approx(1 / 3 - _f1(predictions["full"]))
    assert intervals.f1["no_both"].high == pytest.approx(1 / 3, abs=0.02)


def test_ablation_intervals_refuse_predictions_that_cannot_be_paired():
    predictions = _variant_predictions()
    decisions = _argmax_everywhere(predictions)
    with pytest.raises(ValueError, match="full model"):
        ablation_intervals({"no_both": predictions["no_both"]}, decisions, FEW_RESAMPLES, seed=0)
    with pytest.raises(ValueError, match="unknown ablation variant"):
        ablation_intervals({**predictions, "no_dropout": predictions["full"]}, decisions, FEW_RESAMPLES, seed=0)
    with pytest.raises(ValueError, match=r"no decision given for ablation variant\(s\) \['no_both'\]"):
        ablation_intervals(predictions, _argmax_everywhere(VARIANT_KEYS[:3]), FEW_RESAMPLES, seed=0)
    other_images = scored_predictions(0.7, split="other")  # keys differ: another split's images
    with pytest.raises(PredictionsMismatchError, match="200 of 200 images have no prediction"):
        ablation_intervals({**predictions, "no_transfer": other_images}, decisions, FEW_RESAMPLES, seed=0)


def _hand_made_intervals() -> AblationIntervals:
    return AblationIntervals(
        split="test",
        n_images=200,
        n_patients=100,
        confidence_level=0.95,
        n_resamples=1000,
        seed=0,
        f1={
            "full": Interval(low=0.85, high=0.95),
            "no_augmentation": Interval(low=0.75, high=0.85),
            "no_transfer": Interval(low=0.6, high=0.8),
            "no_both": Interval(low=None, high=None),
        },
        delta={
            "full": Difference(point=0.0, low=0.0, high=0.0),
            "no_augmentation": Difference(point=-0.1, low=-0.15, high=0.02),
            "no_transfer": Difference(point=-0.2, low=-0.3, high=-0.1),
            "no_both": Difference(point=-0.4, low=-0.5, high=-0.3),
        },
    )


def test_ablation_table_with_intervals_adds_the_ci_columns():
    metrics = {key: _metrics(f1) for key, f1 in zip(VARIANT_KEYS, (0.9, 0.8, 0.7, 0.5), strict=True)}
    frame, markdown = ablation_table(metrics, _hand_made_intervals())

    assert list(frame.columns) == [
        F1_COLUMN,
        "F1 95% CI low",
        "F1 95% CI high",
        DELTA_COLUMN,
        "Δ F1 95% CI low",
        "Δ F1 95% CI high",
        "Accuracy",
        "Precision (macro)",
        "Recall (macro)",
    ]
    assert frame["F1 95% CI low"].tolist()[:3] == [0.85, 0.75, 0.6]
    assert frame.loc["Without transfer learning", "Δ F1 95% CI high"] == -0.1
    assert frame.loc["Full model", DELTA_COLUMN] == 0.0
    lines = markdown.strip().splitlines()
    assert lines[0] == (
        "| Variant | F1 (macro) | F1 95% CI | Δ F1 vs full | Δ F1 95% CI | Accuracy | Precision (macro) "
        "| Recall (macro) |"
    )
    assert lines[1] == "| --- |" + " ---: |" * 7
    assert (
        lines[2] == "| Full model | 0.9000 | [0.8500, 0.9500] | 0.0000 | [0.0000, 0.0000] | 0.9100 | 0.9200 | 0.8900 |"
    )
    assert lines[3].startswith("| Without augmentation | 0.8000 | [0.7500, 0.8500] | -0.1000 | [-0.1500, +0.0200] |")
    assert lines[5].startswith("| Without both | 0.5000 | – | -0.4000 | [-0.5000, -0.3000] |")  # undefined CI
    csv_lines = to_csv(frame).splitlines()
    assert csv_lines[0] == (
        "Variant,F1 (macro),F1 95% CI low,F1 95% CI high,Δ F1 vs full,Δ F1 95% CI low,Δ F1 95% CI high,"
        "Accuracy,Precision (macro),Recall (macro)"
    )
    assert csv_lines[1] == "Full model,0.900000,0.850000,0.950000,0.000000,0.000000,0.000000,0.910000,0.920000,0.890000"
    assert csv_lines[4].startswith("Without both,0.500000,,,-0.400000,-0.500000,-0.300000,")


def test_ablation_table_with_intervals_from_real_predictions_and_a_stored_summary():
    predictions = _variant_predictions()
    intervals = ablation_intervals(predictions, _argmax_everywhere(predictions), FEW_RESAMPLES, seed=0)
    metrics = {key: {"f1_macro": _f1(variant)} for key, variant in predictions.items()}
    frame, _ = ablation_table(metrics, intervals)
    for key in VARIANT_KEYS:
        label = VARIANTS_BY_KEY[key].label
        assert frame.loc[label, "F1 95% CI low"] == intervals.f1[key].low
        assert frame.loc[label, "Δ F1 95% CI high"] == intervals.delta[key].high
        assert frame.loc[label, DELTA_COLUMN] == pytest.approx(intervals.delta[key].point)
    without_no_both = {key: value for key, value in intervals.f1.items() if key != "no_both"}
    with pytest.raises(ValueError, match=r"no entry for variant\(s\) \['no_both'\]"):
        ablation_table(metrics, intervals.model_copy(update={"f1": without_no_both}))
    # The summary artifact stores the rows as JSON: an empty metric (NaN) comes back as None.
    summary = AblationSummary(
        backbone="MobileNet",
        task="binary",
        split="test",
        n_images=200,
        rows=frame.reset_index().to_dict(orient="records"),
        mlflow_run_id=None,
    )
    loaded = AblationSummary.model_validate_json(summary.model_dump_json())
    assert loaded.rows[0]["F1 95% CI high"] == intervals.f1["full"].high
    assert loaded.rows[0]["Accuracy"] is None


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
    # With CIs (the run's evaluation config and seed); the full model's Δ is 0 in every resample.
    for row in rows.values():
        assert 0.0 <= row["F1 95% CI low"] <= row["F1 95% CI high"] <= 1.0
        assert -1.0 <= row["Δ F1 95% CI low"] <= row["Δ F1 95% CI high"] <= 1.0
    assert rows["Full model"]["Δ F1 95% CI high"] == 0.0
    assert "| F1 95% CI |" in summary["markdown"]
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
