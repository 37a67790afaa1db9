"""`cxr reproduce` (the paper's Tables 3 and 4 with CIs, beside its published figures): the table builders,
writers and published-figures file on tiny predictions, the card in a real browser, then the command end to
end at the smallest scale (one task, no ablation)."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.ablation import VARIANTS_BY_KEY, AblationSummary, ablation_intervals, ablation_table
from components.assessment import assess
from components.config import BackboneConfig, ConfigError, EvaluationConfig, parse_run_config
from components.evaluation import Evaluation
from components.metrics import ARGMAX, classification_metrics
from components.registry import split_fingerprint
from components.reproduce import (
    REPRODUCTION_CSV_TABLE3,
    REPRODUCTION_CSV_TABLE4,
    REPRODUCTION_HTML,
    REPRODUCTION_JSON,
    REPRODUCTION_MARKDOWN,
    Estimate,
    PublishedNumbers,
    ReproductionTables,
    load_published,
    reproduction_html,
    reproduction_tables,
    table3_frame,
    table4_frame,
    task_config,
    to_csv,
    to_markdown,
    write_reproduction,
)
from tests.factories import scored_predictions
from tests.test_training_pipeline import tiny_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEW_RESAMPLES = EvaluationConfig(bootstrap_resamples=200)
VARIANT_KEYS = ["full", "no_augmentation", "no_transfer", "no_both"]


def _evaluation(backbone: str, quality: float) -> Evaluation:
    """A backbone's Evaluation of known quality on 100 patients x 2 test images (tests.factories.scored_predictions)."""
    val, test = scored_predictions(quality, split="val"), scored_predictions(quality)

    def metrics(predictions):
        y_true, probabilities = predictions.arrays()
        return classification_metrics(
            y_true, probabilities, predictions.class_names, patient_ids=predictions.patient_ids
        )

    return Evaluation(
        backbone=BackboneConfig(name=backbone, image_size=75 if backbone != "MobileNet" else 32, weights="none"),
        test_fingerprint=split_fingerprint(test.keys),
        decision=ARGMAX,
        val=metrics(val),
        test=metrics(test),
        predictions=[val, test],
    )


def _ablation_summary(task: str, with_intervals: bool = True) -> AblationSummary:
    """The ablation's summary as the report step builds it, from nested variants of known quality."""
    qualities = dict(zip(VARIANT_KEYS, (0.9, 0.85, 0.7, 0.5), strict=True))
    predictions = {key: scored_predictions(quality) for key, quality in qualities.items()}
    intervals = ablation_intervals(predictions, dict.fromkeys(predictions, ARGMAX), FEW_RESAMPLES, seed=5)
    metrics = {}
    for key, variant in predictions.items():
        y_true, probabilities = variant.arrays()
        scored = classification_metrics(y_true, probabilities, variant.class_names)
        metrics[key] = {"f1_macro": scored.f1_macro, "accuracy": scored.accuracy}
    frame, _ = ablation_table(metrics, intervals if with_intervals else None)
    return AblationSummary(
        backbone="MobileNet",
        task=task,
        split="test",
        n_images=200,
        rows=frame.reset_index().to_dict(orient="records"),
        mlflow_run_id=None,
    )


PUBLISHED = PublishedNumbers(
    source="A. Author et al., A paper, 2020 (Tables 3 and 4)",
    table4_backbone="MobileNet",
    table3={"binary": {"MobileNet": {"accuracy": 0.97, "f1": 0.96}}},
    table4={"binary": {"no_transfer": {"f1": 0.9, "delta": -0.05}}},
)
EVALUATIONS = {"binary": [_evaluation("InceptionV3", 0.8), _evaluation("MobileNet", 0.7)]}


def _tables(**changes) -> ReproductionTables:
    arguments = {
        "name": "paper",
        "evaluations": EVALUATIONS,
        "ablations": {"binary": _ablation_summary("binary")},
        "config": FEW_RESAMPLES,
        "seed": 5,
        "published": PUBLISHED,
        "runs": {"training (binary)": "cxr_training-1"},
    }
    return reproduction_tables(**{**arguments, **changes})


