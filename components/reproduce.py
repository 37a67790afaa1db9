"""The paper reproduced: its Table 3 and Table 4 with confidence intervals, beside its published numbers.

Table 3: accuracy and F1 (macro) on the test split per task and backbone, each with
a patient-bootstrap confidence interval (components.assessment.assess with the run's
EvaluationConfig and seed, so the chosen backbone's numbers are those of its
evaluation card). Table 4: the ablation per task (components.ablation: F1 (macro)
per variant and its difference from the full model, with the ablation's own
intervals: each F1's patient-bootstrap CI and ΔF1's paired CI). Each row carries
the paper's published figure where ``configs/published/paper.yaml`` gives one
(``PublishedNumbers``; null means not available, never a guess).

Pure functions, no ZenML: the tables (``reproduction_tables``), their Markdown,
CSV and HTML forms, and ``write_reproduction`` for the files. ``task_config``
derives the run config of one task (the registered model name suffixed with the
task, so the two tasks never compete for one champion).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.ablation import DELTA_COLUMN, F1_COLUMN, VARIANTS, VARIANTS_BY_KEY, AblationSummary, ci_columns
from components.assessment import assess
from components.backbones import BACKBONES
from components.config import ConfigError, EvaluationConfig, RunConfig, parse_run_config, read_yaml_mapping
from components.evaluation import Evaluation
from components.evaluation_card import _table, page_head
from components.intended_use import INTENDED_USE
from components.labels import Task
from components.metrics import Interval
from components.steward_report import _e

__all__ = [
    "REPRODUCTION_CSV_TABLE3",
    "REPRODUCTION_CSV_TABLE4",
    "REPRODUCTION_HTML",
    "REPRODUCTION_JSON",
    "REPRODUCTION_MARKDOWN",
    "Estimate",
    "PublishedNumbers",
    "ReproductionFiles",
    "ReproductionTables",
    "Table3Row",
    "Table4Row",
    "load_published",
    "reproduction_html",
    "reproduction_tables",
    "table3_frame",
    "table3_rows",
    "table4_frame",
    "table4_rows",
    "task_config",
    "to_csv",
    "to_markdown",
    "write_reproduction",
]

REPRODUCTION_MARKDOWN = "reproduction.md"
REPRODUCTION_CSV_TABLE3 = "table3.csv"
REPRODUCTION_CSV_TABLE4 = "table4.csv"
REPRODUCTION_HTML = "reproduction_card.html"
REPRODUCTION_JSON = "reproduction.json"
NOT_PUBLISHED = "–"  # a published figure that configs/published/paper.yaml leaves null


# ---------------------------------------------------------------- published numbers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishedTable3Entry(_Strict):
    """The paper's Table 3 figures of one backbone on one task, as fractions in 0..1 (null: not available)."""

    accuracy: float | None = Field(None, ge=0, le=1)
    f1: float | None = Field(None, ge=0, le=1)


class PublishedTable4Entry(_Strict):
    """The paper's Table 4 figures of one ablation variant on one task (null: not available)."""

    f1: float | None = Field(None, ge=0, le=1)
    delta: float | None = Field(None, ge=-1, le=1)  # F1 minus the full model's, as the paper prints it


