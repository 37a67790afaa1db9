"""The promotion gate's criteria on their own (components.gate), on assessments of predictions of known quality."""

from __future__ import annotations

import pytest

from components.assessment import assess
from components.bootstrap import Difference
from components.config import EvaluationConfig, FloorCriterion, GateConfig
from components.gate import evaluate_gate
from components.metrics import Decision
from tests.factories import scored_predictions

ARGMAX = Decision(rule="argmax")
CONFIG = EvaluationConfig(bootstrap_resamples=100, min_slice_size=30)


def assessed(quality: float, split: str = "test", **options):
    return assess(scored_predictions(quality, split=split, **options), ARGMAX, CONFIG, seed=0)


def names_failed(decision) -> list[str]:
    return [criterion.name for criterion in decision.criteria if not criterion.passed]


def test_a_floor_on_external_data_applies_to_every_external_source():
    gate = GateConfig(floors=[FloorCriterion(metric="sensitivity:COVID-19", min=0.7, bound="point", on="external")])
    candidate = {
        "test": assessed(0.9),
        "external:a": assessed(0.9, split="external:a"),
        "external:b": assessed(0.5, split="external:b", seed=1),
    }
    decision = evaluate_gate(candidate, gate, "f1_macro", min_slice_size=30)
    assert names_failed(decision) == ["floor sensitivity:COVID-19 on external:b"]
    assert decision.promote is False


def test_a_floor_on_external_data_without_external_sources_says_it_does_not_apply():
    gate = GateConfig(floors=[FloorCriterion(metric="f1_macro", min=0.9, on="external")])
    decision = evaluate_gate({"test": assessed(0.6)}, gate, "f1_macro", min_slice_size=30)
    assert decision.promote is True
    assert "not applicable" in decision.criteria[1].detail


def test_an_undefined_floor_metric_fails():
    # Every test image is one class: ROC-AUC is undefined, and undefined never passes a floor.
    predictions = scored_predictions(0.9)
    one_class = predictions.subset([i for i, label in enumerate(predictions.y_true) if label == 1])
    decision = evaluate_gate(
        {"test": assess(one_class, ARGMAX, CONFIG, seed=0)},
        GateConfig(floors=[FloorCriterion(metric="roc_auc_macro", min=0.5)]),
        "f1_macro",
        min_slice_size=30,
    )
    assert "undefined" in decision.criteria[1].detail
    assert decision.promote is False


@pytest.mark.parametrize(
    ("comparison", "low", "passes"),
    [("superiority", 0.001, True), ("superiority", -0.001, False), ("non_inferiority", -0.01, True)],
)
def test_the_change_threshold_reads_the_lower_bound_of_the_paired_difference(comparison, low, passes):
    gate = GateConfig(floors=[], comparison=comparison, non_inferiority_margin=0.02)
    same = assessed(0.8)
    decision = evaluate_gate(
        {"test": same},
        gate,
        "f1_macro",
        min_slice_size=30,
        champion={"test": same},
        differences={"f1_macro": Difference(point=0.01, low=low, high=0.03)},
        champion_version="4",
    )
    change = decision.criteria[1]
    assert change.passed is passes
    assert "vs champion v4" in change.name


def test_a_slice_that_loses_too_much_fails_and_small_slices_are_not_gated():
    sources = ("a", "b", "tiny")
    # 100 patients x 2 images cycle over 3 sources (both classes in each): 66-68 images, above min_slice_size 30.
    candidate = assess(scored_predictions(0.9, sources=sources), ARGMAX, CONFIG, seed=0)
    champion = assess(scored_predictions(0.9, sources=sources), ARGMAX, CONFIG, seed=0)
    worse_on_tiny = candidate.model_copy(
        update={
            "slices": [
                s if s.value != "tiny" else s.model_copy(update={"metrics": assessed(0.5).metrics})
                for s in candidate.slices
            ]
        }
    )
    gate = GateConfig(floors=[], comparison="non_inferiority")
    tied = {"f1_macro": Difference(point=0.0, low=0.0, high=0.0)}
    gated = evaluate_gate({"test": worse_on_tiny}, gate, "f1_macro", 30, champion={"test": champion}, differences=tied)
    assert names_failed(gated) == ["no slice loses more than 0.0500 f1_macro"]
    assert "source=tiny" in gated.criteria[2].detail
    ungated = evaluate_gate(
        {"test": worse_on_tiny}, gate, "f1_macro", 1000, champion={"test": champion}, differences=tied
    )
    assert ungated.promote is True