def test_table3_has_each_backbones_test_accuracy_and_f1_with_the_assessments_intervals():
    tables = _tables()
    assert [(row.task, row.backbone) for row in tables.table3] == [("binary", "InceptionV3"), ("binary", "MobileNet")]
    mobilenet = tables.table3[1]
    test = EVALUATIONS["binary"][1].predictions[1]
    # The intervals are the assessment's of the test split (the run's EvaluationConfig and seed: the card's).
    assessed = assess(test, ARGMAX, FEW_RESAMPLES, seed=5)
    assert mobilenet.accuracy == Estimate.of(assessed.metrics.accuracy, assessed.intervals["accuracy"])
    assert mobilenet.f1 == Estimate.of(assessed.metrics.f1_macro, assessed.intervals["f1_macro"])
    assert mobilenet.f1.point == pytest.approx(EVALUATIONS["binary"][1].test.f1_macro)
    assert mobilenet.f1.low < mobilenet.f1.point < mobilenet.f1.high
    assert mobilenet.n_images == 200
    assert mobilenet.n_patients == 100
    assert mobilenet.decision == ARGMAX.describe()
    # Published figures where given, None elsewhere.
    assert mobilenet.published_accuracy == 0.97
    assert mobilenet.published_f1 == 0.96
    assert tables.table3[0].published_f1 is None
    assert tables.n_resamples == 200
    assert tables.seed == 5


def test_table3_refuses_an_evaluation_without_test_predictions():
    evaluation = _evaluation("MobileNet", 0.7)
    without_test = evaluation.model_copy(update={"predictions": evaluation.predictions[:1]})
    with pytest.raises(ValueError, match=r"MobileNet \(binary\) has no test predictions"):
        _tables(evaluations={"binary": [without_test]})


def test_table4_takes_the_ablations_f1_and_paired_delta_intervals():
    summary = _ablation_summary("binary")
    rows = _tables().table4
    assert [row.variant for row in rows] == VARIANT_KEYS
    for row, stored in zip(rows, summary.rows, strict=True):
        assert row.label == stored["Variant"]
        assert row.f1 == Estimate(
            point=stored["F1 (macro)"], low=stored["F1 95% CI low"], high=stored["F1 95% CI high"]
        )
        assert row.delta == Estimate(
            point=stored["Δ F1 vs full"], low=stored["Δ F1 95% CI low"], high=stored["Δ F1 95% CI high"]
        )
    assert rows[0].delta == Estimate(point=0.0, low=0.0, high=0.0)
    assert rows[3].delta.high < 0  # clearly worse than the full model
    assert rows[2].published_f1 == 0.9
    assert rows[2].published_delta == -0.05
    assert rows[1].published_f1 is None
    assert rows[0].backbone == "MobileNet"


def test_table4_of_an_ablation_without_intervals_and_of_no_ablation():
    rows = _tables(ablations={"binary": _ablation_summary("binary", with_intervals=False)}).table4
    assert rows[1].f1.point is not None
    assert rows[1].f1.low is None
    assert rows[1].delta.high is None
    assert _tables(ablations={}).table4 == []
    bad = _ablation_summary("binary").model_copy(update={"rows": [{"Variant": "Without dropout"}]})
    with pytest.raises(ValueError, match=r"unknown variant row\(s\) \['Without dropout'\]"):
        _tables(ablations={"binary": bad})


