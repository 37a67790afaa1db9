"""What a data steward reads: one JSON summary, one self-contained HTML page, the excluded rows as CSV.

Functions over the manifest, the split manifest and the two
ValidationReports (components.validation); nothing here touches GX, and only
``write_steward_report`` writes to disk.

* ``build_summary`` -> a ``StewardSummary`` (pydantic; ``model_dump(mode="json")``
  is summary.json): verdict and what blocked,
  counts, exclusions by reason, classes (counts, fractions), class x source,
  class x age group, class x split, class x external source (the held-out
  sources, evaluated only), exact and near-duplicate pairs (uris,
  distance, same patient?), patient and near-duplicate leaks across splits,
  every check with its severity and result, the Data Docs index.
  The summary also counts views per source (``views_by_source``,
  ``unknown_views``: a blank view cannot be checked for lateral images) and
  gives each source's root (``source_roots``: the folder its files share),
  against which the page shows paths.
* ``build_gallery`` -> a ``Gallery`` of small thumbnails (96 px JPEG, embedded
  as ``data:`` URIs): each near-duplicate pair side by side with its pHash
  distance, a sample of the excluded images of each reason, and a grid of
  sample images per class and source, so that a confounded or mislabelled
  drop shows at a glance. Samples are capped and drawn with a fixed seed, so
  the page stays small and loads fast with thousands of rows (measured in
  bench/results/steward_page.md). Only files that ingest read (a sha256 in the
  manifest) are opened; any other row, or a file that no longer decodes,
  shows a placeholder with the reason.
* ``render_html`` -> one HTML page with inline CSS and no external assets,
  scripts or fonts (thumbnails are ``data:`` URIs). Every value that comes
  from data (metadata, file names, findings, check details, paths) goes
  through ``html.escape``: dataset metadata is untrusted input and a finding
  such as ``<script>`` must show as text.
* ``excluded_rows`` / ``excluded_rows_csv`` -> the rows left out and why. The
  CSV is spreadsheet-safe: a cell starting with ``=``, ``+``, ``-``, ``@``,
  tab or carriage return is prefixed with an apostrophe (OWASP's advice
  against CSV formula injection), so a spreadsheet shows it as text instead
  of evaluating it. Programs reading the CSV back should strip that one
  leading apostrophe from such cells. Every field is quoted, so commas,
  quotes and line breaks inside values cannot shift or split rows.
* ``write_steward_report`` -> the three files (summary.html with its
  thumbnails, summary.json, excluded_rows.csv) in one folder.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

import pandas as pd
from pydantic import BaseModel

from components.labels import EXCLUDE_OUT_OF_TASK, EXCLUDE_UNKNOWN_FINDING, EXCLUDE_UNLABELLED, Task, labels_for_task
from components.manifest import relative_path, source_roots
from components.splitting import ALL_SPLITS, EVALUATION, EXTERNAL, SPLITS, TRAINING, DataPurpose
from components.validation import Record, Severity, ValidationReport, used_rows

EXCLUDED_COLUMNS: tuple[str, ...] = (
    "uri",
    "source",
    "patient_id",
    "finding",
    "view",
    "exclusion_reason",
    "exclusion_detail",
)
AGE_GROUPS: tuple[str, ...] = ("adult", "pediatric", "unknown")
SEXES: tuple[str, ...] = ("F", "M", "unknown")
# Rows shown per table in the HTML page (the JSON summary and CSV keep more).
HTML_MAX_ROWS = 500
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Exclusion reasons that come from the finding (listed with their findings), and how many findings to list.
FINDING_REASONS: tuple[str, ...] = (EXCLUDE_UNKNOWN_FINDING, EXCLUDE_OUT_OF_TASK, EXCLUDE_UNLABELLED)
MAX_FINDINGS = 50
# The files a steward reads, in the report folder.
SUMMARY_HTML = "summary.html"
SUMMARY_JSON = "summary.json"
EXCLUDED_ROWS_CSV = "excluded_rows.csv"
Verdict = Literal["PASSED", "PASSED WITH WARNINGS", "BLOCKED"]
# Views that say nothing (adapters write "unknown" for a blank metadata view).
UNKNOWN_VIEWS = frozenset({"", "unknown", "?"})
# Thumbnails of the page: longest side in pixels, and how many of each kind (sampled with GALLERY_SEED).
THUMBNAIL_PX = 96
THUMBNAIL_JPEG_QUALITY = 80
MAX_PAIRS_SHOWN = 24
EXCLUDED_PER_REASON = 6
SAMPLES_PER_CELL = 8
MAX_SAMPLE_THUMBNAILS = 360  # over all class x source cells: many sources get fewer per cell
GALLERY_SEED = 0


# ---------------------------------------------------------------- excluded rows and CSV


def excluded_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The excluded rows and why they were left out.

    Args:
        manifest: The manifest (every row).

    Returns:
        The rows with an exclusion reason, columns EXCLUDED_COLUMNS (uri, source, patient_id,
        finding, view, exclusion_reason, exclusion_detail), index reset.
    """
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    return manifest.loc[reason != "", list(EXCLUDED_COLUMNS)].reset_index(drop=True)


