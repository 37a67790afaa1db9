"""Evaluation cards built from real tiny arrays through components.assessment.assess (card and browser tests).

Predictions come from a simulated model (labels from a seeded generator, probabilities
that separate the classes with noise), with image files on disk for the thumbnails;
nothing about the metrics is written by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.assessment import Predictions, assess
from components.config import EvaluationConfig
from components.evaluation_card import ComparisonRow, EvaluationCard, build_card, make_examples
from components.labels import TASK_LABELS
from components.leakage import ExcludedImage
from components.metrics import choose_decision
from tests.factories import write_noise_image

SCRIPT = "<script>alert(1)</script>"
# Small bootstrap: these tests check rendering, not interval widths.
CARD_CONFIG = EvaluationConfig(bootstrap_resamples=100, min_slice_size=20, card_examples=3)


def tiny_predictions(
    split: str,
    folder: Path,
    n_patients: int = 24,
    seed: int = 0,
    source: str = "ieee8023",
    task: str = "binary",
    strength: float = 1.5,
) -> Predictions:
    """Predictions of a simulated model on `n_patients` patients of two images each (files in `folder`)."""
    class_names = list(TASK_LABELS[task])
    rng = np.random.default_rng(seed)
    patient_labels = rng.integers(0, len(class_names), n_patients)
    y_true = np.repeat(patient_labels, 2)
    n = len(y_true)
    logits = rng.normal(0, 1, (n, len(class_names)))
    logits[np.arange(n), y_true] += strength
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    uris = [str(write_noise_image(folder / f"{seed}-{i}.png", seed=seed * 1000 + i, size=(40, 32))) for i in range(n)]
    return Predictions(
        split=split,
        class_names=class_names,
        keys=[hashlib.sha256(uri.encode()).hexdigest() for uri in uris],
        uris=uris,
        patient_ids=[f"{source}:patient-{i // 2}" for i in range(n)],
        sources=[source] * n,
        age_groups=["adult" if i % 5 else "pediatric" if i % 10 else "" for i in range(n)],
        views=["PA" if i % 3 else "AP" for i in range(n)],
        y_true=y_true.tolist(),
        probabilities=probabilities.tolist(),
    )


def tiny_card(
    folder: Path, external_sources: Sequence[str] = ("Actualmed", SCRIPT), task: str = "binary"
) -> tuple[EvaluationCard, dict[str, Predictions]]:
    """A card with a test column and one column per external source, and the predictions behind it."""
    val = tiny_predictions("val", folder / "val", seed=1, task=task)
    decision = choose_decision(*val.arrays(), val.class_names, CARD_CONFIG.threshold)
    predictions = {"test": tiny_predictions("test", folder / "test", seed=2, task=task)}
    for index, source in enumerate(external_sources):
        split = f"external:{source}"
        predictions[split] = tiny_predictions(
            split, folder / f"external-{index}", seed=3 + index, source=source, task=task, strength=0.8
        )
    assessments = [assess(p, decision, CARD_CONFIG, seed=7) for p in predictions.values()]
    card = build_card(
        model_name="cxr-classifier",
        model_version="3",
        backbone="mobilenet_v2",
        task=task,
        dataset_version="data-v1",
        test_fingerprint="f" * 16,
        decision=decision,
        assessments=assessments,
        run_name=f"run {SCRIPT}",
        examples=make_examples(predictions["test"], decision, CARD_CONFIG.card_examples),
        gate=[
            ComparisonRow(criterion="roc_auc_macro lower bound >= 0.5", passed=True, detail="0.61 >= 0.5"),
            ComparisonRow(criterion=f"external:{SCRIPT} f1_macro >= 0.6", passed=False, detail="0.41 < 0.6"),
        ],
        decision_summary="challenger: 1 of 2 criteria failed",
        left_out=[
            ExcludedImage(
                split="test",
                uri=f"/data/{SCRIPT}.png",
                sha256="0" * 64,
                kind="same patient",
                reason="same patient as training/validation images of v2 (patient_id ieee8023:1)",
            )
        ],
        left_out_note="Left out of the comparison with champion v2 only.",
    )
    return card, predictions