def test_markdown_shows_both_tables_with_intervals_and_published_figures():
    tables = _tables()
    markdown = to_markdown(tables)
    lines = markdown.splitlines()
    header3 = lines.index("### Table 3: accuracy and F1 per backbone and task") + 2
    assert lines[header3] == (
        "| Task | Backbone | Test images (patients) | Accuracy [95% CI] | Published accuracy "
        "| F1 (macro) [95% CI] | Published F1 |"
    )
    mobilenet = tables.table3[1]
    assert lines[header3 + 3] == (
        f"| binary | MobileNet | 200 (100) | {mobilenet.accuracy.describe()} | 0.9700 | {mobilenet.f1.describe()} "
        "| 0.9600 |"
    )
    inception = tables.table3[0]  # nothing published: "–"
    assert lines[header3 + 2] == (
        f"| binary | InceptionV3 | 200 (100) | {inception.accuracy.describe()} | – | {inception.f1.describe()} | – |"
    )
    header4 = lines.index("### Table 4: F1 and its difference from the full model per ablated feature") + 2
    assert lines[header4] == (
        "| Task | Backbone | Variant | F1 (macro) [95% CI] | Published F1 | Δ F1 vs full [95% paired CI] "
        "| Published Δ F1 |"
    )
    assert "| Full model |" in lines[header4 + 2]
    assert "| 0.0000 [0.0000, 0.0000] | – |" in lines[header4 + 2]
    assert lines[header4 + 4].endswith("| 0.9000 | " + tables.table4[2].delta.describe(signed=True) + " | -0.0500 |")
    assert "Published figures: A. Author et al., A paper, 2020 (Tables 3 and 4). The paper ablated MobileNet." in lines
    assert "200 stratified bootstrap resamples of patients" in markdown
    no_ablation = to_markdown(_tables(ablations={}, published=PublishedNumbers()))
    assert "The ablation was not run." in no_ablation
    assert "Published figures: not available (configs/published/paper.yaml gives none)" in no_ablation


def test_estimates_describe_themselves():
    assert Estimate(point=0.81234, low=0.75, high=0.875).describe() == "0.8123 [0.7500, 0.8750]"
    assert Estimate(point=-0.1, low=-0.2, high=0.05).describe(signed=True) == "-0.1000 [-0.2000, +0.0500]"
    assert Estimate(point=0.5).describe() == "0.5000"
    assert Estimate(point=None).describe() == "–"
    assert Estimate.of(float("nan"), None).point is None


def test_csv_has_one_column_per_bound_and_empty_fields_for_missing_figures():
    tables = _tables()
    table3 = to_csv(table3_frame(tables)).splitlines()
    assert table3[0] == (
        "Task,Backbone,Test images,Test patients,Decision,Accuracy,Accuracy 95% CI low,Accuracy 95% CI high,"
        "Published accuracy,F1 (macro),F1 (macro) 95% CI low,F1 (macro) 95% CI high,Published F1"
    )
    mobilenet = tables.table3[1]
    assert table3[2].startswith(f"binary,MobileNet,200,100,{ARGMAX.describe()},{mobilenet.accuracy.point:.6f},")
    assert table3[2].endswith(f",{mobilenet.f1.high:.6f},0.960000")
    assert table3[1].endswith(",")  # InceptionV3: no published F1
    table4 = to_csv(table4_frame(tables)).splitlines()
    assert table4[0] == (
        "Task,Backbone,Variant,Test images,F1 (macro),F1 (macro) 95% CI low,F1 (macro) 95% CI high,Published F1,"
        "Δ F1 vs full,Δ F1 vs full 95% CI low,Δ F1 vs full 95% CI high,Published Δ F1"
    )
    assert table4[1].startswith("binary,MobileNet,Full model,200,")
    assert table4[3].endswith(",0.900000," + ",".join(f"{v:.6f}" for v in _delta(tables, 2)) + ",-0.050000")
    assert len(table4) == 5


def _delta(tables: ReproductionTables, index: int) -> tuple[float, float, float]:
    delta = tables.table4[index].delta
    return delta.point, delta.low, delta.high


def test_reproduction_card_is_self_contained_and_escapes_every_string():
    hostile = "<script>alert(1)</script>"
    tables = _tables(
        name=f"paper {hostile}",
        published=PUBLISHED.model_copy(update={"source": f'Evil "et al" {hostile}', "note": hostile}),
        runs={"training (binary)": hostile},
    )
    page = reproduction_html(tables)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page
    assert "http://" not in page
    assert "https://" not in page
    assert "Research use only" in page
    for row in tables.table3:
        assert row.f1.describe() in page
    assert "Δ F1 vs full [95% paired CI]" in page
    assert "The ablation was not run." in reproduction_html(_tables(ablations={}))