class PublishedNumbers(_Strict):
    """The paper's published figures (configs/published/paper.yaml), with where they come from.

    ``table3``: task -> backbone name (as in ``cxr backbones``) -> figures.
    ``table4``: task -> ablation variant key (full, no_augmentation, no_transfer, no_both) -> figures.
    Every figure is a fraction in 0..1 (a paper's 97.3% is 0.973) or null when not available.
    """

    source: str | None = None  # the citation the figures were copied from; null when there are none
    note: str | None = None
    table4_backbone: str | None = None  # the backbone the paper ablated, when it says
    table3: dict[Task, dict[str, PublishedTable3Entry]] = {}
    table4: dict[Task, dict[str, PublishedTable4Entry]] = {}

    @field_validator("table3")
    @classmethod
    def _known_backbones(cls, value: dict[str, dict[str, PublishedTable3Entry]]) -> dict:
        for task, entries in value.items():
            unknown = sorted(set(entries) - set(BACKBONES))
            if unknown:
                raise ValueError(f"{task}: unknown backbone(s) {unknown}; known: {', '.join(BACKBONES)}")
        return value

    @field_validator("table4")
    @classmethod
    def _known_variants(cls, value: dict[str, dict[str, PublishedTable4Entry]]) -> dict:
        for task, entries in value.items():
            unknown = sorted(set(entries) - set(VARIANTS_BY_KEY))
            if unknown:
                raise ValueError(f"{task}: unknown ablation variant(s) {unknown}; known: {', '.join(VARIANTS_BY_KEY)}")
        return value

    def table3_entry(self, task: str, backbone: str) -> PublishedTable3Entry:
        """The figures of `backbone` on `task` (all null when the file has none)."""
        return self.table3.get(task, {}).get(backbone, PublishedTable3Entry())

    def table4_entry(self, task: str, variant: str) -> PublishedTable4Entry:
        """The figures of ablation `variant` on `task` (all null when the file has none)."""
        return self.table4.get(task, {}).get(variant, PublishedTable4Entry())

    @property
    def available(self) -> bool:
        """Whether any figure is given."""
        entries = [
            *(e for t in self.table3.values() for e in t.values()),
            *(e for t in self.table4.values() for e in t.values()),
        ]
        return any(value is not None for entry in entries for value in entry.model_dump().values())


def load_published(path: str | Path) -> PublishedNumbers:
    """Read the paper's published figures.

    Args:
        path: a YAML file shaped as PublishedNumbers (configs/published/paper.yaml).

    Returns:
        The PublishedNumbers.

    Raises:
        ConfigError: the file is missing or not a YAML mapping, or a field is invalid (unknown
            task, backbone or variant, a figure outside 0..1); the message names the file and field.
    """
    data = read_yaml_mapping(path, "published figures")
    try:
        return PublishedNumbers.model_validate(data)
    except ValidationError as error:
        lines = [f"  {'.'.join(str(p) for p in item['loc']) or '<root>'}: {item['msg']}" for item in error.errors()]
        raise ConfigError(f"published figures {path} are invalid:\n" + "\n".join(lines)) from None


# ---------------------------------------------------------------- the run config of one task


def task_config(config: RunConfig, task: Task) -> RunConfig:
    """The run config of one task of the reproduction: `task`, and the registered model named ``<name>-<task>``.

    Args:
        config: the reproduction's run config (e.g. configs/paper.yaml with overrides).
        task: "binary" or "multiclass".

    Returns:
        The validated RunConfig (the registry's model name suffixed, so the tasks never compete for one champion).

    Raises:
        ConfigError: the config is invalid for `task` (e.g. a label_map of the other task).
    """
    data = config.model_dump(mode="json")
    data["task"] = task
    data["registry"]["model_name"] = f"{config.registry.model_name}-{task}"
    return parse_run_config(data, origin=f"(reproduction, task {task})")


# ---------------------------------------------------------------- the tables


class Estimate(_Strict):
    """A point estimate and its confidence interval (None where undefined)."""

    point: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, point: float | None, interval: Interval | None) -> Estimate:
        """From a value (NaN means undefined) and an Interval (or None)."""
        value = None if point is None or point != point else float(point)
        if interval is None:
            return cls(point=value)
        return cls(point=value, low=interval.low, high=interval.high)

    def describe(self, signed: bool = False) -> str:
        """``0.8123 [0.7500, 0.8700]``; ``–`` when undefined; `signed` puts a sign on differences."""
        if self.point is None:
            return NOT_PUBLISHED
        text = _format(self.point, signed)
        if self.low is None or self.high is None:
            return text
        return f"{text} [{_format(self.low, signed)}, {_format(self.high, signed)}]"


def _format(value: float | None, signed: bool = False) -> str:
    if value is None:
        return NOT_PUBLISHED
    if signed and value != 0:
        return f"{value:+.4f}"
    return f"{0.0 if value == 0 else value:.4f}"