def spreadsheet_safe(value: Any) -> Any:
    """`value` with a leading apostrophe when it is text a spreadsheet would run as a formula.

    Args:
        value: A cell (any type; only text is changed).

    Returns:
        "'" + value for text starting with =, +, -, @, tab or carriage return; else `value` as is.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_csv(frame: pd.DataFrame) -> str:
    """CSV text of `frame` with every text cell (and header) passed through `spreadsheet_safe`.

    Args:
        frame: Any table.

    Returns:
        CSV text, every field quoted, LF line endings, no index column.
    """
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(spreadsheet_safe)
    safe.columns = [spreadsheet_safe(str(column)) for column in safe.columns]
    buffer = io.StringIO()
    # Every field quoted: a carriage return inside a value would otherwise split the row
    # (minimal quoting only looks for the "\n" line terminator).
    safe.to_csv(buffer, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    return buffer.getvalue()


def excluded_rows_csv(manifest: pd.DataFrame) -> str:
    """`excluded_rows` as spreadsheet-safe CSV text (see module doc).

    Args:
        manifest: The manifest (every row).

    Returns:
        CSV text with a header row of EXCLUDED_COLUMNS.
    """
    return safe_csv(excluded_rows(manifest))


# ---------------------------------------------------------------- summary


class CrosstabRow(BaseModel):
    """One row of a cross table: a class and its counts per column."""

    label: str
    counts: dict[str, int]  # column -> images
    total: int


class Crosstab(BaseModel):
    """Images per class (rows) and per source, age group or split (columns)."""

    columns: list[str]
    rows: list[CrosstabRow]
    totals: dict[str, int]  # column -> images over all rows


class ClassCount(BaseModel):
    """Used images of one class."""

    label: str
    count: int
    fraction: float  # of the used images, 4 decimals


class ExcludedFinding(BaseModel):
    """A finding left out by the label map, and how many rows carry it."""

    finding: str
    reason: str
    rows: int


class Counts(BaseModel):
    """Rows of the manifest, used and excluded, and images per split."""

    total: int
    used: int
    excluded: int
    patients: int  # among used rows
    sources: int  # among used rows
    splits: dict[str, int] | None  # split -> images; None before the split


class SummaryCheck(BaseModel):
    """One check of either validation, as a steward reads it."""

    stage: Literal["manifest", "split"]
    name: str
    severity: Severity
    passed: bool
    skipped: bool
    details: str


class DataDocs(BaseModel):
    """Paths of the Great Expectations Data Docs index (one site for both validations)."""

    index: str | None
    manifest: str | None
    split: str | None


class StewardSummary(BaseModel):
    """Everything a steward reads; `model_dump(mode="json")` is summary.json."""

    title: str = "Data steward report"
    task: Task
    labels: list[str]
    dataset_version: str | None
    generated_at: str  # ISO 8601, UTC, seconds
    success: bool  # False iff a blocking check failed
    verdict: Verdict
    split_checked: bool
    blocked_by: list[SummaryCheck]
    warnings: list[SummaryCheck]
    counts: Counts
    exclusions_by_reason: dict[str, int]  # reason -> rows
    excluded_findings: list[ExcludedFinding]
    classes: list[ClassCount]  # task labels first, then labels outside the task
    class_by_source: Crosstab
    class_by_age_group: Crosstab
    # A class drawn mostly from one sex lets a model learn anatomy instead of disease (manifest `sex`).
    class_by_sex: Crosstab | None = None
    class_by_split: Crosstab | None
    # Used images per view (rows; blank shown as "unknown") and source (columns).
    views_by_source: Crosstab | None = None
    # {source: used images whose view is unknown or blank}, every source of the used rows.
    unknown_views: dict[str, int] = {}
    # {source: the folder (or S3 prefix) all its rows' files share, ending in "/"}: paths on the page are shown
    # relative to it.
    source_roots: dict[str, str] = {}
    # What the drop is for (components.splitting): "evaluation" holds every image out (split "external").
    purpose: DataPurpose = TRAINING
    # Images per class and external source (split "external"); None when nothing is external.
    class_by_external_source: Crosstab | None = None
    # Pairs and leaks from the validation reports (components.validation.tables).
    exact_duplicates: list[Record]
    near_duplicates: list[Record]
    patient_leaks: list[Record]
    near_duplicate_leaks: list[Record]
    checks: list[SummaryCheck]
    data_docs: DataDocs


def _crosstab(
    frame: pd.DataFrame, rows: str, columns: str, row_order: Sequence[str], column_order: Sequence[str] | None = None
) -> Crosstab:
    counts = frame.groupby([rows, columns]).size() if len(frame) else pd.Series(dtype="int64")
    present = sorted({str(c) for _, c in counts.index}) if len(counts) else []
    column_order = list(column_order) if column_order is not None else present
    column_order += [c for c in present if c not in column_order]
    row_order = (
        list(row_order) + sorted({str(r) for r, _ in counts.index} - set(row_order)) if len(counts) else list(row_order)
    )
    table_rows = []
    for label in row_order:
        cells = {column: int(counts.get((label, column), 0)) for column in column_order}
        table_rows.append(CrosstabRow(label=label, counts=cells, total=sum(cells.values())))
    totals = {column: sum(row.counts[column] for row in table_rows) for column in column_order}
    return Crosstab(columns=column_order, rows=table_rows, totals=totals)


def _checks(report: ValidationReport | None) -> list[SummaryCheck]:
    if report is None:
        return []
    return [
        SummaryCheck(
            stage=report.stage,
            name=result.name,
            severity=result.severity,
            passed=result.success,
            skipped=result.skipped,
            details=result.details,
        )
        for result in report.results
    ]


def build_summary(
    manifest: pd.DataFrame,
    task: Task,
    manifest_report: ValidationReport,
    split_manifest: pd.DataFrame | None = None,
    split_report: ValidationReport | None = None,
    dataset_version: str | None = None,
    purpose: DataPurpose = TRAINING,
) -> StewardSummary:
    """Everything a steward reads (see module doc).

    Args:
        manifest: The manifest from ingest (every row).
        task: "binary" or "multiclass".
        manifest_report: `validate_manifest`'s report.
        split_manifest: Used rows with a `split` column; None before the split.
        split_report: `validate_split`'s report; None when the split was not checked.
        dataset_version: The data drop's version, shown in the header; None when not given.
        purpose: "training", or "evaluation" for an evaluation-only drop (shown in the header).

    Returns:
        The summary; its verdict is BLOCKED when a blocking check of either report failed.

    Raises:
        ValueError: The task is unknown or a manifest column is missing.
    """
    labels = list(labels_for_task(task))
    used = used_rows(manifest)
    reasons = manifest["exclusion_reason"].fillna("").astype(str)
    by_reason = reasons[reasons != ""].value_counts()

    checks = _checks(manifest_report) + _checks(split_report)
    blocked = [c for c in checks if not c.passed and c.severity == "blocking"]
    warnings = [c for c in checks if not c.passed and c.severity != "blocking"]
    verdict = "BLOCKED" if blocked else "PASSED WITH WARNINGS" if warnings else "PASSED"

    views = used["view"].fillna("").astype(str).str.strip()
    frame = pd.DataFrame(
        {
            "label": used["label"].fillna("").astype(str).to_numpy(),
            "source": used["source"].fillna("").astype(str).to_numpy(),
            "age_group": used["age_group"].fillna("").astype(str).replace("", "unknown").to_numpy(),
            "sex": used.get("sex", pd.Series("", index=used.index))
            .fillna("")
            .astype(str)
            .replace("", "unknown")
            .to_numpy(),
            "view": views.where(~views.str.lower().isin(UNKNOWN_VIEWS), "unknown").to_numpy(),
        }
    )
    unknown_views = {
        str(source): int((group["view"] == "unknown").sum()) for source, group in frame.groupby("source", sort=True)
    }
    class_counts = frame["label"].value_counts()
    classes = [
        ClassCount(
            label=label,
            count=int(class_counts.get(label, 0)),
            fraction=round(int(class_counts.get(label, 0)) / len(used), 4) if len(used) else 0.0,
        )
        for label in labels
    ]
    classes += [  # labels outside the task (label_in_task fails on them)
        ClassCount(label=str(label), count=int(n), fraction=round(int(n) / len(used), 4))
        for label, n in class_counts.items()
        if label not in labels
    ]

    class_by_split = None
    class_by_external_source = None
    split_counts = None
    if split_manifest is not None:
        split_frame = pd.DataFrame(
            {
                "label": split_manifest["label"].fillna("").astype(str).to_numpy(),
                "split": split_manifest["split"].fillna("").astype(str).to_numpy(),
                "source": split_manifest["source"].fillna("").astype(str).to_numpy(),
            }
        )
        # Training splits in order (none for an evaluation drop), then "external" when present.
        class_by_split = _crosstab(split_frame, "label", "split", labels, SPLITS if purpose == TRAINING else ())
        per_split = split_frame["split"].value_counts()
        order = [*(s for s in ALL_SPLITS if s in per_split.index), *(s for s in per_split.index if s not in ALL_SPLITS)]
        split_counts = {str(split): int(per_split[split]) for split in order}
        external = split_frame[split_frame["split"] == EXTERNAL]
        if len(external):
            class_by_external_source = _crosstab(external, "label", "source", labels)

    # Findings left out by the label map: what a steward may want to map next.
    findings = manifest.loc[reasons.isin(FINDING_REASONS), ["finding", "exclusion_reason"]].fillna("").astype(str)
    excluded_findings = [
        ExcludedFinding(finding=finding, reason=reason, rows=int(n))
        for (finding, reason), n in findings.value_counts().head(MAX_FINDINGS).items()
    ]

    manifest_listings = manifest_report.listings
    split_listings = split_report.listings if split_report else {}
    return StewardSummary(
        task=task,
        labels=labels,
        dataset_version=dataset_version,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        success=not blocked,
        verdict=verdict,
        split_checked=split_report is not None,
        blocked_by=blocked,
        warnings=warnings,
        counts=Counts(
            total=len(manifest),
            used=len(used),
            excluded=len(manifest) - len(used),
            patients=int(used["patient_id"].nunique()),
            sources=int(frame["source"].nunique()),
            splits=split_counts,
        ),
        exclusions_by_reason={str(reason): int(n) for reason, n in by_reason.items()},
        excluded_findings=excluded_findings,
        classes=classes,
        class_by_source=_crosstab(frame, "label", "source", labels),
        class_by_age_group=_crosstab(frame, "label", "age_group", labels, AGE_GROUPS),
        class_by_sex=_crosstab(frame, "label", "sex", labels, SEXES),
        class_by_split=class_by_split,
        views_by_source=_crosstab(frame, "view", "source", []),
        unknown_views=unknown_views,
        source_roots=source_roots(manifest),
        purpose=purpose,
        class_by_external_source=class_by_external_source,
        exact_duplicates=list(manifest_listings.get("exact_duplicates", [])),
        near_duplicates=list(manifest_listings.get("near_duplicates", [])),
        patient_leaks=list(split_listings.get("patient_leaks", [])),
        near_duplicate_leaks=list(split_listings.get("near_duplicate_leaks", [])),
        checks=checks,
        data_docs=DataDocs(
            index=manifest_report.data_docs_index,
            manifest=manifest_report.data_docs_index,
            split=split_report.data_docs_index if split_report else None,
        ),
    )


# ---------------------------------------------------------------- thumbnails


@dataclass(frozen=True)
class Thumbnail:
    """One image of the page: its path relative to its source root, and its thumbnail or why there is none."""

    uri: str
    shown: str  # the path relative to its source's root
    image: str | None  # a data: URI (JPEG, longest side THUMBNAIL_PX); None: a placeholder
    note: str = ""  # why there is no image, or the exclusion detail


@dataclass(frozen=True)
class ThumbnailPair:
    """A near-duplicate pair side by side."""

    a: Thumbnail
    b: Thumbnail
    distance: int  # pHash Hamming distance in bits
    same_patient: bool


@dataclass
class Gallery:
    """The thumbnails of the steward page (build_gallery); not part of summary.json."""

    pairs: list[ThumbnailPair] = field(default_factory=list)
    pairs_total: int = 0
    excluded: dict[str, list[Thumbnail]] = field(default_factory=dict)  # reason -> sample
    excluded_totals: dict[str, int] = field(default_factory=dict)  # reason -> rows
    samples: dict[tuple[str, str], list[Thumbnail]] = field(default_factory=dict)  # (label, source) -> sample
    sample_totals: dict[tuple[str, str], int] = field(default_factory=dict)  # (label, source) -> used images

    def thumbnails(self) -> list[Thumbnail]:
        """Every thumbnail of the gallery, pairs first.

        Returns:
            The thumbnails in page order.
        """
        found = [thumb for pair in self.pairs for thumb in (pair.a, pair.b)]
        found += [thumb for sample in self.excluded.values() for thumb in sample]
        return found + [thumb for sample in self.samples.values() for thumb in sample]


def thumbnail_data_uri(data: bytes, name: str, size: int = THUMBNAIL_PX) -> str:
    """A small JPEG of an image file, as a ``data:`` URI, decoded as training sees it.

    Args:
        data: The file's bytes (PNG, JPEG, DICOM... anything components.imaging decodes).
        name: The file, for the error message.
        size: Longest side of the thumbnail in pixels (aspect ratio kept; never enlarged).

    Returns:
        ``data:image/jpeg;base64,...`` of an 8-bit grayscale JPEG.

    Raises:
        components.imaging.ImageDecodeError: The bytes do not decode.
    """
    from PIL import Image

    from components.imaging import decode_image_bytes

    image = Image.fromarray(decode_image_bytes(data, name))
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_thumbnail(uri: str) -> tuple[str | None, str]:
    """(data URI, "") of a file, or (None, why) when it cannot be read or decoded."""
    from components.errors import CxrError
    from components.storage import read_bytes

    try:
        return thumbnail_data_uri(read_bytes(uri), uri), ""
    except CxrError as error:  # missing, unreadable, not decodable: the page shows why
        return None, str(error).removeprefix(f"{uri}: ").removeprefix(uri).strip() or type(error).__name__
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


def _sample(frame: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """Up to `count` rows, drawn with `seed`, in manifest order; rows whose file was read first."""
    if len(frame) <= count:
        return frame
    readable = frame[frame["sha256"].astype(str) != ""]
    chosen = readable.sample(n=min(count, len(readable)), random_state=seed)
    if len(chosen) < count:
        rest = frame.drop(index=readable.index)
        chosen = pd.concat([chosen, rest.sample(n=count - len(chosen), random_state=seed)])
    return chosen.sort_index()


def build_gallery(
    summary: StewardSummary,
    manifest: pd.DataFrame,
    *,
    max_pairs: int = MAX_PAIRS_SHOWN,
    per_reason: int = EXCLUDED_PER_REASON,
    per_cell: int = SAMPLES_PER_CELL,
    max_samples: int = MAX_SAMPLE_THUMBNAILS,
    seed: int = GALLERY_SEED,
    workers: int = 4,
) -> Gallery:
    """The thumbnails of the steward page: near-duplicate pairs, excluded images by reason, classes by source.

    Only files that ingest read (a sha256 in the manifest) are opened, each once, by `workers`
    threads; a row that was never read (outside the root, not an image, missing) or a file that
    does not decode shows a placeholder saying why. Samples are drawn with `seed`.

    Args:
        summary: The steward summary (build_summary) of `manifest`.
        manifest: The manifest (every row).
        max_pairs: Near-duplicate pairs shown (the closest first, as listed in the summary).
        per_reason: Excluded images shown per exclusion reason.
        per_cell: Used images shown per class and source.
        max_samples: Cap over all class x source cells (per_cell shrinks when there are many cells).
        seed: Seed of the samples.
        workers: Threads reading and decoding files.

    Returns:
        The Gallery.
    """
    roots = summary.source_roots or source_roots(manifest)
    frame = manifest.assign(
        uri=manifest["uri"].fillna("").astype(str),
        source=manifest["source"].fillna("").astype(str),
        sha256=manifest["sha256"].fillna("").astype(str),
        exclusion_reason=manifest["exclusion_reason"].fillna("").astype(str),
    )
    readable = set(frame.loc[frame["sha256"] != "", "uri"])
    gallery = Gallery(pairs_total=len(summary.near_duplicates))

    wanted: list[tuple[str, str, str]] = []  # (uri, source, note) in page order
    pairs = summary.near_duplicates[:max_pairs]
    for pair in pairs:
        wanted += [(str(pair.get("uri_a", "")), str(pair.get("source_a", "")), "")]
        wanted += [(str(pair.get("uri_b", "")), str(pair.get("source_b", "")), "")]
    excluded = frame[frame["exclusion_reason"] != ""]
    excluded_rows_by_reason = {}
    for reason in summary.exclusions_by_reason:
        rows = excluded[excluded["exclusion_reason"] == reason]
        excluded_rows_by_reason[reason] = _sample(rows, per_reason, seed)
        gallery.excluded_totals[reason] = len(rows)
    used = frame[frame["exclusion_reason"] == ""]
    cells = {(str(label), str(source)): rows for (label, source), rows in used.groupby(["label", "source"])}
    cell_count = max(1, min(per_cell, max_samples // max(1, len(cells))))
    sample_rows = {key: _sample(rows, cell_count, seed) for key, rows in cells.items()}
    gallery.sample_totals = {key: len(rows) for key, rows in cells.items()}
    for rows in [*excluded_rows_by_reason.values(), *sample_rows.values()]:
        wanted += list(zip(rows["uri"], rows["source"], [""] * len(rows), strict=True))

    to_read = sorted({uri for uri, _, _ in wanted if uri in readable})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        images = dict(zip(to_read, pool.map(_read_thumbnail, to_read), strict=True))

    def thumb(uri: str, source: str, note: str = "") -> Thumbnail:
        image, why = images.get(uri, (None, "not read at ingest" if uri else "no file"))
        return Thumbnail(uri=uri, shown=relative_path(uri, source, roots) or "(no file)", image=image, note=note or why)

    for pair in pairs:
        gallery.pairs.append(
            ThumbnailPair(
                a=thumb(str(pair.get("uri_a", "")), str(pair.get("source_a", ""))),
                b=thumb(str(pair.get("uri_b", "")), str(pair.get("source_b", ""))),
                distance=int(pair.get("distance", 0) or 0),
                same_patient=bool(pair.get("same_patient")),
            )
        )
    for reason, rows in excluded_rows_by_reason.items():
        gallery.excluded[reason] = [
            thumb(uri, source, str(detail))
            for uri, source, detail in zip(rows["uri"], rows["source"], rows["exclusion_detail"], strict=True)
        ]
    for key, rows in sample_rows.items():
        gallery.samples[key] = [thumb(uri, source) for uri, source in zip(rows["uri"], rows["source"], strict=True)]
    return gallery


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;color:#1d2733;
line-height:1.4;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.banner{padding:1rem 1.2rem;border-radius:6px;font-size:1.2rem;font-weight:600;margin:1rem 0}
.PASSED{background:#dafbe1;border:1px solid #4ac26b}.WARN{background:#fff8c5;border:1px solid #d4a72c}
.BLOCKED{background:#ffebe9;border:1px solid #ff8182}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #d0d7de;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#ffebe9}tr.warn td{background:#fff8c5}.muted{color:#57606a}.mono{font-family:monospace;
word-break:break-all}ul{margin:.3rem 0}
.strip{display:flex;flex-wrap:wrap;gap:.4rem;margin:.3rem 0 1rem}
figure{margin:0;width:6.5rem;font-size:.7rem;word-break:break-all;color:#57606a}
figure img,.ph{width:6rem;height:6rem;object-fit:contain;background:#000;border:1px solid #d0d7de;display:block}
.ph{background:#f6f8fa;color:#57606a;display:flex;align-items:center;justify-content:center;text-align:center;
font-size:.65rem;overflow:hidden}
.pair{display:inline-flex;gap:.3rem;padding:.3rem;margin:0 .4rem .6rem 0;border:1px solid #d0d7de;border-radius:4px;
vertical-align:top}.pair .d{font-size:.8rem;align-self:center;width:4.5rem;text-align:center}
td.cell{min-width:7rem}td.cell .strip{margin:0}
"""


