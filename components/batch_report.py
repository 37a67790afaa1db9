"""The batch inference report (`cxr predict-batch`): one self-contained HTML page.

What a reviewer of a scored drop needs on one page: which model version scored which data
version; the input drift verdict (blocked, warning, passed) with each feature's test, statistic,
p-value and threshold and a plot of reference against current values; the output drift; the
predicted-class mix; a strip of sample images per predicted class; Grad-CAM heat maps when asked
for; and every excluded file with its reason. Images are embedded as base64 PNG (``data:`` URIs)
and the page carries a Content-Security-Policy that forbids fetching anything, as the evaluation
card does (components.evaluation_card.page_head).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from components.drift import DriftReport
from components.evaluation_card import _definitions, _img, _table, page_head
from components.intended_use import INTENDED_USE
from components.steward_report import _e

__all__ = ["MAX_EXCLUDED_LISTED", "BatchPage", "Thumbnail", "batch_report_html"]

# Excluded rows listed on the page at most (all of them are in the excluded-rows CSV beside it).
MAX_EXCLUDED_LISTED = 500

_VERDICT_CSS = {"blocked": "BLOCKED", "warning": "WARN", "passed": "PASSED", "not checked": "WARN"}
_BATCH_CSS = """
.strip{display:flex;flex-wrap:wrap;gap:.5rem;margin:.3rem 0 1rem}
.strip figure{margin:0;width:9rem;font-size:.75rem;word-break:break-all}
.strip img{width:9rem;height:9rem;image-rendering:pixelated;border:1px solid #d0d7de}
.wide figure{width:18.5rem}.wide img{width:18.5rem;height:9rem}
.plots{display:flex;flex-wrap:wrap;gap:.5rem}.plots img{width:16rem}
tr.drifted td{background:#ffebe9}tr.warned td{background:#fff8c5}
"""


@dataclass(frozen=True)
class Thumbnail:
    """An embedded image and its caption (file name, probability, OOD flag)."""

    png: bytes
    caption: str


@dataclass
class BatchPage:
    """Everything the page shows (built by the batch step)."""

    title: str
    identity: list[tuple[str, str]]
    input_drift: DriftReport
    output_drift: DriftReport | None  # None: a blocking input drift stopped the run before predictions
    drift_plots: dict[str, bytes] = field(default_factory=dict)  # feature -> PNG
    predicted: dict[str, int] = field(default_factory=dict)  # class -> images
    samples: dict[str, list[Thumbnail]] = field(default_factory=dict)  # predicted class -> thumbnails
    explanations: list[Thumbnail] = field(default_factory=list)  # Grad-CAM: image | overlay
    excluded: pd.DataFrame | None = None  # uri, exclusion_reason, exclusion_detail
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, path)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _drift_section(report: DriftReport, heading: str, plots: dict[str, bytes]) -> list[str]:
    verdict = report.verdict
    parts = [
        f"<h2>{_e(heading)}</h2>",
        f'<div class="banner {_VERDICT_CSS.get(verdict, "WARN")}">{_e(heading)}: {_e(verdict.upper())}</div>',
    ]
    summary = report.summary()
    if summary:
        parts.append(f"<pre>{_e(summary)}</pre>")
    rows, css = [], []
    for result in report.results:
        rows.append(
            [
                result.feature,
                result.group,
                result.test,
                _number(result.statistic),
                _number(result.p_value),
                _number(result.alpha),
                _number(result.effect),
                f"{result.min_effect:g}",
                result.severity,
                "yes" if result.drifted else "no",
                f"{result.reference_n} / {result.current_n}",
                result.note,
            ]
        )
        css.append(("drifted" if result.severity == "block" else "warned") if result.drifted else "")
    parts.append(
        _table(
            [
                "feature",
                "group",
                "test",
                "statistic",
                "p-value",
                "threshold (p)",
                "effect",
                "min effect",
                "severity",
                "drifted",
                "reference / current n",
                "note",
            ],
            rows,
            css,
            numeric=False,
        )
    )
    shown = [(r.feature, plots[r.feature]) for r in report.results if r.feature in plots]
    if shown:
        parts.append('<div class="plots">')
        parts += [_img(_b64(png), f"{name}: reference against this batch") for name, png in shown]
        parts.append("</div>")
    return parts


def _strip(thumbnails: Sequence[Thumbnail], wide: bool = False) -> str:
    figures = "".join(
        f"<figure>{_img(_b64(t.png), t.caption, 'thumb')}<figcaption>{_e(t.caption)}</figcaption></figure>"
        for t in thumbnails
    )
    return f'<div class="strip{" wide" if wide else ""}">{figures}</div>'


def batch_report_html(page: BatchPage) -> str:
    """The report page as one HTML string (UTF-8, self-contained: no external resource).

    Args:
        page: what to show.

    Returns:
        The HTML document.
    """
    parts = page_head(page.title, INTENDED_USE, page.identity)
    parts[4] = parts[4].replace("</style>", f"{_BATCH_CSS}</style>")
    parts += _drift_section(page.input_drift, "Input drift", page.drift_plots)
    if page.output_drift is None:
        parts += [
            "<h2>Predictions</h2>",
            '<p class="muted">Not written: a blocking input drift stopped the run before any prediction was '
            "written (the drift above says which feature). Review the drop; to score it anyway, set that feature's "
            "severity to warn (batch.drift.features).</p>",
        ]
    else:
        parts += _drift_section(page.output_drift, "Output drift", page.drift_plots)
        total = sum(page.predicted.values()) or 1
        parts += [
            "<h2>Predicted classes</h2>",
            _table(
                ["class", "images", "share"],
                [[name, count, f"{count / total:.1%}"] for name, count in page.predicted.items()],
            ),
        ]
        for name, thumbnails in page.samples.items():
            parts += [f"<h3>Predicted {_e(name)}</h3>", _strip(thumbnails)]
        if page.explanations:
            parts += [
                "<h2>Where the model looked (Grad-CAM)</h2>",
                '<p class="muted">Each pair: the model-input image and the Grad-CAM heat map of its predicted class '
                "(Selvaraju et al. 2017). A map on text, markers or borders rather than the lungs is a shortcut to "
                "review.</p>",
                _strip(page.explanations, wide=True),
            ]
    if page.outputs:
        parts += ["<h2>Files</h2>", _definitions(page.outputs)]
    excluded = page.excluded if page.excluded is not None else pd.DataFrame()
    parts.append(f"<h2>Excluded files ({len(excluded)})</h2>")
    if len(excluded):
        listed = excluded.head(MAX_EXCLUDED_LISTED)
        parts.append(
            _table(
                ["file", "reason", "detail"],
                listed[["uri", "exclusion_reason", "exclusion_detail"]].astype(str).to_numpy().tolist(),
                numeric=False,
            )
        )
        if len(excluded) > len(listed):
            parts.append(f'<p class="muted">{len(excluded) - len(listed)} more in the excluded-rows CSV.</p>')
    else:
        parts.append('<p class="muted">None.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)
