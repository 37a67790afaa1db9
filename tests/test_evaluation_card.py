"""The evaluation card: content and order, escaping, JSON round trip, example strip (built through assess)."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from components.evaluation_card import (
    CARD_HTML,
    CARD_JSON,
    INTENDED_USE,
    EvaluationCard,
    build_card,
    card_html,
    headline_keys,
    make_examples,
    write_card,
)
from tests.cards import CARD_CONFIG, SCRIPT, tiny_card, tiny_predictions


@pytest.fixture(scope="module")
def card_and_predictions(tmp_path_factory):
    return tiny_card(tmp_path_factory.mktemp("card"))


@pytest.fixture(scope="module")
def page(card_and_predictions):
    card, predictions = card_and_predictions
    return card_html(card, predictions)


def _headline_columns(page: str) -> list[str]:
    table = page.split("confidence intervals</h2>", 1)[1].split("</thead>", 1)[0]
    return re.findall(r"<th>(.*?)</th>", table)


def test_card_states_what_a_reviewer_needs(card_and_predictions, page):
    card, _ = card_and_predictions

    assert card.intended_use == INTENDED_USE
    assert "not a medical device" in INTENDED_USE
    assert "must not be used for diagnosis" in INTENDED_USE
    assert html.escape(INTENDED_USE) in page
    assert html.escape(card.decision.describe()) in page
    assert card.decision.describe().startswith("P(COVID-19) >= ")
    for field in ("mobilenet_v2", "data-v1", "f" * 16, "binary (non-COVID, COVID-19)", "100 stratified bootstrap"):
        assert field in page, field
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")


def test_columns_are_test_then_each_external_source(card_and_predictions, page):
    card, _ = card_and_predictions

    assert [a.split for a in card.assessments] == ["test", "external:Actualmed", f"external:{SCRIPT}"]
    columns = _headline_columns(page)
    assert columns[0] == "metric"
    assert [c.split(" (")[0] for c in columns[1:]] == ["test", "external:Actualmed", html.escape(f"external:{SCRIPT}")]


def test_balanced_numbers_lead_with_their_intervals(card_and_predictions, page):
    card, _ = card_and_predictions
    test = card.assessments[0]

    assert headline_keys(card.class_names, "COVID-19")[:4] == [
        "sensitivity:COVID-19",
        "specificity:COVID-19",
        "f1_macro",
        "roc_auc_macro",
    ]
    table = page.split("confidence intervals</h2>", 1)[1].split("</table>", 1)[0]
    order = [
        table.index(f"<td>{label}</td>")
        for label in ("COVID-19 sensitivity", "macro F1", "accuracy (tracks prevalence)")
    ]
    assert order == sorted(order)
    interval = test.intervals["f1_macro"]
    assert f"{test.metrics.f1_macro:.3f} [{interval.low:.3f}, {interval.high:.3f}]" in table
    sensitivity = test.intervals["sensitivity:COVID-19"]
    assert interval.low <= test.metrics.f1_macro <= interval.high
    assert f"{test.metrics.per_class['COVID-19'].sensitivity:.3f} [{sensitivity.low:.3f}" in table


def test_every_section_is_there(card_and_predictions, page):
    card, _ = card_and_predictions

    for heading in (
        "Promotion decision",
        "Images left out (1)",
        "Per class",
        "Confusion matrix",
        "Calibration: Brier",
        "Slices",
        "Examples",
    ):
        assert page.count(heading) >= 1, heading
    assert page.count('alt="confusion matrix, ') == 3
    assert page.count('alt="ROC and PR curves, ') == 3
    assert page.count('alt="reliability diagram, ') == 3
    assert page.count('class="thumb"') == len(card.examples)
    assert '<tr class="fail">' in page  # the failed gate criterion
    small = [s for a in card.assessments for s in a.slices if s.small]
    assert small  # pediatric and unknown age groups are under min_slice_size
    assert page.count('<tr class="small">') == len(small)
    assert page.count(" (small)</td>") == len(small)


def test_metadata_is_escaped_and_the_page_has_no_script(page):
    assert SCRIPT not in page
    assert html.escape(SCRIPT) in page  # the source, its slices, the run name, a gate criterion, a left-out image
    assert "<script" not in page.lower()
    assert not re.search(r"(https?:|src=\"(?!data:image/png;base64,))", page)
    assert "Content-Security-Policy" in page


def test_the_json_round_trips_and_both_files_are_written(card_and_predictions, tmp_path):
    card, predictions = card_and_predictions
    one_column = card.model_copy(update={"assessments": card.assessments[:1]})  # test only: fewer plots to draw

    html_path, json_path = write_card(one_column, {"test": predictions["test"]}, tmp_path / "out")

    assert EvaluationCard.model_validate_json(card.model_dump_json(indent=2)) == card
    assert (html_path.name, json_path.name) == (CARD_HTML, CARD_JSON)
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('alt="ROC and PR curves, test"') == 1
    text = json_path.read_text(encoding="utf-8")
    json.loads(text)  # strict JSON
    assert EvaluationCard.model_validate_json(text) == one_column


def test_examples_are_the_most_confidently_wrong_and_right(card_and_predictions):
    card, predictions = card_and_predictions
    test = predictions["test"]
    y_true, probabilities = test.arrays()
    y_pred = card.decision.predict(probabilities, test.class_names)
    p_true = probabilities[np.arange(len(y_true)), y_true]

    examples = card.examples
    wrong = [e for e in examples if not e.correct]
    right = [e for e in examples if e.correct]

    assert len(wrong) == CARD_CONFIG.card_examples
    assert len(right) == CARD_CONFIG.card_examples
    assert examples[: len(wrong)] == wrong  # wrong ones first
    worst = sorted(p_true[y_pred != y_true])[: len(wrong)]
    assert [round(1 - e.probability, 9) for e in wrong] == [round(float(p), 9) for p in worst]  # binary
    best = sorted(p_true[y_pred == y_true], reverse=True)[: len(right)]
    assert [round(e.probability, 9) for e in right] == [round(float(p), 9) for p in best]
    thumbnail = Image.open(io.BytesIO(base64.b64decode(examples[0].thumbnail_png_base64)))
    assert (thumbnail.format, thumbnail.mode, thumbnail.size) == ("PNG", "L", (96, 96))
    assert make_examples(test, card.decision, 0) == []


def test_build_card_orders_columns_and_refuses_mixed_classes(card_and_predictions, tmp_path):
    card, _ = card_and_predictions
    test, actualmed, script = card.assessments
    fields = card.model_dump(exclude={"assessments", "class_names", "intended_use", "created_at"})
    fields["decision"] = card.decision
    fields["examples"] = card.examples
    fields["gate"] = card.gate

    reordered = build_card(**fields, assessments=[actualmed, script, test])
    assert [a.split for a in reordered.assessments] == ["test", "external:Actualmed", f"external:{SCRIPT}"]

    with pytest.raises(ValueError, match=r"split\(s\) test given more than once"):
        build_card(**fields, assessments=[test, test])
    multiclass = tiny_predictions("test", tmp_path, n_patients=6, task="multiclass")
    with pytest.raises(ValueError, match="predictions of split test: classes"):
        card_html(card, {"test": multiclass})


def test_multiclass_card_decides_by_argmax_and_shows_every_class(tmp_path):
    card, predictions = tiny_card(tmp_path, external_sources=(), task="multiclass")

    page = card_html(card, predictions)

    assert card.decision.rule == "argmax"
    assert "argmax (multiclass)" in page
    assert [a.split for a in card.assessments] == ["test"]
    for name in ("COVID-19", "normal", "pneumonia"):
        assert f"<td>{name} sensitivity</td>" in page, name
        assert f"<td>{name} specificity</td>" in page, name