class Table3Row(_Strict):
    """One backbone on one task: test accuracy and F1 (macro) with CIs, and the paper's figures."""

    task: Task
    backbone: str
    n_images: int
    n_patients: int | None
    decision: str  # how probabilities became classes (chosen on validation)
    accuracy: Estimate
    f1: Estimate  # F1 (macro)
    published_accuracy: float | None
    published_f1: float | None


class Table4Row(_Strict):
    """One ablation variant on one task: F1 (macro) and ΔF1 vs the full model with CIs, and the paper's figures."""

    task: Task
    backbone: str
    variant: str  # key: full, no_augmentation, no_transfer, no_both
    label: str  # the paper's row label
    n_images: int
    f1: Estimate
    delta: Estimate  # F1 minus the full model's, paired CI
    published_f1: float | None
    published_delta: float | None


class ReproductionTables(_Strict):
    """Tables 3 and 4 of one reproduction, the uncertainty settings and the runs they come from."""

    name: str
    created_at: str
    confidence_level: float
    n_resamples: int
    seed: int
    published_source: str | None
    published_note: str | None
    published_table4_backbone: str | None
    runs: dict[str, str]  # what -> run name, e.g. "training (binary)" -> the ZenML run
    table3: list[Table3Row]
    table4: list[Table4Row]


def table3_rows(
    evaluations: Mapping[str, Sequence[Evaluation]],
    config: EvaluationConfig,
    seed: int,
    published: PublishedNumbers,
) -> list[Table3Row]:
    """Table 3: per task and backbone, test accuracy and F1 (macro) with patient-bootstrap CIs.

    Args:
        evaluations: task -> the Evaluation of each backbone (the training run's evaluate steps), in
            the order to show.
        config: the run's EvaluationConfig (resamples, confidence level, calibration bins); slices are
            not computed here.
        seed: the run's seed (the same intervals as the evaluation card of the chosen backbone).
        published: the paper's figures.

    Returns:
        One row per task and backbone, tasks in the order given.

    Raises:
        ValueError: an Evaluation without test predictions.
    """
    no_slices = config.model_copy(update={"slices": []})
    rows = []
    for task, results in evaluations.items():
        for result in results:
            test = next((p for p in result.predictions if p.split == "test"), None)
            if test is None:
                raise ValueError(f"the evaluation of {result.backbone.name} ({task}) has no test predictions")
            assessment = assess(test, result.decision, no_slices, seed)
            metrics, intervals = assessment.metrics, assessment.intervals
            entry = published.table3_entry(task, result.backbone.name)
            rows.append(
                Table3Row(
                    task=task,
                    backbone=result.backbone.name,
                    n_images=metrics.n_images,
                    n_patients=metrics.n_patients,
                    decision=result.decision.describe(),
                    accuracy=Estimate.of(metrics.accuracy, intervals.get("accuracy")),
                    f1=Estimate.of(metrics.f1_macro, intervals.get("f1_macro")),
                    published_accuracy=entry.accuracy,
                    published_f1=entry.f1,
                )
            )
    return rows


