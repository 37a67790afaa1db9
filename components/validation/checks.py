"""The checks: one Great Expectations expectation per check, grouped into one suite per table.

Each ``Check`` pairs an expectation with what a steward needs to read its
failure (what an offending row is, how to quote one). ``manifest_suites`` and
``split_suites`` give the suites of each validation over the tables of
components.validation.tables; the expectation's ``meta`` carries the check's
name and severity, so results map back to checks. GX is imported inside the
functions: importing it takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from components.candidates import LATERAL_VIEWS
from components.labels import FILE_PROBLEM_REASONS
from components.splitting import ALL_SPLITS, EXTERNAL
from components.validation.settings import ValidationConfig
from components.validation.severities import (
    AGE_GROUP_CONSISTENCY,
    BIT_DEPTH_ALLOWED,
    BLOCKING,
    CLASS_BALANCE,
    CLASS_SOURCE_DIVERSITY,
    ENOUGH_GRAY_LEVELS,
    FILES_READABLE,
    FRONTAL_VIEWS_ONLY,
    LABEL_IN_TASK,
    MIN_HEIGHT,
    MIN_IMAGES_PER_CLASS,
    MIN_IMAGES_PER_SPLIT_CLASS,
    MIN_WIDTH,
    MODE_ALLOWED,
    NO_NEAR_DUPLICATES,
    NO_NEAR_DUPLICATES_ACROSS_SPLITS,
    NO_PATIENT_IN_TWO_SPLITS,
    REQUIRED_COLUMNS,
    SHA256_UNIQUE,
    SPLIT_VALUES_KNOWN,
    VIEWS_KNOWN,
    Severity,
    not_null_check,
)

# Exclusion reasons that mean the file itself is broken (checked by `files_readable`).
FILE_REASONS = FILE_PROBLEM_REASONS
# How many offending values/rows GX keeps per expectation (and we quote).
EXAMPLES = 5


@dataclass(frozen=True)
class Check:
    """One expectation plus what a steward needs to read its failure."""

    name: str
    expectation: Any  # a gx.expectations.Expectation
    problem: str  # what each offending row is, e.g. "rows narrower than 64 px"
    example: str = "{uri}"  # format string over a row of the validated frame
    quote_values: bool = True  # False where the values say nothing (booleans, counts)
    examples: tuple[str, ...] | None = None  # precomputed examples (table-level expectations)


@dataclass(frozen=True)
class Suite:
    """One GX expectation suite over one table (one page in Data Docs)."""

    asset: str  # the GX data asset, e.g. "images"
    name: str  # the suite's name, e.g. "cxr_manifest_classes"
    checks: list[Check]
    frame: pd.DataFrame  # the table validated


def expectation(cls: type, name: str, severity: Severity, why: str, **kwargs: Any) -> Any:
    """A GX expectation tagged with its check's name and severity.

    Args:
        cls: A class of great_expectations.expectations, e.g. ExpectColumnValuesToBeBetween.
        name: The check's name.
        severity: "blocking" (GX severity critical) or "warning".
        why: What the check asks for, shown in Data Docs.
        **kwargs: The expectation's own arguments (column, min_value...).

    Returns:
        The expectation, its `meta` holding check, severity and blocking.
    """
    from great_expectations.expectations.metadata_types import FailureSeverity

    blocking = severity == BLOCKING
    kind = "Blocking" if blocking else "Warning only"
    return cls(
        meta={"check": name, "severity": severity, "blocking": blocking},
        notes=f"{kind} ({name}): {why}",
        severity=FailureSeverity.CRITICAL if blocking else FailureSeverity.WARNING,
        **kwargs,
    )


def _pair_examples(pairs: pd.DataFrame, with_split: bool = False) -> tuple[str, ...]:
    examples = []
    for row in pairs.head(EXAMPLES).itertuples(index=False):
        text = f"{row.uri_a} ~ {row.uri_b} (distance {row.distance}"
        if with_split:
            text += f", {row.split_a}/{row.split_b}"
        examples.append(text + (", same patient)" if row.same_patient else ")"))
    return tuple(examples)


def _rows_checks(severity: dict[str, Severity]) -> list[Check]:
    import great_expectations.expectations as gxe

    return [
        Check(
            FILES_READABLE,
            expectation(
                gxe.ExpectColumnValuesToNotBeInSet,
                FILES_READABLE,
                severity[FILES_READABLE],
                "no manifest row was excluded because its file is missing or broken "
                "(such rows are excluded from training and listed for the steward).",
                column="exclusion_reason",
                value_set=list(FILE_REASONS),
            ),
            "rows excluded for a file problem",
            example="{uri} ({exclusion_reason})",
        )
    ]


def _image_checks(labels: Sequence[str], settings: ValidationConfig, severity: dict[str, Severity]) -> list[Check]:
    import great_expectations.expectations as gxe

    def check(
        name: str, cls: type, why: str, problem: str, example: str = "{uri}", quote: bool = True, **kw: Any
    ) -> Check:
        return Check(name, expectation(cls, name, severity[name], why, **kw), problem, example, quote)

    checks = [
        check(
            not_null_check(column),
            gxe.ExpectColumnValuesToNotBeNull,
            f"every used image has a {column} (blank text counts as missing).",
            f"rows without a {column}",
            example="row {row}" if column == "uri" else "{uri}",
            quote=False,
            column=column,
        )
        for column in REQUIRED_COLUMNS
    ]
    checks += [
        check(
            LABEL_IN_TASK,
            gxe.ExpectColumnValuesToBeInSet,
            "every used image has a label of the task.",
            f"rows with a label outside {list(labels)}",
            column="label",
            value_set=list(labels),
        ),
        check(
            MIN_WIDTH,
            gxe.ExpectColumnValuesToBeBetween,
            f"width >= {settings.min_width} px.",
            f"rows narrower than {settings.min_width} px",
            column="width",
            min_value=settings.min_width,
        ),
        check(
            MIN_HEIGHT,
            gxe.ExpectColumnValuesToBeBetween,
            f"height >= {settings.min_height} px.",
            f"rows shorter than {settings.min_height} px",
            column="height",
            min_value=settings.min_height,
        ),
        check(
            MODE_ALLOWED,
            gxe.ExpectColumnValuesToBeInSet,
            "PIL modes the decoder handles.",
            f"rows with a mode outside {list(settings.allowed_modes)}",
            column="mode",
            value_set=list(settings.allowed_modes),
        ),
        check(
            BIT_DEPTH_ALLOWED,
            gxe.ExpectColumnValuesToBeInSet,
            "bits per channel the decoder handles.",
            f"rows with a bit depth outside {list(settings.allowed_bit_depths)}",
            column="bit_depth",
            value_set=list(settings.allowed_bit_depths),
        ),
        check(
            ENOUGH_GRAY_LEVELS,
            gxe.ExpectColumnValuesToBeBetween,
            f"the 8-bit grayscale the models see uses at least {settings.min_gray_levels} distinct gray levels "
            "(fewer: a wide image squeezed by its window, or a posterised export).",
            f"rows using fewer than {settings.min_gray_levels} gray levels",
            example="{uri} ({gray_levels} levels)",
            column="gray_levels",
            min_value=settings.min_gray_levels,
        ),
    ]
    if settings.frontal_only:
        checks.append(
            check(
                FRONTAL_VIEWS_ONLY,
                gxe.ExpectColumnValuesToNotBeInSet,
                "frontal_only: no lateral view among used images (view compared case-insensitively).",
                "rows with a lateral view",
                column="view_normalised",
                value_set=sorted(LATERAL_VIEWS),
            )
        )
    checks.append(
        check(
            VIEWS_KNOWN,
            gxe.ExpectColumnValuesToNotBeInSet,
            f"at most {settings.max_unknown_view_fraction:.0%} of used images have a blank or unknown view "
            "(a lateral among them cannot be excluded; set the source's default_view when every image is frontal).",
            "rows with a blank or unknown view",
            column="view_normalised",
            value_set=["", "unknown", "?"],
            mostly=round(1 - settings.max_unknown_view_fraction, 6),
        )
    )
    checks.append(
        check(
            SHA256_UNIQUE,
            gxe.ExpectColumnValuesToBeUnique,
            "the same bytes twice would leak across splits (pairs listed in the report).",
            "rows sharing a sha256 with another row",
            column="sha256",
        )
    )
    return checks


def _class_checks(settings: ValidationConfig, severity: dict[str, Severity], n_sources: int) -> list[Check]:
    import great_expectations.expectations as gxe

    min_sources = min(2, n_sources) if n_sources else 1
    return [
        Check(
            MIN_IMAGES_PER_CLASS,
            expectation(
                gxe.ExpectColumnValuesToBeBetween,
                MIN_IMAGES_PER_CLASS,
                severity[MIN_IMAGES_PER_CLASS],
                f"each task label has at least {settings.min_images_per_class} used images.",
                column="count",
                min_value=settings.min_images_per_class,
            ),
            f"classes with fewer than {settings.min_images_per_class} images",
            "{label}={count}",
            False,
        ),
        Check(
            CLASS_BALANCE,
            expectation(
                gxe.ExpectColumnValuesToBeBetween,
                CLASS_BALANCE,
                severity[CLASS_BALANCE],
                f"each task label holds at least {settings.min_class_fraction:.0%} of the used images.",
                column="fraction",
                min_value=settings.min_class_fraction,
            ),
            f"classes under {settings.min_class_fraction:.0%} of the images",
            "{label}={fraction}",
            False,
        ),
        Check(
            CLASS_SOURCE_DIVERSITY,
            expectation(
                gxe.ExpectColumnValuesToBeBetween,
                CLASS_SOURCE_DIVERSITY,
                severity[CLASS_SOURCE_DIVERSITY],
                f"with several sources ({n_sources} here), no class comes from a single source: a model "
                "would learn the source, not the disease (shortcut learning).",
                column="n_sources",
                min_value=min_sources,
            ),
            f"classes from a single source while there are {n_sources} sources",
            "{label} only from {sources}",
            False,
        ),
        Check(
            AGE_GROUP_CONSISTENCY,
            expectation(
                gxe.ExpectColumnValuesToBeBetween,
                AGE_GROUP_CONSISTENCY,
                severity[AGE_GROUP_CONSISTENCY],
                f"the pediatric share (among images of known age group) differs by at most "
                f"{settings.max_age_group_gap:.0%} between classes: otherwise age predicts the class.",
                column="age_gap",
                max_value=settings.max_age_group_gap,
            ),
            f"classes whose pediatric share differs from another class's by more than {settings.max_age_group_gap:.0%}",
            "{label}: {pediatric_share:.0%} pediatric",
            False,
        ),
    ]


def _pairs_check(name: str, severity: dict[str, Severity], why: str, problem: str, examples: tuple[str, ...]) -> Check:
    import great_expectations.expectations as gxe

    rows_zero = expectation(gxe.ExpectTableRowCountToEqual, name, severity[name], why, value=0)
    return Check(name, rows_zero, problem, quote_values=False, examples=examples)


def manifest_suites(
    suite_name: str,
    labels: Sequence[str],
    config: ValidationConfig,
    severity: dict[str, Severity],
    *,
    rows: pd.DataFrame,
    images: pd.DataFrame,
    classes: pd.DataFrame,
    near: pd.DataFrame,
    n_sources: int,
) -> list[Suite]:
    """The four suites of the manifest validation, in report order.

    Args:
        suite_name: Name of the images suite; the others append _rows, _classes, _near_duplicates.
        labels: The task's labels.
        config: The validation settings.
        severity: The severity of every check (`config.severities()`).
        rows: `rows_table` of the manifest.
        images: `images_table` of the used rows.
        classes: `class_table` of the used rows.
        near: `near_duplicate_table` of the used rows.
        n_sources: Number of distinct sources among the used rows.

    Returns:
        The suites over rows, images, classes and near-duplicate pairs.
    """
    distance = config.near_duplicate_max_distance
    near_check = _pairs_check(
        NO_NEAR_DUPLICATES,
        severity,
        f"no two used images have pHashes within {distance} bits "
        "(re-encoded, resized or slightly edited copies), within a source or across sources.",
        f"near-duplicate pairs (pHash distance <= {distance})",
        _pair_examples(near),
    )
    return [
        Suite("rows", f"{suite_name}_rows", _rows_checks(severity), rows),
        Suite("images", suite_name, _image_checks(labels, config, severity), images),
        Suite("classes", f"{suite_name}_classes", _class_checks(config, severity, n_sources), classes),
        Suite("near_duplicates", f"{suite_name}_near_duplicates", [near_check], near),
    ]


def split_suites(
    suite_name: str,
    config: ValidationConfig,
    severity: dict[str, Severity],
    *,
    images: pd.DataFrame,
    patients: pd.DataFrame,
    split_classes: pd.DataFrame,
    leaks: pd.DataFrame,
    splits: Sequence[str] = ALL_SPLITS,
) -> list[Suite]:
    """The four suites of the split validation, in report order.

    Args:
        suite_name: Prefix of the suites' names (_images, _patients, _classes, _near_duplicates).
        config: The validation settings.
        severity: The severity of every check (`config.severities()`).
        images: `split_images_table` of the split manifest.
        patients: `split_patients_table` of the split manifest.
        split_classes: `split_class_table` of the split manifest.
        leaks: The rows of `near_duplicate_table(..., extra=("split",))` whose images sit in
            different splits.
        splits: The split values allowed (`split_values_known`): ALL_SPLITS, or only EXTERNAL for
            an evaluation-only data drop.

    Returns:
        The suites over images, patients, (split, class) cells and near-duplicate leaks.
    """
    import great_expectations.expectations as gxe

    def expect(name: str, cls: type, why: str, **kw: Any) -> Any:
        return expectation(cls, name, severity[name], why, **kw)

    m = config.min_images_per_split_class
    distance = config.near_duplicate_max_distance
    split_values = Check(
        SPLIT_VALUES_KNOWN,
        expect(
            SPLIT_VALUES_KNOWN,
            gxe.ExpectColumnValuesToBeInSet,
            f"every image is in one of {list(splits)}.",
            column="split",
            value_set=list(splits),
        ),
        f"rows outside the splits {list(splits)}",
    )
    one_split_per_patient = Check(
        NO_PATIENT_IN_TWO_SPLITS,
        expect(
            NO_PATIENT_IN_TWO_SPLITS,
            gxe.ExpectColumnValuesToBeBetween,
            "all images of a patient are in one split (patient leakage inflates test scores).",
            column="n_splits",
            max_value=1,
        ),
        "patients in several splits",
        "{patient_id} in {splits}",
        False,
    )
    images_per_cell = Check(
        MIN_IMAGES_PER_SPLIT_CLASS,
        expect(
            MIN_IMAGES_PER_SPLIT_CLASS,
            gxe.ExpectColumnValuesToBeBetween,
            f"every training split has at least {m} image(s) of every task label ({EXTERNAL} data is exempt).",
            column="count",
            min_value=m,
        ),
        f"(split, class) cells with fewer than {m} image(s)",
        "{split}/{label}={count}",
        False,
    )
    no_leaks = _pairs_check(
        NO_NEAR_DUPLICATES_ACROSS_SPLITS,
        severity,
        f"no near-duplicate pair (pHash distance <= {distance}) has its two "
        f"images in different splits: that is leakage, even between different patient ids ({EXTERNAL} counts "
        "as a held-out split: an external image that copies a training image inflates the external numbers).",
        f"near-duplicate pairs across splits (pHash distance <= {distance})",
        _pair_examples(leaks, with_split=True),
    )
    return [
        Suite("split_images", f"{suite_name}_images", [split_values], images),
        Suite("split_patients", f"{suite_name}_patients", [one_split_per_patient], patients),
        Suite("split_classes", f"{suite_name}_classes", [images_per_cell], split_classes),
        Suite("split_near_duplicates", f"{suite_name}_near_duplicates", [no_leaks], leaks),
    ]