class _Html(str):
    """Markup this module wrote itself (every data value inside already escaped): not escaped again."""


def _e(value: Any) -> str:
    """Escaped text of any value (quotes too: values also land in attributes); _Html as is."""
    if isinstance(value, _Html):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def _href(path: str | None, link_base: str | Path | None) -> str | None:
    """A safe link to a local file (file:// or relative) or an http(s) URL; None for anything else."""
    if not path:
        return None
    text = str(path)
    if text.startswith(("http://", "https://")):
        return text
    if "://" in text or text.lower().startswith(("javascript:", "data:", "vbscript:")):
        return None
    if link_base is not None:
        return quote(os.path.relpath(text, str(link_base)).replace(os.sep, "/"))
    return Path(text).as_uri() if os.path.isabs(text) else quote(text)


def _link(path: str | None, link_base: str | Path | None) -> str:
    href = _href(path, link_base)
    if href is None:
        return _e(path)
    return f'<a href="{_e(href)}">{_e(path)}</a>'


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Sequence[int] = (),
    row_classes: Sequence[str] | None = None,
    total: int | None = None,
) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows[:HTML_MAX_ROWS]):
        css = f' class="{_e(row_classes[index])}"' if row_classes and row_classes[index] else ""
        cells = "".join(
            f'<td class="n">{_e(cell)}</td>' if i in numeric else f"<td>{_e(cell)}</td>" for i, cell in enumerate(row)
        )
        body.append(f"<tr{css}>{cells}</tr>")
    shown = min(len(rows), HTML_MAX_ROWS)
    count = total if total is not None else len(rows)
    note = f'<p class="muted">{shown} of {count} rows shown; all are in summary.json.</p>' if count > shown else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _crosstab_html(table: Crosstab | None, first: str) -> str:
    if not table:
        return '<p class="muted">Not available.</p>'
    headers = [first, *table.columns, "total"]
    rows = [[row.label, *(row.counts[c] for c in table.columns), row.total] for row in table.rows]
    rows.append(["total", *(table.totals[c] for c in table.columns), sum(table.totals.values())])
    return _table(headers, rows, numeric=range(1, len(headers)))