def _number(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def table4_rows(
    ablations: Mapping[str, AblationSummary], confidence_level: float, published: PublishedNumbers
) -> list[Table4Row]:
    """Table 4: per task and ablation variant, F1 (macro) and ΔF1 vs the full model with their CIs.

    Args:
        ablations: task -> the ablation's summary (components.ablation.AblationSummary; rows keyed by
            ``Variant`` and the table's columns).
        confidence_level: the ablation's confidence level, naming its CI columns ("F1 95% CI low");
            a table without CI columns gives estimates without intervals.
        published: the paper's figures.

    Returns:
        One row per task and variant, in the paper's variant order.

    Raises:
        ValueError: a row whose variant is not one of the paper's.
    """
    by_label = {variant.label: variant for variant in VARIANTS}
    f1_low, f1_high = ci_columns("F1", confidence_level)
    delta_low, delta_high = ci_columns("Δ F1", confidence_level)
    rows = []
    for task, summary in ablations.items():
        unknown = [row.get("Variant") for row in summary.rows if row.get("Variant") not in by_label]
        if unknown:
            raise ValueError(f"ablation of {task}: unknown variant row(s) {unknown}; known: {', '.join(by_label)}")
        given = {row["Variant"]: row for row in summary.rows}
        for variant in VARIANTS:
            row = given.get(variant.label)
            if row is None:
                continue
            entry = published.table4_entry(task, variant.key)
            rows.append(
                Table4Row(
                    task=task,
                    backbone=summary.backbone,
                    variant=variant.key,
                    label=variant.label,
                    n_images=summary.n_images,
                    f1=Estimate(point=_number(row, F1_COLUMN), low=_number(row, f1_low), high=_number(row, f1_high)),
                    delta=Estimate(
                        point=_number(row, DELTA_COLUMN), low=_number(row, delta_low), high=_number(row, delta_high)
                    ),
                    published_f1=entry.f1,
                    published_delta=entry.delta,
                )
            )
    return rows


def reproduction_tables(
    name: str,
    evaluations: Mapping[str, Sequence[Evaluation]],
    ablations: Mapping[str, AblationSummary],
    config: EvaluationConfig,
    seed: int,
    published: PublishedNumbers,
    runs: Mapping[str, str] | None = None,
) -> ReproductionTables:
    """Tables 3 and 4 of one reproduction.

    Args:
        name: the reproduction's name (the run config's name).
        evaluations: task -> each backbone's Evaluation (see table3_rows).
        ablations: task -> the ablation's summary (see table4_rows); empty without the ablation.
        config: the run's EvaluationConfig (bootstrap resamples, confidence level).
        seed: the run's seed.
        published: the paper's figures.
        runs: what -> run name, for provenance (shown in the card).

    Returns:
        The ReproductionTables (created_at: now, UTC).

    Raises:
        ValueError: as table3_rows and table4_rows.
    """
    return ReproductionTables(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        confidence_level=config.confidence_level,
        n_resamples=config.bootstrap_resamples,
        seed=seed,
        published_source=published.source,
        published_note=published.note,
        published_table4_backbone=published.table4_backbone,
        runs=dict(runs or {}),
        table3=table3_rows(evaluations, config, seed, published),
        table4=table4_rows(ablations, config.confidence_level, published),
    )


# ---------------------------------------------------------------- frames, Markdown, CSV


def _level(tables: ReproductionTables) -> str:
    return f"{tables.confidence_level * 100:g}%"


def _estimate_columns(title: str, estimate: Estimate, level: str) -> dict[str, float | None]:
    return {title: estimate.point, f"{title} {level} CI low": estimate.low, f"{title} {level} CI high": estimate.high}


def table3_frame(tables: ReproductionTables) -> pd.DataFrame:
    """Table 3 as a DataFrame: one row per task and backbone; every CI bound its own column (None: undefined).

    Args:
        tables: the reproduction's tables.

    Returns:
        Columns Task, Backbone, Test images, Test patients, Decision, Accuracy, its CI bounds,
        Published accuracy, F1 (macro), its CI bounds, Published F1.
    """
    level = _level(tables)
    records = []
    for row in tables.table3:
        records.append(
            {
                "Task": row.task,
                "Backbone": row.backbone,
                "Test images": row.n_images,
                "Test patients": row.n_patients,
                "Decision": row.decision,
                **_estimate_columns("Accuracy", row.accuracy, level),
                "Published accuracy": row.published_accuracy,
                **_estimate_columns("F1 (macro)", row.f1, level),
                "Published F1": row.published_f1,
            }
        )
    return pd.DataFrame.from_records(records, columns=_table3_columns(level))


def _table3_columns(level: str) -> list[str]:
    return [
        "Task",
        "Backbone",
        "Test images",
        "Test patients",
        "Decision",
        "Accuracy",
        f"Accuracy {level} CI low",
        f"Accuracy {level} CI high",
        "Published accuracy",
        "F1 (macro)",
        f"F1 (macro) {level} CI low",
        f"F1 (macro) {level} CI high",
        "Published F1",
    ]


def table4_frame(tables: ReproductionTables) -> pd.DataFrame:
    """Table 4 as a DataFrame: one row per task and ablation variant; every CI bound its own column.

    Args:
        tables: the reproduction's tables.

    Returns:
        Columns Task, Backbone, Variant, Test images, F1 (macro), its CI bounds, Published F1,
        Δ F1 vs full, its paired CI bounds, Published Δ F1.
    """
    level = _level(tables)
    columns = [
        "Task",
        "Backbone",
        "Variant",
        "Test images",
        F1_COLUMN,
        f"{F1_COLUMN} {level} CI low",
        f"{F1_COLUMN} {level} CI high",
        "Published F1",
        DELTA_COLUMN,
        f"{DELTA_COLUMN} {level} CI low",
        f"{DELTA_COLUMN} {level} CI high",
        "Published Δ F1",
    ]
    records = [
        {
            "Task": row.task,
            "Backbone": row.backbone,
            "Variant": row.label,
            "Test images": row.n_images,
            **_estimate_columns(F1_COLUMN, row.f1, level),
            "Published F1": row.published_f1,
            **_estimate_columns(DELTA_COLUMN, row.delta, level),
            "Published Δ F1": row.published_delta,
        }
        for row in tables.table4
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV text: floats to 6 decimals, an undefined value (None, NaN) as an empty field.

    Args:
        frame: table3_frame or table4_frame.

    Returns:
        The CSV text, header first, no index column.
    """
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6f")
    return buffer.getvalue()


def _published(value: float | None, signed: bool = False) -> str:
    return NOT_PUBLISHED if value is None else _format(value, signed)


def _table3_cells(tables: ReproductionTables) -> tuple[list[str], list[list[str]]]:
    level = _level(tables)
    headers = [
        "Task",
        "Backbone",
        "Test images (patients)",
        f"Accuracy [{level} CI]",
        "Published accuracy",
        f"F1 (macro) [{level} CI]",
        "Published F1",
    ]
    rows = [
        [
            row.task,
            row.backbone,
            f"{row.n_images} ({row.n_patients if row.n_patients is not None else '?'})",
            row.accuracy.describe(),
            _published(row.published_accuracy),
            row.f1.describe(),
            _published(row.published_f1),
        ]
        for row in tables.table3
    ]
    return headers, rows


def _table4_cells(tables: ReproductionTables) -> tuple[list[str], list[list[str]]]:
    level = _level(tables)
    headers = [
        "Task",
        "Backbone",
        "Variant",
        f"F1 (macro) [{level} CI]",
        "Published F1",
        f"Δ F1 vs full [{level} paired CI]",
        "Published Δ F1",
    ]
    rows = [
        [
            row.task,
            row.backbone,
            row.label,
            row.f1.describe(),
            _published(row.published_f1),
            row.delta.describe(signed=True),
            _published(row.published_delta, signed=True),
        ]
        for row in tables.table4
    ]
    return headers, rows


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    align = "| " + " | ".join("---" if i < 3 else "---:" for i in range(len(headers))) + " |"
    return "\n".join([line(headers), align, *(line(row) for row in rows)]) + "\n"


def _uncertainty(tables: ReproductionTables) -> str:
    return (
        f"{_level(tables)} percentile intervals from {tables.n_resamples} stratified bootstrap resamples of "
        f"patients (a patient's images move together), seed {tables.seed}; Table 4's Δ intervals are paired "
        "(every variant scored on the same resamples)."
    )


def _published_text(tables: ReproductionTables) -> str:
    if tables.published_source:
        backbone = f" The paper ablated {tables.published_table4_backbone}." if tables.published_table4_backbone else ""
        return f"Published figures: {tables.published_source}.{backbone}"
    return f"Published figures: not available (configs/published/paper.yaml gives none); shown as {NOT_PUBLISHED}."


def to_markdown(tables: ReproductionTables) -> str:
    """Both tables as GitHub-flavoured Markdown, with how the intervals were computed and the figures' source.

    Args:
        tables: the reproduction's tables.

    Returns:
        Markdown text: a heading, Table 3, Table 4 (or a line saying the ablation was not run), notes.
    """
    parts = [
        f"## Reproduction '{tables.name}': the paper's Tables 3 and 4 (test split)",
        "",
        "### Table 3: accuracy and F1 per backbone and task",
        "",
        _markdown_table(*_table3_cells(tables)),
        "### Table 4: F1 and its difference from the full model per ablated feature",
        "",
        _markdown_table(*_table4_cells(tables)) if tables.table4 else "The ablation was not run.\n",
        f"CIs: {_uncertainty(tables)} F1 is macro-averaged over the task's classes. Accuracy tracks prevalence.",
        "",
        _published_text(tables),
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- the reproduction card (HTML)


def reproduction_html(tables: ReproductionTables) -> str:
    """The reproduction card: one self-contained HTML page with both tables; every string escaped.

    Args:
        tables: the reproduction's tables.

    Returns:
        The page (UTF-8 text): inline CSS, no scripts, no images, a Content-Security-Policy that
        forbids fetching anything.
    """
    title = f"Reproduction card: {tables.name}"
    identity = [
        ["reproduction", tables.name],
        ["created", tables.created_at],
        ["confidence intervals", _uncertainty(tables)],
        ["published figures", tables.published_source or "not available (configs/published/paper.yaml)"],
        *([["runs", "; ".join(f"{what}: {run}" for what, run in tables.runs.items())]] if tables.runs else []),
    ]
    if tables.published_note:
        identity.append(["note on the published figures", tables.published_note])
    parts = [
        *page_head(title, INTENDED_USE, identity),
        "<h2>Table 3: accuracy and F1 per backbone and task (test split)</h2>",
        '<p class="muted">Cells: point estimate [interval]. F1 is macro-averaged; accuracy tracks prevalence. '
        f"{_e(NOT_PUBLISHED)}: no published figure.</p>",
        _table(*_table3_cells(tables)),
        "<h2>Table 4: F1 and its difference from the full model per ablated feature (test split)</h2>",
    ]
    if tables.table4:
        parts.append(_table(*_table4_cells(tables)))
    else:
        parts.append('<p class="muted">The ablation was not run.</p>')
    parts.append(f'<p class="muted">The same content is in {_e(REPRODUCTION_JSON)}.</p></body></html>')
    return "\n".join(parts)


# ---------------------------------------------------------------- files


class ReproductionFiles(BaseModel):
    """Where one reproduction's files are."""

    folder: str
    markdown: str
    table3_csv: str
    table4_csv: str
    html: str
    json_file: str


def write_reproduction(tables: ReproductionTables, folder: str | Path) -> ReproductionFiles:
    """Write reproduction.md, table3.csv, table4.csv, reproduction_card.html and reproduction.json (UTF-8).

    Args:
        tables: the reproduction's tables.
        folder: where to write (created if missing); existing files are replaced.

    Returns:
        The paths written.

    Raises:
        OSError: the folder cannot be created or a file cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = ReproductionFiles(
        folder=str(folder),
        markdown=str(folder / REPRODUCTION_MARKDOWN),
        table3_csv=str(folder / REPRODUCTION_CSV_TABLE3),
        table4_csv=str(folder / REPRODUCTION_CSV_TABLE4),
        html=str(folder / REPRODUCTION_HTML),
        json_file=str(folder / REPRODUCTION_JSON),
    )
    Path(files.markdown).write_text(to_markdown(tables), encoding="utf-8")
    Path(files.table3_csv).write_text(to_csv(table3_frame(tables)), encoding="utf-8")
    Path(files.table4_csv).write_text(to_csv(table4_frame(tables)), encoding="utf-8")
    Path(files.html).write_text(reproduction_html(tables), encoding="utf-8")
    Path(files.json_file).write_text(tables.model_dump_json(indent=2), encoding="utf-8")
    return files
