"""Check names, their default severities, and the resolution of a config's overrides.

The lowest module of the validation package: it imports nothing of the
project, so the run-config schema (components.validation.settings) can check
severity overrides against the known check names without an import cycle.

Every check has a name and a default severity: "blocking" fails the report
(and stops the run at the data gate), "warning" is reported only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal

Severity = Literal["blocking", "warning"]
BLOCKING: Final = "blocking"
WARNING: Final = "warning"
SEVERITIES: tuple[Severity, ...] = (BLOCKING, WARNING)

# Columns every used row must fill (blank text counts as missing).
REQUIRED_COLUMNS: tuple[str, ...] = ("uri", "sha256", "label", "patient_id", "source")

FILES_READABLE = "files_readable"
LABEL_IN_TASK = "label_in_task"
MIN_WIDTH = "min_width"
MIN_HEIGHT = "min_height"
MODE_ALLOWED = "mode_allowed"
BIT_DEPTH_ALLOWED = "bit_depth_allowed"
ENOUGH_GRAY_LEVELS = "enough_gray_levels"
FRONTAL_VIEWS_ONLY = "frontal_views_only"
VIEWS_KNOWN = "views_known"
SHA256_UNIQUE = "sha256_unique"
NO_NEAR_DUPLICATES = "no_near_duplicates"
MIN_IMAGES_PER_CLASS = "min_images_per_class"
CLASS_BALANCE = "class_balance"
CLASS_SOURCE_DIVERSITY = "class_source_diversity"
AGE_GROUP_CONSISTENCY = "age_group_consistency"
SPLIT_VALUES_KNOWN = "split_values_known"
NO_PATIENT_IN_TWO_SPLITS = "no_patient_in_two_splits"
NO_NEAR_DUPLICATES_ACROSS_SPLITS = "no_near_duplicates_across_splits"
MIN_IMAGES_PER_SPLIT_CLASS = "min_images_per_split_class"


def not_null_check(column: str) -> str:
    """The name of the check that every used row fills `column`.

    Args:
        column: A manifest column of REQUIRED_COLUMNS, e.g. "uri".

    Returns:
        The check name, e.g. "uri_not_null".
    """
    return f"{column}_not_null"


# Report order of each validation, with the default severity.
MANIFEST_CHECKS: dict[str, Severity] = {
    FILES_READABLE: WARNING,  # such rows are excluded and listed; a warning says how many
    **{not_null_check(column): BLOCKING for column in REQUIRED_COLUMNS},
    LABEL_IN_TASK: BLOCKING,
    MIN_WIDTH: BLOCKING,
    MIN_HEIGHT: BLOCKING,
    MODE_ALLOWED: BLOCKING,
    BIT_DEPTH_ALLOWED: BLOCKING,
    ENOUGH_GRAY_LEVELS: WARNING,  # a squeezed window or a posterised export: worth a look, not a stop
    FRONTAL_VIEWS_ONLY: BLOCKING,
    VIEWS_KNOWN: WARNING,  # a blank view hides laterals from frontal_views_only: shown, not a stop
    SHA256_UNIQUE: BLOCKING,
    NO_NEAR_DUPLICATES: WARNING,
    MIN_IMAGES_PER_CLASS: BLOCKING,
    CLASS_BALANCE: WARNING,
    CLASS_SOURCE_DIVERSITY: WARNING,
    AGE_GROUP_CONSISTENCY: WARNING,
}
SPLIT_CHECKS: dict[str, Severity] = {
    SPLIT_VALUES_KNOWN: BLOCKING,
    NO_PATIENT_IN_TWO_SPLITS: BLOCKING,
    NO_NEAR_DUPLICATES_ACROSS_SPLITS: BLOCKING,  # leakage, like a patient in two splits
    MIN_IMAGES_PER_SPLIT_CLASS: BLOCKING,
}
DEFAULT_SEVERITY: dict[str, Severity] = {**MANIFEST_CHECKS, **SPLIT_CHECKS}
# Thresholds that ask for enough training data: skipped (reported as such) for an evaluation-only
# data drop, whose class counts and prevalence are what they are (components.splitting.EVALUATION).
TRAINING_THRESHOLDS: tuple[str, ...] = (MIN_IMAGES_PER_CLASS, CLASS_BALANCE, MIN_IMAGES_PER_SPLIT_CLASS)
MANIFEST_CHECK_NAMES: tuple[str, ...] = tuple(MANIFEST_CHECKS)
SPLIT_CHECK_NAMES: tuple[str, ...] = tuple(SPLIT_CHECKS)
CHECK_NAMES: tuple[str, ...] = MANIFEST_CHECK_NAMES + SPLIT_CHECK_NAMES


def resolve_severities(
    severity: Mapping[str, str] | None = None, warning_only: Iterable[str] = ()
) -> dict[str, Severity]:
    """The severity of every check: the defaults, then `warning_only`, then `severity`.

    Args:
        severity: Per-check overrides, {check name: "blocking" | "warning"}.
        warning_only: Check names to report as warnings only (shorthand for
            `severity: warning`).

    Returns:
        {check name: "blocking" | "warning"} for every name of CHECK_NAMES.

    Raises:
        ValueError: A name is not a check (the message lists the valid ones),
            a severity is neither "blocking" nor "warning", or a check is both
            in `warning_only` and set to "blocking".
    """
    severity = dict(severity or {})
    warning_only = list(warning_only)
    unknown = sorted((set(severity) | set(warning_only)) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(f"unknown validation check(s) {unknown}; valid checks: {list(CHECK_NAMES)}")
    bad = {name: value for name, value in severity.items() if value not in SEVERITIES}
    if bad:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {bad}")
    conflicting = sorted(name for name in warning_only if severity.get(name) == BLOCKING)
    if conflicting:
        raise ValueError(f"checks {conflicting} are in warning_only and set to 'blocking' in severity")
    resolved: dict[str, Severity] = dict(DEFAULT_SEVERITY)
    resolved.update(dict.fromkeys(warning_only, WARNING))
    resolved.update(severity)  # type: ignore[arg-type]  # values checked above
    return resolved