def test_write_reproduction_writes_markdown_csv_card_and_json(tmp_path):
    tables = _tables()
    files = write_reproduction(tables, tmp_path / "reproduce" / "paper")
    folder = tmp_path / "reproduce" / "paper"
    assert Path(files.markdown) == folder / REPRODUCTION_MARKDOWN
    assert Path(files.markdown).read_text(encoding="utf-8") == to_markdown(tables)
    assert Path(files.table3_csv) == folder / REPRODUCTION_CSV_TABLE3
    assert Path(files.table4_csv) == folder / REPRODUCTION_CSV_TABLE4
    assert Path(files.table4_csv).read_text(encoding="utf-8") == to_csv(table4_frame(tables))
    assert Path(files.html) == folder / REPRODUCTION_HTML
    assert Path(files.json_file) == folder / REPRODUCTION_JSON
    assert ReproductionTables.model_validate_json(Path(files.json_file).read_text()) == tables


def test_the_committed_published_figures_load_and_are_all_null_until_filled_in():
    published = load_published(PROJECT_ROOT / "configs" / "published" / "paper.yaml")
    assert published.available is False
    assert published.source is None
    assert set(published.table3) == {"binary", "multiclass"}
    assert set(published.table3["multiclass"]) == {"InceptionV3", "Xception", "MobileNet"}
    assert set(published.table4["binary"]) == set(VARIANTS_BY_KEY)
    assert PUBLISHED.available is True