def _pairs_html(
    pairs: list[Record], with_split: bool = False, exact: bool = False, roots: Mapping[str, str] | None = None
) -> str:
    headers = ["image A", "image B", "distance", "same patient", "patients", "sources"]
    if with_split:
        headers.append("splits")
    if exact:
        headers.append("B already excluded")
    rows = []
    for pair in pairs:
        row = [
            _Html(_shown(pair.get("uri_a"), pair.get("source_a"), roots or {})),
            _Html(_shown(pair.get("uri_b"), pair.get("source_b"), roots or {})),
            pair.get("distance"),
            "yes" if pair.get("same_patient") else "no",
            f"{pair.get('patient_a')} / {pair.get('patient_b')}",
            f"{pair.get('source_a')} / {pair.get('source_b')}",
        ]
        if with_split:
            row.append(f"{pair.get('split_a')} / {pair.get('split_b')}")
        if exact:
            row.append("yes" if pair.get("excluded") else "no")
        rows.append(row)
    return _table(headers, rows, numeric=(2,))


def _shown(uri: Any, source: Any, roots: Mapping[str, str]) -> str:
    """A path relative to its source root, the full uri in the title (both escaped)."""
    uri = "" if uri is None else str(uri)
    return f'<span title="{_e(uri)}">{_e(relative_path(uri, str(source), roots))}</span>'


