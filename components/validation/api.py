"""The two validations and the gate: `validate_manifest`, `validate_split`, `raise_if_blocking`.

Each validation builds its tables (components.validation.tables), runs its
suites through Great Expectations (checks, gx) and returns a typed
ValidationReport. Neither raises for failed checks: the steward's report is
built from both first, and `raise_if_blocking` stops the run afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from components.labels import labels_for_task
from components.splitting import ALL_SPLITS, EVALUATION, EXTERNAL, SPLITS, TRAINING, DataPurpose
from components.validation.checks import Suite, manifest_suites, split_suites
from components.validation.gx import run_suites, skipped_result
from components.validation.report import (
    CheckResult,
    ManifestValidationError,
    SplitValidationError,
    ValidationReport,
)
from components.validation.settings import ValidationConfig
from components.validation.severities import (
    FRONTAL_VIEWS_ONLY,
    MANIFEST_CHECK_NAMES,
    SPLIT_CHECK_NAMES,
    TRAINING_THRESHOLDS,
    Severity,
)
from components.validation.tables import (
    MAX_LISTED,
    SPLIT_COLUMNS,
    class_table,
    exact_duplicate_listing,
    external_class_table,
    images_table,
    near_duplicate_table,
    records,
    require_columns,
    rows_table,
    split_class_table,
    split_images_table,
    split_patients_table,
    used_rows,
)


def _summary(title: str, facts: str, results: list[CheckResult], index: str) -> str:
    blocking = [r for r in results if not r.success and r.blocking]
    warnings = [r for r in results if not r.success and not r.blocking]
    verdict = "FAILED" if blocking else "PASSED"
    lines = [
        f"{title} {verdict}: {facts}, {len(results)} checks, "
        f"{len(blocking)} blocking failure(s), {len(warnings)} warning(s)."
    ]
    lines += [f"BLOCKING FAILED: {r.details}" for r in blocking]
    lines += [f"WARNING (not blocking): {r.details}" for r in warnings]
    lines.append(f"Data Docs: {index or 'not built'}")
    return "\n".join(lines)


def _passed(results: list[CheckResult]) -> bool:
    return all(r.success for r in results if r.blocking)


def _skipped_for_purpose(purpose: DataPurpose) -> tuple[str, ...]:
    """The checks a data drop of `purpose` is not held to (evaluation data: TRAINING_THRESHOLDS)."""
    if purpose not in (TRAINING, EVALUATION):
        raise ValueError(f"purpose must be {TRAINING!r} or {EVALUATION!r}, got {purpose!r}")
    return TRAINING_THRESHOLDS if purpose == EVALUATION else ()


def _without(suites: list[Suite], names: Collection[str]) -> list[Suite]:
    """`suites` less the checks named in `names` (a suite left without checks is not run)."""
    return [dataclasses.replace(s, checks=[c for c in s.checks if c.name not in names]) for s in suites]


def _skip(by_name: dict[str, CheckResult], names: Collection[str], severity: dict[str, Severity]) -> None:
    for name in names:
        if name in by_name:
            continue
        by_name[name] = skipped_result(
            name, severity[name], "evaluation data: training thresholds do not apply (purpose evaluation)"
        )


def validate_manifest(
    manifest: pd.DataFrame,
    task: str,
    docs_dir: str | Path,
    config: ValidationConfig | None = None,
    *,
    suite_name: str = "cxr_manifest",
    data_docs: bool = True,
    purpose: DataPurpose = TRAINING,
) -> ValidationReport:
    """Validate `manifest` (every row; used rows held to the contract) and build Data Docs into `docs_dir`.

    Never raises for failed checks: see `raise_if_blocking`.

    Args:
        manifest: The manifest from ingest, every column of components.manifest.MANIFEST_COLUMNS.
        task: "binary" or "multiclass": the labels a used row may have.
        docs_dir: Folder of the Data Docs site (shared with `validate_split`).
        config: The validation settings (the run config's `validation` section); defaults when None.
            Split-only settings are ignored here.
        suite_name: Name of the images suite; the other suites append a suffix.
        data_docs: Build the site (about half the time on small manifests); without it nothing
            is written and the report's `data_docs_index` is "".
        purpose: "training", or "evaluation" for an evaluation-only drop: the training thresholds
            (TRAINING_THRESHOLDS: images per class, class balance) are then skipped, marked so.

    Returns:
        The report: one result per check in MANIFEST_CHECK_NAMES order, exact and near-duplicate
        listings, the class table.

    Raises:
        ValueError: The task or purpose is unknown, or a manifest column is missing.
    """
    config = config or ValidationConfig()
    severity = config.severities()
    labels = labels_for_task(task)
    skipped = _skipped_for_purpose(purpose)
    used = used_rows(manifest)
    near = near_duplicate_table(used, config.near_duplicate_max_distance)
    classes = class_table(used, labels)
    suites = manifest_suites(
        suite_name,
        labels,
        config,
        severity,
        rows=rows_table(manifest),
        images=images_table(used),
        classes=classes,
        near=near,
        n_sources=int(used["source"].fillna("").astype(str).nunique()),
    )
    by_name, index = run_suites(docs_dir, "manifest", _without(suites, skipped), data_docs)
    _skip(by_name, skipped, severity)
    if not config.frontal_only:
        by_name[FRONTAL_VIEWS_ONLY] = skipped_result(
            FRONTAL_VIEWS_ONLY, severity[FRONTAL_VIEWS_ONLY], "frontal_only is false"
        )
    results = [by_name[name] for name in MANIFEST_CHECK_NAMES]  # GX does not keep the suite's order
    facts = f"{len(used)} used rows ({len(manifest) - len(used)} excluded)"
    title = f"Manifest validation for task {task!r}" + (" (evaluation data)" if purpose == EVALUATION else "")
    return ValidationReport(
        success=_passed(results),
        results=results,
        data_docs_index=index,
        summary=_summary(title, facts, results, index),
        stage="manifest",
        listings={
            "exact_duplicates": exact_duplicate_listing(manifest)[:MAX_LISTED],
            "near_duplicates": records(near),
        },
        tables={"classes": records(classes)},
    )


def validate_split(
    split_manifest: pd.DataFrame,
    task: str,
    docs_dir: str | Path,
    config: ValidationConfig | None = None,
    *,
    suite_name: str = "cxr_split",
    data_docs: bool = True,
    purpose: DataPurpose = TRAINING,
) -> ValidationReport:
    """Validate the split manifest (used rows + `split`): leaks and images per split and class.

    EXTERNAL rows (components.splitting) count as a held-out split for the leak checks (a patient
    or a near-duplicate shared with a training split is a leak) and are exempt from the per-split
    minimum; their counts per source and class are in the report's `external_classes` table.

    Never raises for failed checks: see `raise_if_blocking`.

    Args:
        split_manifest: Used rows with a `split` column (train, val, test or external).
        task: "binary" or "multiclass".
        docs_dir: Folder of the Data Docs site; give the same as `validate_manifest` so that
            both land in one site with one index.
        config: The validation settings; defaults when None. Manifest-only settings are ignored.
        suite_name: Prefix of the suites' names.
        data_docs: Build the site; without it the report's `data_docs_index` is "".
        purpose: "training", or "evaluation" for an evaluation-only drop: every row must then be
            EXTERNAL and the per-split minimum is skipped, marked so.

    Returns:
        The report: one result per check in SPLIT_CHECK_NAMES order, patient and near-duplicate
        leaks, the (split, class) table of the training splits and the (source, class) table of
        the external rows.

    Raises:
        ValueError: The task or purpose is unknown or a column of SPLIT_COLUMNS is missing.
    """
    config = config or ValidationConfig()
    severity = config.severities()
    labels = labels_for_task(task)
    skipped = _skipped_for_purpose(purpose)
    require_columns(split_manifest, SPLIT_COLUMNS, "split manifest")
    frame = split_manifest.reset_index(drop=True)
    patients = split_patients_table(frame)
    split_classes = split_class_table(frame, labels, SPLITS if purpose == TRAINING else ())
    near = near_duplicate_table(frame, config.near_duplicate_max_distance, extra=("split",))
    leaks = near[near["split_a"] != near["split_b"]].reset_index(drop=True)
    suites = split_suites(
        suite_name,
        config,
        severity,
        images=split_images_table(frame),
        patients=patients,
        split_classes=split_classes,
        leaks=leaks,
        splits=ALL_SPLITS if purpose == TRAINING else (EXTERNAL,),
    )
    by_name, index = run_suites(docs_dir, "split", _without(suites, skipped), data_docs)
    _skip(by_name, skipped, severity)
    results = [by_name[name] for name in SPLIT_CHECK_NAMES]
    counts = frame["split"].value_counts()
    shown = [
        *(SPLITS if purpose == TRAINING else ()),
        *((EXTERNAL,) if EXTERNAL in counts or purpose != TRAINING else ()),
    ]
    facts = f"{len(frame)} images ({', '.join(f'{s} {int(counts.get(s, 0))}' for s in shown)})"
    title = f"Split validation for task {task!r}" + (" (evaluation data)" if purpose == EVALUATION else "")
    return ValidationReport(
        success=_passed(results),
        results=results,
        data_docs_index=index,
        summary=_summary(title, facts, results, index),
        stage="split",
        listings={
            "patient_leaks": records(patients[patients["n_splits"] > 1].reset_index(drop=True)),
            "near_duplicate_leaks": records(leaks),
        },
        tables={
            "split_classes": records(split_classes),
            "external_classes": records(external_class_table(frame, labels)),
        },
    )


def raise_if_blocking(report: ValidationReport) -> None:
    """Stop the pipeline when a blocking check failed; the message says why and where (Data Docs).

    Args:
        report: A report of `validate_manifest` or `validate_split`.

    Raises:
        SplitValidationError: A blocking check of the split failed.
        ManifestValidationError: A blocking check of the manifest failed.
    """
    if not report.success:
        raise (SplitValidationError if report.stage == "split" else ManifestValidationError)(report)
