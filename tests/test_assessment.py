"""One evaluated split (components.assessment): predictions, CIs for every metric, slices."""

import re

import numpy as np
import pytest
from pydantic import ValidationError

from components.assessment import Assessment, Predictions, PredictionsMismatchError, assess
from components.config import EvaluationConfig
from components.errors import CxrError
from components.evaluation_card import build_card, card_html
from components.metrics import ARGMAX, Decision, metric_keys

BINARY = ["non-COVID", "COVID-19"]
DECISION = Decision(rule="youden", threshold=0.5, positive_class="COVID-19", chosen_on="val")
CONFIG = EvaluationConfig(bootstrap_resamples=40, min_slice_size=10)


def _predictions(n_patients: int = 20, seed: int = 0, split: str = "test") -> Predictions:
    """Two images per patient; sources A (most) and B (4 images); views PA/AP and a few unknown."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    y_true = np.repeat(np.arange(n_patients) % 2, 2)
    scores = np.clip(0.5 * y_true + rng.uniform(0, 0.5, n), 0, 1)
    return Predictions(
        split=split,
        class_names=BINARY,
        keys=[f"sha{i}" for i in range(n)],
        uris=[f"file:///data/{i}.png" for i in range(n)],
        patient_ids=[f"p{i // 2}" for i in range(n)],
        sources=["B" if i < 4 else "A" for i in range(n)],
        age_groups=["adult"] * n,
        views=["" if i % 10 == 9 else ("PA" if i % 2 else "AP") for i in range(n)],
        y_true=y_true.tolist(),
        probabilities=np.c_[1 - scores, scores].tolist(),
    )


def test_every_metric_has_an_interval():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    assert sorted(assessment.intervals) == sorted(metric_keys(BINARY))


def test_the_point_metrics_use_the_decision():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    assert assessment.metrics.decision == DECISION
    assert assessment.metrics.n_patients == 20


def test_slices_per_column_in_config_order():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    shown = [(s.column, s.value) for s in assessment.slices]
    assert shown == [
        ("source", "A"),
        ("source", "B"),
        ("age_group", "adult"),
        ("sex", "unknown"),  # _predictions gives no sex: stored predictions from before `sexes` load like this
        ("view", "AP"),
        ("view", "PA"),
        ("view", "unknown"),
    ]


def test_a_small_slice_is_shown_and_marked():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    source_b = next(s for s in assessment.slices if s.value == "B")
    assert source_b.small
    assert source_b.n_images == 4
    assert source_b.n_patients == 2


def test_a_large_slice_is_not_marked_small():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    assert not next(s for s in assessment.slices if s.value == "A").small


def test_a_slice_has_its_own_metrics_and_intervals():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    unknown_view = next(s for s in assessment.slices if s.column == "view" and s.value == "unknown")
    assert unknown_view.metrics.n_images == 4
    assert sorted(unknown_view.intervals) == sorted(metric_keys(BINARY))


def test_only_the_configured_slices_are_computed():
    config = CONFIG.model_copy(update={"slices": ["source"]})
    assert {s.column for s in assess(_predictions(), DECISION, config, seed=0).slices} == {"source"}


def test_the_same_seed_gives_the_same_assessment():
    predictions = _predictions()
    assert assess(predictions, DECISION, CONFIG, seed=3) == assess(predictions, DECISION, CONFIG, seed=3)


def test_another_seed_gives_other_intervals():
    predictions = _predictions()
    first = assess(predictions, DECISION, CONFIG, seed=3).intervals
    second = assess(predictions, DECISION, CONFIG, seed=4).intervals
    assert first != second


def test_the_assessment_records_how_it_was_made():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=5)
    assert (assessment.n_resamples, assessment.seed, assessment.confidence_level) == (40, 5, 0.95)


def test_an_assessment_round_trips_through_json():
    assessment = assess(_predictions(), DECISION, CONFIG, seed=0)
    assert Assessment.model_validate_json(assessment.model_dump_json()) == assessment


def test_predictions_give_arrays():
    y_true, probabilities = _predictions(5).arrays()
    assert y_true.shape == (10,)
    assert probabilities.shape == (10, 2)


def test_predictions_with_rows_of_different_lengths_are_refused():
    data = _predictions(5).model_dump()
    data["uris"] = data["uris"][:-1]
    with pytest.raises(ValidationError, match="uris has 9 entries for 10 keys"):
        Predictions(**data)


def test_a_label_outside_the_classes_is_refused():
    data = _predictions(5).model_dump()
    data["y_true"][2] = 2
    with pytest.raises(ValidationError, match=r"file:///data/2.png\) has label index 2"):
        Predictions(**data)


def test_aligned_reorders_the_other_models_rows():
    mine = _predictions(5)
    theirs = mine.subset(list(reversed(range(10)))).model_copy(update={"split": "champion"})
    aligned = mine.aligned(theirs)
    assert aligned.keys == mine.keys
    assert aligned.probabilities == mine.probabilities


def test_aligned_names_the_missing_images():
    mine = _predictions(5)
    with pytest.raises(PredictionsMismatchError, match="2 of 10 images have no prediction there, e.g. sha256 sha0"):
        mine.aligned(mine.subset(range(2, 10)))


def test_aligned_refuses_images_labelled_differently():
    mine = _predictions(5)
    data = mine.model_dump()
    data["y_true"][0] = 1
    with pytest.raises(PredictionsMismatchError, match="sha0"):
        mine.aligned(Predictions(**data))
    assert issubclass(PredictionsMismatchError, CxrError)


def test_assess_works_for_the_multiclass_task():
    rng = np.random.default_rng(1)
    classes = ["COVID-19", "normal", "pneumonia"]
    y_true = rng.integers(0, 3, 30)
    probabilities = rng.dirichlet(np.ones(3), 30)
    predictions = Predictions(
        split="external:Actualmed",
        class_names=classes,
        keys=[str(i) for i in range(30)],
        uris=[str(i) for i in range(30)],
        patient_ids=[str(i // 3) for i in range(30)],
        sources=["Actualmed"] * 30,
        age_groups=[""] * 30,
        views=["PA"] * 30,
        y_true=y_true.tolist(),
        probabilities=probabilities.tolist(),
    )
    assessment = assess(predictions, ARGMAX, CONFIG, seed=0)
    assert assessment.slices[1].value == "unknown"


# ---------------------------------------------------------------- a slice without some class


def _covid_only_source_b() -> Predictions:
    """_predictions with source B = the images of COVID-19 patients 1 and 3 only (4 images, no negative)."""
    predictions = _predictions()
    sources = ["B" if y == 1 and i < 8 else "A" for i, y in enumerate(predictions.y_true)]
    return predictions.model_copy(update={"sources": sources})


def _slice(assessment: Assessment, value: str):
    return next(s for s in assessment.slices if s.column == "source" and s.value == value)


def test_a_slice_without_negatives_has_no_specificity_and_no_interval():
    source_b = _slice(assess(_covid_only_source_b(), DECISION, CONFIG, seed=0), "B")
    assert source_b.metrics.per_class["COVID-19"].specificity is None
    assert source_b.intervals["specificity:COVID-19"].low is None
    assert source_b.intervals["specificity:COVID-19"].high is None
    assert source_b.metrics.per_class["non-COVID"].sensitivity is None


def test_a_slice_without_negatives_is_not_pulled_down_by_the_missing_class():
    source_b = _slice(assess(_covid_only_source_b(), DECISION, CONFIG, seed=0), "B")
    covid = source_b.metrics.per_class["COVID-19"]
    assert source_b.metrics.balanced_accuracy == pytest.approx(covid.sensitivity)  # the only class with images
    assert source_b.metrics.specificity_macro == pytest.approx(source_b.metrics.per_class["non-COVID"].specificity)


def test_the_card_shows_an_undefined_slice_metric_as_not_available():
    predictions = _covid_only_source_b()
    assessment = assess(predictions, DECISION, CONFIG, seed=0)
    card = build_card(
        model_name="cxr-classifier",
        model_version="1",
        backbone="mobilenet_v2",
        task="binary",
        dataset_version="data-v1",
        test_fingerprint="f" * 16,
        decision=DECISION,
        assessments=[assessment],
    )
    page = card_html(card, {"test": predictions})
    row = page.split("<td>source = B (small)</td>", 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)  # images, patients, COVID-19 sensitivity, specificity, ...
    assert cells[3] == "n/a"


def test_the_card_draws_a_class_never_predicted_without_its_precision_point():
    predictions = _predictions()
    never_covid = Decision(rule="fixed", threshold=1.1, positive_class="COVID-19", chosen_on="config")
    assessment = assess(predictions, never_covid, CONFIG, seed=0)
    assert assessment.metrics.per_class["COVID-19"].ppv is None
    card = build_card(
        model_name="cxr-classifier",
        model_version="1",
        backbone="mobilenet_v2",
        task="binary",
        dataset_version="data-v1",
        test_fingerprint="f" * 16,
        decision=never_covid,
        assessments=[assessment],
    )
    page = card_html(card, {"test": predictions})  # the curves are drawn without a PPV point for COVID-19
    row = page.split("<tr><td>COVID-19</td>", 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)  # support, sensitivity, specificity, PPV, ...
    assert cells[3] == "n/a"


def test_sex_slices_from_the_manifest_column():
    predictions = _predictions()  # 40 images
    with_sex = Predictions(**{**predictions.model_dump(), "sexes": ["F" if i % 4 else "M" for i in range(40)]})
    sexes = {s.value: s.n_images for s in assess(with_sex, DECISION, CONFIG, seed=0).slices if s.column == "sex"}
    assert sexes == {"F": 30, "M": 10}
