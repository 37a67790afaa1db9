"""The evaluation card: what a reviewer reads about one model, as one self-contained HTML page and as JSON.

An ``EvaluationCard`` (pydantic; ``model_dump_json`` is evaluation_card.json)
holds the model's identity (name, version, backbone, task, classes), the data
it was measured on (dataset version, test-split fingerprint), the decision rule
(``Decision``: argmax, or a threshold on P(COVID-19) chosen on validation), the
intended use, one ``Assessment`` per evaluated split (the internal test split
first, then each external source, in its own column), the gate's criteria with
their numbers, and a few correctly and wrongly classified test images.

``card_html`` renders one HTML page with inline CSS and every plot embedded as
a base64 PNG (``data:`` URIs): nothing is fetched when it is opened, and a
Content-Security-Policy forbids scripts and any other source. The page leads
with balanced numbers (per-class sensitivity and specificity, macro-F1,
ROC-AUC) and their confidence intervals before the paper's accuracy, which
tracks prevalence. ROC and PR curves are computed from the ``Predictions``;
reliability diagrams come from ``SplitMetrics.reliability``. Every string that
comes from metadata (names, sources, URIs, criteria) is HTML-escaped, and
text passed to matplotlib has ``$`` escaped (no mathtext).

``write_card`` writes evaluation_card.html and evaluation_card.json into one
folder; ``make_examples`` chooses the most confidently wrong and right images
and reads their thumbnails with the project's shared decoding
(components.imaging.load_images).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.assessment import Assessment, Predictions, SliceResult
from components.imaging import encode_png, load_images
from components.intended_use import INTENDED_USE
from components.leakage import ExcludedImage
from components.metrics import Decision, Interval, SplitMetrics, confusion_matrix_figure
from components.steward_report import _CSS as _BASE_CSS
from components.steward_report import _e

CARD_HTML = "evaluation_card.html"
CARD_JSON = "evaluation_card.json"
# The HTML lists this many left-out images; the JSON lists every one.
_LEFT_OUT_SHOWN = 200
THUMBNAIL_SIZE = 96
# The paper's figures, shown after the balanced ones; then calibration (lower is better).
PAPER_KEYS: tuple[str, ...] = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "specificity_macro",
)
CALIBRATION_KEYS: tuple[str, ...] = ("brier", "ece", "mce")
_PER_CLASS_STATS: tuple[tuple[str, str], ...] = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC"),
)
_LABELS = {
    "f1_macro": "macro F1",
    "roc_auc_macro": "ROC-AUC (macro, one-vs-rest)",
    "balanced_accuracy": "balanced accuracy",
    "pr_auc_macro": "PR-AUC (macro, average precision)",
    "accuracy": "accuracy (tracks prevalence)",
    "precision_macro": "macro precision",
    "recall_macro": "macro recall",
    "precision_weighted": "weighted precision",
    "recall_weighted": "weighted recall",
    "f1_weighted": "weighted F1",
    "specificity_macro": "macro specificity",
    "brier": "Brier score (lower is better)",
    "ece": "ECE (lower is better)",
    "mce": "maximum calibration error (lower is better)",
}
_CARD_CSS = """
.use{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem 1rem;border-radius:6px;margin:1rem 0}
.decision{padding:.6rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
tr.small td{background:#f6f8fa;color:#57606a}figure{margin:.5rem 0}figcaption{font-size:.85rem;color:#57606a}
.plot{max-width:100%;height:auto}td.n{white-space:nowrap}.scroll{overflow-x:auto}.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}.strip{display:flex;flex-wrap:wrap;gap:.6rem}
.example{border:2px solid #4ac26b;border-radius:6px;padding:.3rem;width:9rem;font-size:.75rem}
.example.wrong{border-color:#ff8182}.example img{display:block;width:96px;height:96px;image-rendering:pixelated}
"""
# No scripts, no remote anything: images only from data: URIs, styles only inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


# ---------------------------------------------------------------- the card


class CardExample(BaseModel):
    """One test image in the strip: what it is, what the model said, a thumbnail.

    ``probability`` is the probability the model gave its predicted class (0..1);
    the thumbnail is a base64 PNG, 8-bit grayscale, THUMBNAIL_SIZE pixels square by default.
    """

    model_config = ConfigDict(frozen=True)

    uri: str
    true_class: str
    predicted_class: str
    probability: float
    correct: bool
    thumbnail_png_base64: str


class ComparisonRow(BaseModel):
    """One gate criterion as a promoter reads it: its name, whether it passed, its numbers."""

    model_config = ConfigDict(frozen=True)

    criterion: str
    passed: bool
    detail: str


class EvaluationCard(BaseModel):
    """Everything on the evaluation card; ``model_dump_json()`` is evaluation_card.json.

    ``assessments`` holds the internal test split first, then one ``external:<source>`` per
    external source (a ``val`` assessment, if any, last). ``created_at`` is ISO 8601 UTC.
    """

    model_name: str
    model_version: str | None
    backbone: str
    task: str
    class_names: list[str]
    dataset_version: str
    test_fingerprint: str
    decision: Decision
    intended_use: str = INTENDED_USE
    created_at: str
    run_name: str
    assessments: list[Assessment]
    examples: list[CardExample] = []
    gate: list[ComparisonRow] = []
    decision_summary: str | None = None
    left_out: list[ExcludedImage] = []  # images a compared model had seen (components.leakage), with reasons
    left_out_note: str = ""  # what they were left out of


def _split_order(split: str) -> int:
    return 0 if split == "test" else 1 if split.startswith("external:") else 2


def build_card(
    *,
    model_name: str,
    model_version: str | None,
    backbone: str,
    task: str,
    dataset_version: str,
    test_fingerprint: str,
    decision: Decision,
    assessments: Sequence[Assessment],
    run_name: str = "",
    examples: Sequence[CardExample] = (),
    gate: Sequence[ComparisonRow] = (),
    decision_summary: str | None = None,
    intended_use: str = INTENDED_USE,
    created_at: str | None = None,
    left_out: Sequence[ExcludedImage] = (),
    left_out_note: str = "",
) -> EvaluationCard:
    """Assemble a card: assessments ordered test, external sources (as given), then any other split.

    Args:
        model_name: The registered model's name (e.g. "cxr-classifier").
        model_version: Its registry version ("3"), or None before registration.
        backbone: The backbone's name (e.g. "mobilenet_v2").
        task: "binary" or "multiclass".
        dataset_version: The data drop's version.
        test_fingerprint: The test split's fingerprint (components.registry.split_fingerprint).
        decision: How probabilities became a class (threshold chosen on validation, or argmax).
        assessments: One per evaluated split (components.assessment.assess), all on the same classes.
        run_name: The training or evaluation run.
        examples: Test images for the strip (make_examples).
        gate: The promotion gate's criteria with their numbers; empty when not gated.
        decision_summary: One line on the promotion decision (e.g. "champion: every criterion passed").
        intended_use: What the model may be used for; INTENDED_USE by default.
        created_at: ISO 8601 time; now (UTC, seconds) by default.
        left_out: Images left out because a compared model had trained or been selected on them.
        left_out_note: What they were left out of (the champion comparison, this evaluation).

    Returns:
        The card; its class_names are the assessments' classes.

    Raises:
        ValueError: No assessment, two with the same split, or assessments on different classes.
    """
    if not assessments:
        raise ValueError("an evaluation card needs at least one assessment (the test split)")
    splits = [a.split for a in assessments]
    duplicated = sorted({s for s in splits if splits.count(s) > 1})
    if duplicated:
        raise ValueError(f"assessments: split(s) {', '.join(duplicated)} given more than once")
    class_names = list(assessments[0].metrics.class_names)
    for assessment in assessments[1:]:
        if list(assessment.metrics.class_names) != class_names:
            raise ValueError(
                f"assessments: split {assessment.split} has classes {assessment.metrics.class_names}, "
                f"split {assessments[0].split} has {class_names}"
            )
    ordered = sorted(assessments, key=lambda a: _split_order(a.split))  # stable: externals keep their order
    return EvaluationCard(
        model_name=model_name,
        model_version=model_version,
        backbone=backbone,
        task=task,
        class_names=class_names,
        dataset_version=dataset_version,
        test_fingerprint=test_fingerprint,
        decision=decision,
        intended_use=intended_use,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        run_name=run_name,
        assessments=ordered,
        examples=list(examples),
        gate=list(gate),
        decision_summary=decision_summary,
        left_out=list(left_out),
        left_out_note=left_out_note,
    )


# ---------------------------------------------------------------- examples


def make_examples(
    predictions: Predictions, decision: Decision, n: int, size: int = THUMBNAIL_SIZE
) -> list[CardExample]:
    """The `n` most confidently wrong and the `n` most confidently right images, with thumbnails.

    Wrong ones are those with the lowest probability on their true class, right ones those
    with the highest; ties keep the predictions' order. Wrong examples come first.

    Args:
        predictions: One split's predictions (usually "test"); its uris are read.
        decision: How probabilities become a class (the card's decision).
        n: Examples of each kind (fewer when the split has fewer).
        size: Thumbnail side in pixels (square, aspect not kept, as the model sees it).

    Returns:
        Up to 2 * n CardExample, each with the probability of its predicted class and a base64 PNG.

    Raises:
        MissingFileError: An image file does not exist (the message names it).
        StorageError: An image file cannot be read.
        ImageDecodeError: An image file cannot be decoded.
    """
    y_true, probabilities = predictions.arrays()
    if n <= 0 or len(y_true) == 0:
        return []
    names = list(predictions.class_names)
    y_pred = np.asarray(decision.predict(probabilities, names), dtype=int)
    rows = np.arange(len(y_true))
    p_true = probabilities[rows, y_true]
    wrong = rows[y_pred != y_true]
    right = rows[y_pred == y_true]
    chosen = list(wrong[np.argsort(p_true[wrong], kind="stable")][:n])
    chosen += list(right[np.argsort(-p_true[right], kind="stable")][:n])
    if not chosen:
        return []
    thumbnails = load_images([predictions.uris[i] for i in chosen], size)
    return [
        CardExample(
            uri=predictions.uris[i],
            true_class=names[y_true[i]],
            predicted_class=names[y_pred[i]],
            probability=float(probabilities[i, y_pred[i]]),
            correct=bool(y_pred[i] == y_true[i]),
            thumbnail_png_base64=base64.b64encode(encode_png(thumbnail)).decode("ascii"),
        )
        for i, thumbnail in zip(chosen, thumbnails, strict=True)
    ]


# ---------------------------------------------------------------- numbers


def positive_class(card: EvaluationCard) -> str | None:
    """The binary task's positive class (the decision's, else the second class); None for multiclass.

    Args:
        card: The card.

    Returns:
        e.g. "COVID-19", or None when there are more than two classes.
    """
    if len(card.class_names) != 2:
        return None
    return card.decision.positive_class or card.class_names[1]


def headline_keys(class_names: Sequence[str], positive: str | None = None) -> list[str]:
    """The balanced metrics a card (and a printed summary) leads with, as SplitMetrics.scalar keys.

    Args:
        class_names: The task's classes.
        positive: The binary task's positive class: only its sensitivity and specificity lead
            (the other class's are the same two numbers swapped); None: every class's.

    Returns:
        Per-class sensitivity, per-class specificity, then f1_macro, roc_auc_macro,
        balanced_accuracy, pr_auc_macro.
    """
    classes = [positive] if positive else list(class_names)
    keys = [f"sensitivity:{c}" for c in classes] + [f"specificity:{c}" for c in classes]
    return keys + ["f1_macro", "roc_auc_macro", "balanced_accuracy", "pr_auc_macro"]


def summary_keys(class_names: Sequence[str]) -> list[str]:
    """The keys a one-line summary shows (the registry's headline tag, `cxr train` and `cxr evaluate` output).

    Args:
        class_names: The task's classes in model output order (binary: the positive class second).

    Returns:
        headline_keys without PR-AUC, then "ece".
    """
    positive = class_names[1] if len(class_names) == 2 else None
    return [key for key in headline_keys(class_names, positive) if key != "pr_auc_macro"] + ["ece"]


def page_head(title: str, intended_use: str, identity: Sequence[Sequence[Any]]) -> list[str]:
    """The opening of a card page: doctype, CSP, styles, title, intended-use banner and the identity table.

    Args:
        title: The page title (escaped here).
        intended_use: The banner's text (escaped here).
        identity: (label, value) rows of the identity table.

    Returns:
        HTML fragments to join; the caller appends the body and closes the page.
    """
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_BASE_CSS}{_CARD_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="use"><b>Intended use.</b> {_e(intended_use)}</div>',
        _definitions(identity),
    ]


def _label(key: str) -> str:
    if ":" in key:
        stat, name = key.split(":", 1)
        return f"{name} {dict(_PER_CLASS_STATS).get(stat, stat)}"
    return _LABELS.get(key, key)


def _number(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.3f}"


def _with_interval(value: float | None, interval: Interval | None) -> str:
    text = _number(value)
    if text == "n/a" or interval is None or interval.low is None or interval.high is None:
        return text
    return f"{text} [{interval.low:.3f}, {interval.high:.3f}]"


def _value(metrics: SplitMetrics, key: str) -> float | None:
    try:
        value = metrics.scalar(key)
    except KeyError:
        return None
    return value if np.isfinite(value) else None


def _cell(metrics: SplitMetrics, intervals: dict[str, Interval], key: str) -> str:
    return _with_interval(_value(metrics, key), intervals.get(key))


def _level(card: EvaluationCard) -> str:
    levels = {a.confidence_level for a in card.assessments}
    return "/".join(f"{level:.0%}" for level in sorted(levels)) or "95%"


# ---------------------------------------------------------------- plots


def _plain(text: str) -> str:
    """Text for matplotlib: `$` escaped so that metadata never turns into mathtext."""
    return str(text).replace("$", r"\$")


def _png(figure: Any) -> str:
    """A matplotlib figure as base64 PNG text; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=80)
    finally:
        plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(columns: int, width: float = 4.2, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return figure, axes[0]


def curves_png(predictions: Predictions, metrics: SplitMetrics, title: str) -> str:
    """ROC and precision-recall curves per class (one-vs-rest), with each class's operating point.

    Args:
        predictions: The split's predictions (labels and (N, C) probabilities).
        metrics: The split's metrics (the operating points: sensitivity, specificity, PPV at the decision).
        title: Shown above the plots (escaped for matplotlib).

    Returns:
        Base64 PNG text of one figure with two panels: ROC (TPR vs FPR) and PR (precision vs recall).
        A class without positives or negatives in the split has no curve and says so in the legend.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    y_true, probabilities = predictions.arrays()
    figure, (roc_axes, pr_axes) = _figure(2)
    roc_axes.plot([0, 1], [0, 1], color="#b0b7bf", linestyle="--", linewidth=1)
    for index, name in enumerate(predictions.class_names):
        positive = y_true == index
        label = _plain(name)
        if positive.all() or not positive.any():
            roc_axes.plot([], [], label=f"{label}: undefined (one class only)")
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, index])
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, index])
        (line,) = roc_axes.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
        pr_axes.plot(recall, precision, color=line.get_color(), label=f"{label} (prevalence {positive.mean():.2f})")
        point = metrics.per_class.get(name)
        # With both classes present, sensitivity and specificity are defined; PPV is not when never predicted.
        if point is not None and point.sensitivity is not None and point.specificity is not None:
            roc_axes.plot(1 - point.specificity, point.sensitivity, "o", color=line.get_color())
            if point.ppv is not None:
                pr_axes.plot(point.sensitivity, point.ppv, "o", color=line.get_color())
    roc_axes.set(xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    pr_axes.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02))
    roc_axes.set_title("ROC, one-vs-rest (dot: the decision)")
    pr_axes.set_title("precision-recall (dot: the decision)")
    for axes in (roc_axes, pr_axes):
        axes.legend(loc="lower right" if axes is roc_axes else "lower left", fontsize=7)
    figure.suptitle(_plain(title))
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.83, wspace=0.25)  # cheaper than tight_layout
    return _png(figure)


def reliability_png(metrics: SplitMetrics, title: str) -> str:
    """A reliability diagram per class: observed rate of the class against its mean predicted probability.

    Args:
        metrics: The split's metrics (``reliability``: equal-width bins per class, with counts).
        title: Shown above the panels (escaped for matplotlib).

    Returns:
        Base64 PNG text: one panel per class; bars are the observed rate per bin (empty bins left out),
        dots the mean predicted probability, the dashed diagonal perfect calibration, numbers the images per bin.
    """
    names = list(metrics.class_names)
    figure, panels = _figure(len(names), width=3.4, height=3.4)
    for axes, name in zip(panels, names, strict=True):
        bins = [b for b in metrics.reliability.get(name, []) if b.count > 0 and b.observed_rate is not None]
        axes.plot([0, 1], [0, 1], color="#b0b7bf", linestyle="--", linewidth=1)
        centres = [(b.low + b.high) / 2 for b in bins]
        axes.bar(
            centres,
            [b.observed_rate for b in bins],
            width=[b.high - b.low for b in bins],
            color="#8fb8de",
            edgecolor="#4a6f94",
            linewidth=0.5,
        )
        confident = [
            (c, b.mean_confidence) for c, b in zip(centres, bins, strict=True) if b.mean_confidence is not None
        ]
        if confident:
            axes.plot(*zip(*confident, strict=True), "o", color="#d1242f", markersize=3)
        for centre, b in zip(centres, bins, strict=True):
            axes.text(centre, min(b.observed_rate + 0.03, 0.97), str(b.count), ha="center", fontsize=6)
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"P({_plain(name)})", ylabel="observed rate")
        axes.set_title(_plain(name), fontsize=9)
    figure.suptitle(_plain(title))
    figure.subplots_adjust(left=0.07 + 0.05 / len(names), right=0.98, bottom=0.15, top=0.82, wspace=0.35)
    return _png(figure)


def confusion_png(metrics: SplitMetrics, title: str) -> str:
    """The confusion matrix in counts (components.metrics.confusion_matrix_figure) as base64 PNG text.

    Args:
        metrics: The split's metrics.
        title: The figure's title (escaped for matplotlib).

    Returns:
        Base64 PNG text.
    """
    names = [_plain(name) for name in metrics.class_names]
    return _png(confusion_matrix_figure(metrics.confusion_matrix, names, _plain(title)))


# ---------------------------------------------------------------- HTML


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = (), numeric: bool = True
) -> str:
    """A table of escaped cells; with `numeric`, columns after the first are right-aligned numbers."""
    if not rows:
        return '<p class="muted">None.</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = row_classes[index] if index < len(row_classes) else ""
        cells = "".join(
            f'<td class="n">{_e(cell)}</td>' if i and numeric else f"<td>{_e(cell)}</td>" for i, cell in enumerate(row)
        )
        body.append(f'<tr class="{_e(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _definitions(rows: Sequence[Sequence[Any]]) -> str:
    """A two-column table of (name, value) rows, names as row headers; every value escaped."""
    body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _img(png_base64: str, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" src="data:image/png;base64,{png_base64}" alt="{_e(alt)}">'


def _split_header(assessment: Assessment) -> str:
    metrics = assessment.metrics
    patients = f", {metrics.n_patients} patients" if metrics.n_patients is not None else ""
    return f"{assessment.split} ({metrics.n_images} images{patients})"


def _headline_table(card: EvaluationCard) -> str:
    keys = headline_keys(card.class_names, positive_class(card))
    keys += [k for k in PAPER_KEYS if k not in keys] + list(CALIBRATION_KEYS)
    headers = ["metric", *(_split_header(a) for a in card.assessments)]
    rows = [[_label(key), *(_cell(a.metrics, a.intervals, key) for a in card.assessments)] for key in keys]
    return _table(headers, rows)


def _per_class_table(assessment: Assessment) -> str:
    headers = ["class", "support", *(label for _, label in _PER_CLASS_STATS)]
    rows = []
    for name in assessment.metrics.class_names:
        stats = assessment.metrics.per_class[name]
        rows.append(
            [
                name,
                stats.support,
                *(_cell(assessment.metrics, assessment.intervals, f"{stat}:{name}") for stat, _ in _PER_CLASS_STATS),
            ]
        )
    return _table(headers, rows)


def _slice_keys(card: EvaluationCard) -> list[str]:
    positive = positive_class(card)
    classes = [positive] if positive else card.class_names
    keys = [f"sensitivity:{c}" for c in classes]
    if positive:
        keys.append(f"specificity:{positive}")
    return keys + ["f1_macro", "roc_auc_macro", "accuracy"]


def _slices_table(card: EvaluationCard, slices: Sequence[SliceResult]) -> str:
    keys = _slice_keys(card)
    headers = ["slice", "images", "patients", *(_label(k) for k in keys)]
    rows, classes = [], []
    for result in slices:
        value = result.value or "unknown"
        name = f"{result.column} = {value}" + (" (small)" if result.small else "")
        rows.append(
            [name, result.n_images, result.n_patients, *(_cell(result.metrics, result.intervals, k) for k in keys)]
        )
        classes.append("small" if result.small else "")
    return _table(headers, rows, classes)


def _examples_html(examples: Sequence[CardExample]) -> str:
    if not examples:
        return '<p class="muted">No examples.</p>'
    parts = ['<div class="strip">']
    for example in examples:
        verdict = "right" if example.correct else "WRONG"
        alt = f"{verdict}: true {example.true_class}, predicted {example.predicted_class}"
        parts.append(
            f'<div class="example{"" if example.correct else " wrong"}" title="{_e(example.uri)}">'
            + _img(example.thumbnail_png_base64, alt, css="thumb")
            + f"<b>{_e(verdict)}</b><br>true {_e(example.true_class)}<br>predicted {_e(example.predicted_class)}"
            f"<br>P({_e(example.predicted_class)}) = {example.probability:.3f}"
            f'<br><span class="mono muted">{_e(Path(example.uri).name)}</span></div>'
        )
    parts.append("</div>")
    return "".join(parts)


def card_html(card: EvaluationCard, predictions_by_split: dict[str, Predictions]) -> str:
    """One self-contained HTML page for `card`: plots embedded as base64 PNG, every metadata string escaped.

    Args:
        card: The evaluation card.
        predictions_by_split: Predictions per split name ("test", "external:<source>"), for the ROC and PR
            curves; a split without predictions is shown without curves (and says so).

    Returns:
        The page (UTF-8 text): inline CSS, no scripts, images only as data: URIs, a Content-Security-Policy
        that forbids anything else.

    Raises:
        ValueError: A split's predictions are on other classes than the card.
    """
    for split, predictions in predictions_by_split.items():
        if list(predictions.class_names) != list(card.class_names):
            raise ValueError(
                f"predictions of split {split}: classes {predictions.class_names}, the card has {card.class_names}"
            )
    version = card.model_version or "not registered"
    level = _level(card)
    title = f"Evaluation card: {card.model_name} version {version}"
    first = card.assessments[0] if card.assessments else None
    identity = [
        ["model", card.model_name],
        ["version", version],
        ["backbone", card.backbone],
        ["task", f"{card.task} ({', '.join(card.class_names)})"],
        ["dataset version", card.dataset_version],
        [
            "test-split fingerprint"
            if any(a.split == "test" for a in card.assessments)
            else "evaluated images fingerprint",
            card.test_fingerprint,
        ],
        ["decision rule", card.decision.describe()],
        ["evaluated on", ", ".join(a.split for a in card.assessments)],
        ["run", card.run_name or "not given"],
        ["created", card.created_at],
    ]
    if first is not None:
        identity.append(
            [
                "confidence intervals",
                f"{level} percentile intervals from {first.n_resamples} stratified bootstrap resamples of "
                f"patients (a patient's images move together), seed {first.seed}",
            ]
        )
        identity.append(["calibration", f"{first.metrics.calibration_bins} equal-width bins over 0..1"])
    parts = page_head(title, card.intended_use, identity)
    if card.decision_summary or card.gate:
        failed = any(not row.passed for row in card.gate)
        css = "BLOCKED" if failed else "PASSED"
        parts.append(f"<h2>{'Promotion decision' if card.gate else 'Decision'}</h2>")
        if card.decision_summary:
            parts.append(f'<div class="decision {css}">{_e(card.decision_summary)}</div>')
        if card.gate:
            parts.append(
                _table(
                    ["criterion", "result", "numbers"],
                    [[row.criterion, "passed" if row.passed else "FAILED", row.detail] for row in card.gate],
                    ["" if row.passed else "fail" for row in card.gate],
                    numeric=False,
                )
            )

    if card.left_out:
        parts.append(f"<h2>Images left out ({len(card.left_out)})</h2>")
        parts.append(f'<p class="muted">{_e(card.left_out_note)}</p>')
        shown = card.left_out[:_LEFT_OUT_SHOWN]
        parts.append(_table(["split", "image", "reason"], [[i.split, i.uri, i.reason] for i in shown], numeric=False))
        if len(card.left_out) > len(shown):
            parts.append(
                f'<p class="muted">and {len(card.left_out) - len(shown)} more: every one is in {_e(CARD_JSON)}.</p>'
            )

    parts.append(f"<h2>Metrics with {_e(level)} confidence intervals</h2>")
    parts.append(
        '<p class="muted">Balanced figures first: accuracy tracks prevalence. Each column is one evaluation: '
        "the internal test split, then each external source (never used for training or model selection). "
        "Cells: point estimate [interval].</p>"
    )
    parts.append(_headline_table(card))

    for assessment in card.assessments:
        split = assessment.split
        metrics = assessment.metrics
        parts.append(f"<h2>{_e(_split_header(assessment))}</h2>")
        parts.append(f"<h3>Per class (one-vs-rest at the decision; {_e(level)} intervals)</h3>")
        parts.append(_per_class_table(assessment))
        parts.append("<h3>Confusion matrix (counts) and ROC / PR curves</h3>")
        confusion = _img(confusion_png(metrics, f"{split}: confusion matrix"), f"confusion matrix, {split}")
        parts.append(
            f'<div class="figs"><figure>{confusion}'
            "<figcaption>Rows: true class; columns: predicted class.</figcaption></figure>"
        )
        predictions = predictions_by_split.get(split)
        if predictions is None:
            parts.append('<p class="muted">ROC and PR curves: no predictions given for this split.</p></div>')
        else:
            parts.append(
                f"<figure>{_img(curves_png(predictions, metrics, split), f'ROC and PR curves, {split}')}</figure></div>"
            )
        parts.append(
            f"<h3>Calibration: Brier {_e(_cell(metrics, assessment.intervals, 'brier'))}, "
            f"ECE {_e(_cell(metrics, assessment.intervals, 'ece'))}, "
            f"MCE {_e(_cell(metrics, assessment.intervals, 'mce'))}</h3>"
        )
        parts.append(
            f"<figure>{_img(reliability_png(metrics, f'{split}: reliability'), f'reliability diagram, {split}')}"
            "<figcaption>Bars: observed rate of the class per bin of its predicted probability; dots: mean "
            "predicted probability; numbers: images per bin.</figcaption></figure>"
        )
        parts.append("<h3>Slices</h3>")
        parts.append(
            '<p class="muted">Grey rows marked (small) have fewer images than the configured minimum: '
            "shown, with wide intervals, and no gate criterion applies to them.</p>"
        )
        parts.append(_slices_table(card, assessment.slices))

    has_test = any(assessment.split == "test" for assessment in card.assessments)
    parts.append(f"<h2>Examples from {'the test split' if has_test else 'the evaluated data'}</h2>")
    parts.append(
        '<p class="muted">The most confidently wrong (red) and right (green) images, with the probability the '
        "model gave its predicted class.</p>"
    )
    parts.append(_examples_html(card.examples))
    parts.append(f'<p class="muted">The same content is in {_e(CARD_JSON)}.</p></body></html>')
    return "\n".join(parts)


def write_card(
    card: EvaluationCard, predictions_by_split: dict[str, Predictions], folder: str | Path
) -> tuple[Path, Path]:
    """Write evaluation_card.html and evaluation_card.json into `folder` (created if missing).

    Args:
        card: The evaluation card.
        predictions_by_split: Predictions per split name, for the curves (see card_html).
        folder: Where to write (UTF-8); existing files are replaced.

    Returns:
        (path of evaluation_card.html, path of evaluation_card.json).

    Raises:
        ValueError: A split's predictions are on other classes than the card.
        OSError: The folder cannot be created or a file cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    page = card_html(card, predictions_by_split)
    html_path, json_path = folder / CARD_HTML, folder / CARD_JSON
    html_path.write_text(page, encoding="utf-8")
    json_path.write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return html_path, json_path