def test_published_figures_with_a_typo_or_a_percentage_are_refused(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text("table3:\n  binary:\n    Inception-V3: {accuracy: 0.9}\n")
    with pytest.raises(
        ConfigError, match=r"published\.yaml are invalid:\n  table3: .*unknown backbone\(s\) \['Inception-V3'\]"
    ):
        load_published(path)
    path.write_text("table3:\n  binary:\n    MobileNet: {accuracy: 97.3}\n")
    with pytest.raises(
        ConfigError, match=r"table3\.binary\.MobileNet\.accuracy: Input should be less than or equal to 1"
    ):
        load_published(path)
    path.write_text("table4:\n  multiclass:\n    no_dropout: {f1: 0.9}\n")
    with pytest.raises(ConfigError, match=r"unknown ablation variant\(s\) \['no_dropout'\]"):
        load_published(path)
    path.write_text("table3: {}\nfigures: 1\n")
    with pytest.raises(ConfigError, match="figures: Extra inputs are not permitted"):
        load_published(path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_published(tmp_path / "missing.yaml")


def test_task_config_suffixes_the_registered_model_with_the_task(tmp_path):
    config = parse_run_config(tiny_config(tmp_path / "data"))
    binary = task_config(config, "binary")
    assert binary.task == "binary"
    assert binary.registry.model_name == f"{config.registry.model_name}-binary"
    assert binary.class_names == ("non-COVID", "COVID-19")
    assert task_config(config, "multiclass").training == config.training


@pytest.fixture
def eager_tensorflow():
    """A tiny MobileNet on a few dozen images: tracing tf.functions costs more than the steps (see
    tests/test_ablation.py). Same code path, run eagerly."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.mark.slow
def test_reproduce_command_writes_table_3_beside_the_published_figures(local_stack, eager_tensorflow, tmp_path, capsys):
    """One task, no ablation (MobileNet α0.25 at 64 px, 1 epoch, 24 synthetic images): about 30 s. With the
    ablation, or both tasks, the smallest run costs 60-70 s here; Table 4's rows are tested above from an
    AblationSummary built by the same functions as the ablation's report step."""
    from zenml.client import Client

    from steps.names import PROMOTE_STEP, PROMOTION, REGISTER_STEP, REGISTRATION
    from tests.test_training_pipeline import MODEL_NAME, run_cxr

    config = tiny_config(tmp_path / "synthetic", name="reproduce-test", evaluation={"bootstrap_resamples": 200})
    summary_file = tmp_path / "summary.json"
    options = ("--task", "binary", "--no-ablation", "--summary-json", str(summary_file))
    code = run_cxr(local_stack, "reproduce", config, tmp_path, *options)
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(summary_file.read_text())
    tables = ReproductionTables.model_validate(summary["tables"])

    # Table 3: the backbone on the task, with CIs; the F1 is the registered model's test F1.
    assert [(row.task, row.backbone) for row in tables.table3] == [("binary", "MobileNet")]
    row = tables.table3[0]
    assert 0.0 <= row.accuracy.low <= row.accuracy.point <= row.accuracy.high <= 1.0
    assert 0.0 <= row.f1.low <= row.f1.point <= row.f1.high <= 1.0
    assert row.published_f1 is None  # configs/published/paper.yaml: all null
    run = Client().get_pipeline_run(summary["training_runs"]["binary"])
    registration = run.steps[REGISTER_STEP].outputs[REGISTRATION][0].load()
    assert registration.test_metrics.f1_macro == pytest.approx(row.f1.point)
    # The same interval as the evaluation card's test column (same split, settings and seed).
    card_test = run.steps[PROMOTE_STEP].outputs[PROMOTION][0].load().assessments["test"]
    assert Estimate.of(card_test.metrics.f1_macro, card_test.intervals["f1_macro"]) == row.f1
    # The task's own registered model.
    assert summary["registered_models"] == {"binary": f"{MODEL_NAME}-binary"}
    assert registration.model_name == f"{MODEL_NAME}-binary"
    assert tables.table4 == []
    assert summary["ablation_runs"] == {}

    # Printed, written, logged.
    assert "### Table 3: accuracy and F1 per backbone and task" in printed
    assert f"| binary | MobileNet | {row.n_images} ({row.n_patients}) | {row.accuracy.describe()} | – |" in printed
    assert "The ablation was not run." in printed
    files = summary["files"]
    assert Path(files["folder"]) == local_stack.reports / "reproduce" / "reproduce-test"
    assert files["html"] in printed
    assert Path(files["markdown"]).read_text(encoding="utf-8") == summary["markdown"]
    assert to_csv(table3_frame(tables)) == Path(files["table3_csv"]).read_text(encoding="utf-8")
    assert "<h1>Reproduction card: reproduce-test</h1>" in Path(files["html"]).read_text(encoding="utf-8")
    client = MlflowClient(local_stack.tracking_uri)
    mlflow_run = client.get_run(summary["mlflow_run_id"])
    assert client.get_experiment(mlflow_run.info.experiment_id).name == "cxr_reproduction"
    assert {item.path for item in client.list_artifacts(mlflow_run.info.run_id, "reproduce")} == {
        f"reproduce/{name}"
        for name in (
            REPRODUCTION_MARKDOWN,
            REPRODUCTION_CSV_TABLE3,
            REPRODUCTION_CSV_TABLE4,
            REPRODUCTION_HTML,
            REPRODUCTION_JSON,
        )
    }
    assert mlflow_run.data.metrics["table3.binary.MobileNet.test_f1_macro"] == pytest.approx(row.f1.point)


def test_reproduction_card_renders_offline_in_a_real_browser(tmp_path):
    from tests.browser import ChromiumMissingError, check_page, launch_chromium

    hostile = "<script>alert(1)</script>"
    tables = _tables(name=hostile, published=PUBLISHED.model_copy(update={"source": hostile}))
    files = write_reproduction(tables, tmp_path)
    try:
        with launch_chromium() as browser:
            check = check_page(Path(files.html), browser)
    except ChromiumMissingError as error:
        pytest.fail(str(error), pytrace=False)

    assert check.problems() == []
    assert check.dialogs == []  # the script in the metadata stays text
    assert check.title == f"Reproduction card: {hostile}"