def _figure(thumb: Thumbnail, caption: str | None = None) -> str:
    caption = thumb.shown if caption is None else caption
    title = f"{thumb.uri}: {thumb.note}" if thumb.note else thumb.uri
    if thumb.image:
        picture = f'<img alt="{_e(thumb.shown)}" src="{_e(thumb.image)}" title="{_e(title)}" decoding="async">'
    else:
        picture = f'<div class="ph" title="{_e(title)}">no preview<br>{_e(thumb.note[:60])}</div>'
    return f"<figure>{picture}<figcaption>{_e(caption)}</figcaption></figure>"


def _strip(thumbs: Sequence[Thumbnail], captions: Sequence[str] | None = None) -> str:
    if not thumbs:
        return '<p class="muted">None.</p>'
    figures = (_figure(t, captions[i] if captions else None) for i, t in enumerate(thumbs))
    return f'<div class="strip">{"".join(figures)}</div>'


def _pairs_gallery_html(gallery: Gallery) -> str:
    if not gallery.pairs:
        return ""
    shown = (
        f"{len(gallery.pairs)} closest of {gallery.pairs_total} pairs shown"
        if gallery.pairs_total > len(gallery.pairs)
        else f"{len(gallery.pairs)} pair(s)"
    )
    parts = [f'<h3>Side by side</h3><p class="muted">{_e(shown)}; the distance is in pHash bits.</p><div>']
    for pair in gallery.pairs:
        same = "<br>same patient" if pair.same_patient else ""
        parts.append(
            f'<div class="pair">{_figure(pair.a)}<div class="d">distance {_e(pair.distance)}{same}</div>'
            f"{_figure(pair.b)}</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _excluded_gallery_html(gallery: Gallery) -> str:
    if not gallery.excluded:
        return ""
    parts = [
        '<h3>Excluded images, a sample per reason</h3><p class="muted">Hover an image for its exclusion detail.</p>'
    ]
    for reason, thumbs in gallery.excluded.items():
        total = gallery.excluded_totals.get(reason, len(thumbs))
        parts.append(f"<h4>{_e(reason)} ({len(thumbs)} of {total} shown)</h4>")
        parts.append(_strip(thumbs))
    return "".join(parts)


def _samples_gallery_html(gallery: Gallery, summary: StewardSummary) -> str:
    if not gallery.samples:
        return ""
    sources = sorted({source for _, source in gallery.samples})
    labels = [c.label for c in summary.classes if any((c.label, s) in gallery.samples for s in sources)]
    labels += sorted({label for label, _ in gallery.samples} - set(labels))
    head = "".join(f"<th>{_e(source)}</th>" for source in sources)
    body = []
    for label in labels:
        cells = []
        for source in sources:
            thumbs = gallery.samples.get((label, source), [])
            total = gallery.sample_totals.get((label, source), 0)
            note = f'<div class="muted">{len(thumbs)} of {total}</div>' if thumbs else ""
            cells.append(f'<td class="cell">{_strip(thumbs) if thumbs else ""}{note}</td>')
        body.append(f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>")
    return (
        '<h3>Sample images per class and source</h3><p class="muted">Used images, sampled with a fixed seed. '
        "A class whose images look different in one source (borders, text, contrast, age) is a shortcut a "
        "model will learn.</p>"
        f"<table><thead><tr><th>class</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _views_html(summary: StewardSummary) -> str:
    parts = []
    unknown = {source: n for source, n in summary.unknown_views.items() if n}
    if unknown:
        used_by_source = summary.views_by_source.totals if summary.views_by_source else {}
        listed = ", ".join(f"{source}: {n} of {used_by_source.get(source, n)}" for source, n in unknown.items())
        parts.append(
            f"<p><b>Unknown or blank view</b> ({_e(listed)} used images): lateral images among them cannot "
            "be told apart and stay in.</p>"
        )
    else:
        parts.append('<p class="muted">Every used image has a view.</p>')
    parts.append(_crosstab_html(summary.views_by_source, "view"))
    return "".join(parts)


_EVALUATION_NOTE = " (every image held out as external: not split, no training thresholds)"


def render_html(summary: StewardSummary, link_base: str | Path | None = None, gallery: Gallery | None = None) -> str:
    """One self-contained HTML page for `summary` (from build_summary); every data value escaped.

    Args:
        summary: The steward summary.
        link_base: The folder the page will be saved in: Data Docs links are then relative to it;
            when None they are file:// URIs of the absolute paths.
        gallery: Its thumbnails (build_gallery), embedded as data: URIs; None: a page without images.

    Returns:
        The page (UTF-8 text): inline CSS, no scripts, no external assets. Paths are shown relative
        to their source's root (summary.source_roots), the full uri in their title.
    """
    gallery = gallery or Gallery()
    roots = summary.source_roots
    verdict = summary.verdict
    banner_class = "BLOCKED" if verdict == "BLOCKED" else "WARN" if summary.warnings else "PASSED"
    counts = summary.counts
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(summary.title)}: {_e(verdict)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(summary.title)}</h1>",
        f'<p class="muted">Task {_e(summary.task)} (labels {_e(", ".join(summary.labels))}); '
        f"dataset version {_e(summary.dataset_version or 'not given')}; "
        f"generated {_e(summary.generated_at)}; purpose {_e(summary.purpose)}"
        f"{_EVALUATION_NOTE if summary.purpose == EVALUATION else ''}.</p>",
        f'<div class="banner {banner_class}">{_e(verdict)}: '
        f"{len(summary.blocked_by)} blocking failure(s), {len(summary.warnings)} warning(s)"
        f"{'' if summary.split_checked else '; split not checked yet'}</div>",
    ]
    if summary.blocked_by:
        parts.append("<h2>What blocked the run</h2><ul>")
        parts += [f"<li><b>{_e(c.stage)} / {_e(c.name)}</b>: {_e(c.details)}</li>" for c in summary.blocked_by]
        parts.append("</ul>")
    if summary.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f"<li><b>{_e(c.stage)} / {_e(c.name)}</b>: {_e(c.details)}</li>" for c in summary.warnings]
        parts.append("</ul>")

    parts.append("<h2>Counts</h2>")
    count_rows = [
        ["rows in manifest", counts.total],
        ["used", counts.used],
        ["excluded", counts.excluded],
        ["patients (used rows)", counts.patients],
        ["sources (used rows)", counts.sources],
    ]
    for split, n in (counts.splits or {}).items():
        count_rows.append([f"split {split}", n])
    parts.append(_table(["", "count"], count_rows, numeric=(1,)))
    parts.append("<h2>Exclusions by reason</h2>")
    parts.append(_table(["reason", "rows"], list(summary.exclusions_by_reason.items()), numeric=(1,)))
    parts.append(_excluded_gallery_html(gallery))

    parts.append("<h2>Findings left out (most frequent first)</h2>")
    parts.append(
        _table(
            ["finding", "reason", "rows"],
            [[f.finding or "(blank)", f.reason, f.rows] for f in summary.excluded_findings],
            numeric=(2,),
        )
    )
    parts.append("<h2>Classes</h2>")
    parts.append(
        _table(
            ["class", "images", "fraction"],
            [[c.label, c.count, f"{c.fraction:.1%}"] for c in summary.classes],
            numeric=(1, 2),
        )
    )
    parts.append("<h2>Class &times; source</h2>")
    parts.append(
        '<p class="muted">A class that comes from one source while there are several lets a model '
        "learn the source instead of the disease.</p>"
    )
    parts.append(_crosstab_html(summary.class_by_source, "class"))
    parts.append(_samples_gallery_html(gallery, summary))
    parts.append("<h2>Views</h2>")
    parts.append(_views_html(summary))
    parts.append("<h2>Class &times; age group</h2>")
    parts.append(_crosstab_html(summary.class_by_age_group, "class"))
    if summary.class_by_sex is not None:
        parts.append("<h2>Class &times; sex</h2>")
        parts.append(_crosstab_html(summary.class_by_sex, "class"))
    parts.append("<h2>Class &times; split</h2>")
    parts.append(_crosstab_html(summary.class_by_split, "class"))
    if summary.class_by_external_source is not None:
        parts.append("<h2>Class &times; external source</h2>")
        parts.append(
            '<p class="muted">External images are evaluated only: never trained on, augmented or used '
            "for early stopping, model selection or the threshold.</p>"
        )
        parts.append(_crosstab_html(summary.class_by_external_source, "class"))

    parts.append("<h2>Checks</h2>")
    check_rows, check_classes = [], []
    for c in summary.checks:
        result = "skipped" if c.skipped else "passed" if c.passed else "FAILED"
        check_rows.append([c.stage, c.name, c.severity, result, c.details])
        check_classes.append("" if c.passed else "fail" if c.severity == "blocking" else "warn")
    parts.append(_table(["stage", "check", "severity", "result", "details"], check_rows, row_classes=check_classes))

    parts.append("<h2>Exact duplicates (same bytes)</h2>")
    parts.append(_pairs_html(summary.exact_duplicates, exact=True, roots=roots))
    parts.append("<h2>Near-duplicates (pHash)</h2>")
    parts.append(_pairs_html(summary.near_duplicates, roots=roots))
    parts.append(_pairs_gallery_html(gallery))
    parts.append("<h2>Leaks across splits</h2><h3>Patients in several splits</h3>")
    parts.append(
        _table(
            ["patient", "splits", "images"],
            [[p.get("patient_id"), p.get("splits"), p.get("n_images")] for p in summary.patient_leaks],
            numeric=(2,),
        )
    )
    parts.append("<h3>Near-duplicate pairs across splits</h3>")
    parts.append(_pairs_html(summary.near_duplicate_leaks, with_split=True, roots=roots))

    docs = summary.data_docs
    parts.append("<h2>Great Expectations Data Docs</h2><ul>")
    parts.append(f"<li>Index (manifest and split validations): {_link(docs.index, link_base)}</li>")
    if docs.split and docs.split != docs.index:
        parts.append(f"<li>Split validation: {_link(docs.split, link_base)}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- terminal


def summary_text(summary: StewardSummary) -> str:
    """A few plain-text lines of `summary` for a terminal (the CLI's `validate` output).

    Args:
        summary: The steward summary.

    Returns:
        Lines joined by newlines: verdict and counts, classes, exclusions, duplicates and leaks,
        each failed check, the Data Docs index.
    """
    counts = summary.counts
    version = summary.dataset_version
    lines = [
        f"Data validation {summary.verdict} (task {summary.task}"
        f"{', evaluation data' if summary.purpose == EVALUATION else ''}"
        f"{f', dataset version {version}' if version else ''}): {counts.total} rows, {counts.used} used, "
        f"{counts.excluded} excluded; {len(summary.blocked_by)} blocking failure(s), "
        f"{len(summary.warnings)} warning(s)" + ("" if summary.split_checked else "; split not checked"),
        "Classes:    " + ", ".join(f"{c.label} {c.count} ({c.fraction:.1%})" for c in summary.classes),
    ]
    if summary.counts.splits:
        lines.append("Splits:     " + ", ".join(f"{split} {n}" for split, n in summary.counts.splits.items()))
    external = summary.class_by_external_source
    for source in external.columns if external else []:
        lines.append(
            f"External:   {source}: " + ", ".join(f"{row.label} {row.counts[source]}" for row in external.rows)
        )
    if summary.exclusions_by_reason:
        lines.append("Excluded:   " + ", ".join(f"{r} {n}" for r, n in summary.exclusions_by_reason.items()))
    unknown = {source: n for source, n in summary.unknown_views.items() if n}
    if unknown:
        lines.append(
            f"Views:      unknown for {sum(unknown.values())} of {counts.used} used images ("
            + ", ".join(f"{source} {n}" for source, n in unknown.items())
            + ")"
        )
    lines.append(
        f"Duplicates: {len(summary.exact_duplicates)} exact pair(s), {len(summary.near_duplicates)} "
        f"near-duplicate pair(s); leaks: {len(summary.patient_leaks)} patient(s) and "
        f"{len(summary.near_duplicate_leaks)} near-duplicate pair(s) across splits"
    )
    lines += [f"BLOCKING    {c.stage}/{c.name}: {c.details}" for c in summary.blocked_by]
    lines += [f"WARNING     {c.stage}/{c.name}: {c.details}" for c in summary.warnings]
    docs = summary.data_docs.index
    lines.append(f"Data Docs:  {docs or 'not built'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- files


class StewardFiles(NamedTuple):
    """The texts of the three files a steward reads."""

    html: str  # summary.html
    json: str  # summary.json
    csv: str  # excluded_rows.csv

    def by_name(self) -> dict[str, str]:
        """The texts by file name.

        Returns:
            {SUMMARY_HTML: html, SUMMARY_JSON: json, EXCLUDED_ROWS_CSV: csv}.
        """
        return {SUMMARY_HTML: self.html, SUMMARY_JSON: self.json, EXCLUDED_ROWS_CSV: self.csv}


def steward_files(summary: StewardSummary, manifest: pd.DataFrame, gallery: Gallery | None = None) -> StewardFiles:
    """The page (with its thumbnails), the JSON summary and the excluded rows, as text.

    Args:
        summary: The steward summary (from build_summary).
        manifest: The manifest it was built from (every row).
        gallery: The page's thumbnails; None: build_gallery(summary, manifest).

    Returns:
        The HTML page, `summary.model_dump(mode="json")` as indented JSON, and the spreadsheet-safe
        CSV of the excluded rows.
    """
    gallery = build_gallery(summary, manifest) if gallery is None else gallery
    return StewardFiles(
        html=render_html(summary, gallery=gallery),
        json=json.dumps(summary.model_dump(mode="json"), indent=2),
        csv=excluded_rows_csv(manifest),  # spreadsheet-safe (no formula injection)
    )


def write_steward_report(
    summary: StewardSummary, manifest: pd.DataFrame, folder: str | Path, gallery: Gallery | None = None
) -> StewardFiles:
    """Write summary.html, summary.json and excluded_rows.csv into `folder` (created if missing).

    Args:
        summary: The steward summary (from build_summary).
        manifest: The manifest it was built from (every row).
        folder: Where to write the three files (UTF-8); existing files are replaced.
        gallery: The page's thumbnails; None: build_gallery(summary, manifest).

    Returns:
        The texts written.

    Raises:
        OSError: The folder cannot be created or a file cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = steward_files(summary, manifest, gallery)
    for name, text in files.by_name().items():
        (folder / name).write_text(text, encoding="utf-8")
    return files
