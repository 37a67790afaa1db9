"""Great Expectations checks of the image manifest and of the split, with Data Docs for data stewards.

Two validations, each a function returning a ValidationReport:

* ``validate_manifest``: the manifest from ingest (every row, used or excluded).
* ``validate_split``: the split manifest (used rows plus a ``split`` column).

Every check has a name (CHECK_NAMES), a default severity (DEFAULT_SEVERITY:
"blocking" fails the report, "warning" is reported only) and settings
(ValidationSettings; the run config's ``validation`` section has the same
keys). ``severity: {check: "blocking"|"warning"}`` overrides any default;
``warning_only: [check, ...]`` is a shorthand for ``severity: warning``.

GX validates small tables built here, one suite per table, so that everything
shows in Data Docs. Where GX has no expectation for a property, a helper
table or column is computed first and GX checks that:

* ``rows`` (every manifest row): whether the row was excluded for a file
  problem (missing, empty, truncated, undecodable, too large, unreadable).
* ``images`` (used rows): required columns (empty text counts as null),
  label, size, mode, bit depth, view, sha256 uniqueness.
* ``classes`` (one row per task label): counts and fractions, number of
  sources, pediatric share among images of known age group and the largest
  gap to another class's share (age groups differing by class).
* ``near_duplicates`` (one row per pair of used images whose pHashes differ
  in at most ``near_duplicate_max_distance`` bits, from
  components.duplicates): expected to have no rows.
* split: ``split_images``, ``split_patients`` (splits per patient),
  ``split_classes`` (images per split and class) and ``split_near_duplicates``
  (near-duplicate pairs whose images sit in different splits).

Both validations write into the same Data Docs site when given the same
``docs_dir``: GX's site index lists every validation page found in the site
folder, so one index.html reaches both.

The GX context is ephemeral with in-memory stores: the only thing written to
disk is the Data Docs site in ``docs_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.duplicates import exact_duplicate_groups, near_duplicate_pairs
from components.labels import EXCLUDE_DUPLICATE, FILE_PROBLEM_REASONS, labels_for_task
from components.manifest import ADULT, LATERAL_VIEWS, MANIFEST_COLUMNS, PEDIATRIC
from components.splitting import SPLITS

BLOCKING, WARNING = "blocking", "warning"
SEVERITIES = (BLOCKING, WARNING)

DEFAULT_MODES: tuple[str, ...] = ("L", "RGB", "RGBA", "P", "I;16", "I", "LA")
DEFAULT_BIT_DEPTHS: tuple[int, ...] = (1, 8, 16)
# Exclusion reasons that mean the file itself is broken (checked by `files_readable`).
FILE_REASONS = FILE_PROBLEM_REASONS
REQUIRED_COLUMNS: tuple[str, ...] = ("uri", "sha256", "label", "patient_id", "source")

# ---------------------------------------------------------------- check names and severities

FILES_READABLE = "files_readable"
LABEL_IN_TASK = "label_in_task"
MIN_WIDTH = "min_width"
MIN_HEIGHT = "min_height"
MODE_ALLOWED = "mode_allowed"
BIT_DEPTH_ALLOWED = "bit_depth_allowed"
FRONTAL_VIEWS_ONLY = "frontal_views_only"
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
    return f"{column}_not_null"


# Report order of each validation, with the default severity.
MANIFEST_CHECKS: dict[str, str] = {
    FILES_READABLE: WARNING,  # such rows are excluded and listed; a warning says how many
    **{not_null_check(column): BLOCKING for column in REQUIRED_COLUMNS},
    LABEL_IN_TASK: BLOCKING,
    MIN_WIDTH: BLOCKING,
    MIN_HEIGHT: BLOCKING,
    MODE_ALLOWED: BLOCKING,
    BIT_DEPTH_ALLOWED: BLOCKING,
    FRONTAL_VIEWS_ONLY: BLOCKING,
    SHA256_UNIQUE: BLOCKING,
    NO_NEAR_DUPLICATES: WARNING,
    MIN_IMAGES_PER_CLASS: BLOCKING,
    CLASS_BALANCE: WARNING,
    CLASS_SOURCE_DIVERSITY: WARNING,
    AGE_GROUP_CONSISTENCY: WARNING,
}
SPLIT_CHECKS: dict[str, str] = {
    SPLIT_VALUES_KNOWN: BLOCKING,
    NO_PATIENT_IN_TWO_SPLITS: BLOCKING,
    NO_NEAR_DUPLICATES_ACROSS_SPLITS: BLOCKING,  # leakage, like a patient in two splits
    MIN_IMAGES_PER_SPLIT_CLASS: BLOCKING,
}
DEFAULT_SEVERITY: dict[str, str] = {**MANIFEST_CHECKS, **SPLIT_CHECKS}
MANIFEST_CHECK_NAMES: tuple[str, ...] = tuple(MANIFEST_CHECKS)
SPLIT_CHECK_NAMES: tuple[str, ...] = tuple(SPLIT_CHECKS)
CHECK_NAMES: tuple[str, ...] = MANIFEST_CHECK_NAMES + SPLIT_CHECK_NAMES


def resolve_severities(severity: Mapping[str, str] | None = None, warning_only: Iterable[str] = ()) -> dict[str, str]:
    """{check: "blocking"|"warning"} for every check: defaults, then `warning_only`, then `severity`.

    Unknown check names, unknown severities, and a check both in
    `warning_only` and set to "blocking" are ValueErrors naming the valid values.
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
    resolved = dict(DEFAULT_SEVERITY)
    resolved.update(dict.fromkeys(warning_only, WARNING))
    resolved.update(severity)
    return resolved


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class ValidationSettings:
    """Every setting of both validations; the run config's `validation` section has these keys."""

    min_width: int = 64
    min_height: int = 64
    allowed_modes: tuple[str, ...] = DEFAULT_MODES
    allowed_bit_depths: tuple[int, ...] = DEFAULT_BIT_DEPTHS
    min_images_per_class: int = 5
    # class_balance: each task label holds at least this fraction of the used images.
    min_class_fraction: float = 0.1
    # age_group_consistency: largest allowed gap between two classes' pediatric shares.
    max_age_group_gap: float = 0.5
    # pHash Hamming distance up to which two images count as near-duplicates
    # (bench/results/validation.md: measured on the ieee8023 + Actualmed images).
    near_duplicate_max_distance: int = 4
    frontal_only: bool = True
    min_images_per_split_class: int = 1
    severity: Mapping[str, str] = field(default_factory=dict)
    warning_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_modes", tuple(self.allowed_modes))
        object.__setattr__(self, "allowed_bit_depths", tuple(int(depth) for depth in self.allowed_bit_depths))
        object.__setattr__(self, "warning_only", tuple(self.warning_only))
        object.__setattr__(self, "severity", dict(self.severity or {}))
        if not 0 <= int(self.near_duplicate_max_distance) <= 64:
            raise ValueError(f"near_duplicate_max_distance must be 0..64, got {self.near_duplicate_max_distance}")
        resolve_severities(self.severity, self.warning_only)  # raises on unknown names

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None = None) -> ValidationSettings:
        """From the config's `validation` dict (missing keys take defaults; unknown keys are errors)."""
        settings = dict(settings or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"unknown validation setting(s) {unknown}; valid settings: {valid}")
        return cls(**{key: value for key, value in settings.items() if value is not None})

    def severities(self) -> dict[str, str]:
        return resolve_severities(self.severity, self.warning_only)


# ---------------------------------------------------------------- report


class ManifestValidationError(RuntimeError):
    """A blocking expectation failed (manifest or split); the message is the report summary."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary)
        self.report = report


class SplitValidationError(ManifestValidationError):
    """A blocking expectation of the split failed (patient or near-duplicate leak, empty class)."""


@dataclass
class ValidationReport:
    success: bool  # False iff a blocking check failed
    results: list[dict]  # one per check, in MANIFEST_CHECK_NAMES / SPLIT_CHECK_NAMES order
    data_docs_index: str  # absolute path of the Data Docs index.html (shared by both validations)
    summary: str  # multi-line, names every failed check
    stage: str = "manifest"  # "manifest" or "split"
    # Pairs and leaks behind the checks, for stewards (each at most MAX_LISTED entries):
    # manifest: exact_duplicates, near_duplicates; split: patient_leaks, near_duplicate_leaks.
    listings: dict[str, list[dict]] = field(default_factory=dict)
    # Small tables behind the checks: manifest: classes; split: split_classes.
    tables: dict[str, list[dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationReport:
        return cls(**dict(data))


# Entries kept per listing in a report (the check's details give the full count).
MAX_LISTED = 10_000
# How many offending values/rows GX keeps per expectation (and we quote).
_EXAMPLES = 5
_DOCS_SITE = "cxr_data_docs"
_RESULTS_FOLDER = "_validation_results"  # GX validation results (JSON), inside docs_dir


@dataclass(frozen=True)
class _Check:
    """One expectation plus what a steward needs to read its failure."""

    name: str
    expectation: Any  # a gx.expectations.Expectation
    problem: str  # what each offending row is, e.g. "rows narrower than 64 px"
    example: str = "{uri}"  # format string over a row of the validated frame
    quote_values: bool = True  # False where the values say nothing (booleans, counts)
    examples: tuple[str, ...] | None = None  # precomputed examples (table-level expectations)


# ---------------------------------------------------------------- tables


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; expected {list(columns)}")


def _text(series: pd.Series) -> np.ndarray:
    """Object array of stripped text with None where the value is missing or blank."""
    values = series.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            out[index] = None
        else:
            text = str(value).strip()
            out[index] = text if text else None
    return out


def used_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    _require(manifest, MANIFEST_COLUMNS, "manifest")
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    return manifest[reason == ""]


def rows_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every manifest row: uri and exclusion reason (for `files_readable`)."""
    return pd.DataFrame(
        {
            "uri": manifest["uri"].to_numpy(dtype=object),
            "exclusion_reason": manifest["exclusion_reason"].fillna("").astype(str).to_numpy(dtype=object),
        }
    )


def images_table(used: pd.DataFrame) -> pd.DataFrame:
    """The used rows GX validates: required text columns with blanks as nulls, a normalised view."""
    views = used["view"].fillna("").astype(str).str.strip().str.lower()
    table = {"row": [str(i) for i in used.index]}  # manifest index, to find rows without a uri
    table.update({column: _text(used[column]) for column in REQUIRED_COLUMNS})
    for column in ("width", "height", "mode", "bit_depth"):
        table[column] = used[column].to_numpy(dtype=object)
    table["view"] = used["view"].to_numpy(dtype=object)
    table["view_normalised"] = views.to_numpy(dtype=object)
    return pd.DataFrame(table)


def class_table(used: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per task label: count, fraction, sources, age groups and the pediatric-share gap.

    `pediatric_share` is the pediatric fraction among the class's images of
    known age group (None when none is known); `age_gap` is the largest
    difference between this class's share and another class's (None when
    either is unknown). Labels outside the task are `label_in_task`'s job.
    """
    total = len(used)
    rows = []
    in_task = used[used["label"].isin(list(labels))]
    for label in labels:
        images = in_task[in_task["label"] == label]
        sources = sorted(images["source"].fillna("").astype(str).unique())
        ages = images["age_group"].fillna("").astype(str)
        adult, pediatric = int((ages == ADULT).sum()), int((ages == PEDIATRIC).sum())
        known = adult + pediatric
        rows.append(
            {
                "label": label,
                "count": len(images),
                "fraction": round(len(images) / total, 4) if total else 0.0,
                "n_sources": len(sources) if len(images) else None,
                "sources": ", ".join(sources),
                "adult": adult,
                "pediatric": pediatric,
                "unknown_age": len(images) - known,
                "pediatric_share": round(pediatric / known, 4) if known else None,
            }
        )
    shares = [row["pediatric_share"] for row in rows]
    for row in rows:
        own = row["pediatric_share"]
        others = [share for other, share in zip(rows, shares, strict=False) if other is not row and share is not None]
        row["age_gap"] = round(max(abs(own - share) for share in others), 4) if own is not None and others else None
    columns = [
        "label",
        "count",
        "fraction",
        "n_sources",
        "sources",
        "adult",
        "pediatric",
        "unknown_age",
        "pediatric_share",
        "age_gap",
    ]
    nullable = ("n_sources", "pediatric_share", "age_gap")  # None stays None (GX skips nulls), not NaN
    return pd.DataFrame(
        {
            column: pd.Series([row[column] for row in rows], dtype=object if column in nullable else None)
            for column in columns
        }
    )


_PAIR_COLUMNS = [
    "uri_a",
    "uri_b",
    "distance",
    "source_a",
    "source_b",
    "patient_a",
    "patient_b",
    "label_a",
    "label_b",
    "same_patient",
    "same_source",
    "same_bytes",
]


def near_duplicate_table(frame: pd.DataFrame, max_distance: int, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per pair of rows of `frame` whose pHashes differ in at most `max_distance` bits."""
    pairs = near_duplicate_pairs(frame["phash"].fillna("").astype(str).tolist(), max_distance)
    columns = _PAIR_COLUMNS + [f"{name}_{side}" for name in extra for side in ("a", "b")]
    if not pairs:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    first = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
    second = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))

    def side(column: str, positions: np.ndarray) -> np.ndarray:
        return frame[column].fillna("").astype(str).to_numpy(dtype=object)[positions]

    table = {
        "uri_a": side("uri", first),
        "uri_b": side("uri", second),
        "distance": np.fromiter((p[2] for p in pairs), dtype=np.int64, count=len(pairs)),
        "source_a": side("source", first),
        "source_b": side("source", second),
        "patient_a": side("patient_id", first),
        "patient_b": side("patient_id", second),
        "label_a": side("label", first),
        "label_b": side("label", second),
    }
    table["same_patient"] = table["patient_a"] == table["patient_b"]
    table["same_source"] = table["source_a"] == table["source_b"]
    sha = frame["sha256"].fillna("").astype(str).to_numpy(dtype=object)
    table["same_bytes"] = (sha[first] == sha[second]) & (sha[first] != "")
    for name in extra:
        table[f"{name}_a"] = side(name, first)
        table[f"{name}_b"] = side(name, second)
    return pd.DataFrame(table, columns=columns)


def exact_duplicate_listing(manifest: pd.DataFrame) -> list[dict]:
    """Pairs of images with the same bytes, among used rows and rows excluded as "duplicate image".

    Each pair names the kept image (`uri_a`: the first used row of the group)
    and a copy (`uri_b`), and whether the copy is already excluded. An
    excluded duplicate whose digest matches no kept row is paired with the
    uri its exclusion_detail names ("same bytes as <uri>").
    """
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    relevant = manifest[(reason == "") | (reason == EXCLUDE_DUPLICATE)]
    reasons = relevant["exclusion_reason"].fillna("").astype(str).to_numpy()
    uris = relevant["uri"].fillna("").astype(str).to_numpy()
    patients = relevant["patient_id"].fillna("").astype(str).to_numpy()
    sources = relevant["source"].fillna("").astype(str).to_numpy()
    digests = relevant["sha256"].fillna("").astype(str).to_numpy()
    listing = []
    paired: set[int] = set()
    for group in exact_duplicate_groups(list(digests)):
        kept = next((i for i in group if reasons[i] == ""), group[0])
        for other in group:
            if other == kept:
                continue
            paired.add(other)
            listing.append(
                _exact_pair(
                    uris[kept],
                    uris[other],
                    digests[other],
                    sources[kept],
                    sources[other],
                    patients[kept],
                    patients[other],
                    reasons[other] != "",
                )
            )
    prefix = "same bytes as "
    details = relevant["exclusion_detail"].fillna("").astype(str).to_numpy()
    by_uri = {uri: i for i, uri in enumerate(uris)}
    for i in np.flatnonzero(reasons == EXCLUDE_DUPLICATE):
        if i in paired or not details[i].startswith(prefix):
            continue
        original = details[i][len(prefix) :]
        j = by_uri.get(original)
        listing.append(
            _exact_pair(
                original,
                uris[i],
                digests[i],
                sources[j] if j is not None else "",
                sources[i],
                patients[j] if j is not None else "",
                patients[i],
                True,
            )
        )
    return listing


def _exact_pair(uri_a, uri_b, digest, source_a, source_b, patient_a, patient_b, excluded) -> dict:
    return {
        "uri_a": str(uri_a),
        "uri_b": str(uri_b),
        "sha256": str(digest),
        "distance": 0,
        "source_a": str(source_a),
        "source_b": str(source_b),
        "patient_a": str(patient_a),
        "patient_b": str(patient_b),
        "same_patient": bool(patient_a and patient_a == patient_b),
        "same_source": bool(source_a == source_b),
        "excluded": bool(excluded),
    }


def split_patients_table(split_manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: how many splits and which (sorted), and how many images."""
    frame = pd.DataFrame(
        {
            "patient_id": split_manifest["patient_id"].fillna("").astype(str).to_numpy(dtype=object),
            "split": split_manifest["split"].fillna("").astype(str).to_numpy(dtype=object),
        }
    )
    grouped = frame.groupby("patient_id", sort=True)["split"]
    n_splits = grouped.nunique()
    images = grouped.size()
    splits = grouped.agg(lambda values: ", ".join(sorted(set(values)))) if (n_splits > 1).any() else None
    table = pd.DataFrame(
        {
            "patient_id": n_splits.index.to_numpy(dtype=object),
            "n_splits": n_splits.to_numpy(dtype=np.int64),
            "n_images": images.to_numpy(dtype=np.int64),
        }
    )
    if splits is None:  # the common case: no leak, skip the slow per-group join
        table["splits"] = frame.groupby("patient_id", sort=True)["split"].first().to_numpy(dtype=object)
    else:
        table["splits"] = splits.to_numpy(dtype=object)
    return table


def split_class_table(split_manifest: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per (split, task label), 0 when absent."""
    counts = split_manifest.groupby(["split", "label"]).size()
    rows = [
        {"split": split, "label": label, "count": int(counts.get((split, label), 0))}
        for split in SPLITS
        for label in labels
    ]
    return pd.DataFrame(rows, columns=["split", "label", "count"])


# ---------------------------------------------------------------- expectations


def _expectation(cls: type, name: str, severity: str, why: str, **kwargs: Any) -> Any:
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
    for row in pairs.head(_EXAMPLES).itertuples(index=False):
        text = f"{row.uri_a} ~ {row.uri_b} (distance {row.distance}"
        if with_split:
            text += f", {row.split_a}/{row.split_b}"
        examples.append(text + (", same patient)" if row.same_patient else ")"))
    return tuple(examples)


def _rows_checks(severity: dict[str, str]) -> list[_Check]:
    import great_expectations.expectations as gxe

    return [
        _Check(
            FILES_READABLE,
            _expectation(
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


def _image_checks(labels: Sequence[str], settings: ValidationSettings, severity: dict[str, str]) -> list[_Check]:
    import great_expectations.expectations as gxe

    def check(
        name: str, cls: type, why: str, problem: str, example: str = "{uri}", quote: bool = True, **kw: Any
    ) -> _Check:
        return _Check(name, _expectation(cls, name, severity[name], why, **kw), problem, example, quote)

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
            SHA256_UNIQUE,
            gxe.ExpectColumnValuesToBeUnique,
            "the same bytes twice would leak across splits (pairs listed in the report).",
            "rows sharing a sha256 with another row",
            column="sha256",
        )
    )
    return checks


def _class_checks(settings: ValidationSettings, severity: dict[str, str], n_sources: int) -> list[_Check]:
    import great_expectations.expectations as gxe

    min_sources = min(2, n_sources) if n_sources else 1
    return [
        _Check(
            MIN_IMAGES_PER_CLASS,
            _expectation(
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
        _Check(
            CLASS_BALANCE,
            _expectation(
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
        _Check(
            CLASS_SOURCE_DIVERSITY,
            _expectation(
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
        _Check(
            AGE_GROUP_CONSISTENCY,
            _expectation(
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


def _pairs_check(name: str, severity: dict[str, str], why: str, problem: str, examples: tuple[str, ...]) -> _Check:
    import great_expectations.expectations as gxe

    expectation = _expectation(gxe.ExpectTableRowCountToEqual, name, severity[name], why, value=0)
    return _Check(name, expectation, problem, quote_values=False, examples=examples)


# ---------------------------------------------------------------- GX context and run


def _context(docs_dir: Path, data_docs: bool = True) -> Any:
    """Ephemeral context, no progress bars; with `data_docs`, one local site and its results on disk.

    Without `data_docs` nothing at all is written to disk.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        # Keeps pages already in the folder (the other validation's) in the index.
        "site_index_builder": {"module_name": __name__, "class_name": "KeepingSiteIndexBuilder"},
    }
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    if data_docs:
        # Validation results on disk next to the site, so that the index of a site built
        # by validate_split still finds (and links, with their status) the manifest's.
        stores.stores[stores.validation_results_store_name]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir / _RESULTS_FOLDER),
        }
    config = DataContextConfig(
        store_backend_defaults=stores,
        data_docs_sites={_DOCS_SITE: site} if data_docs else {},
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _run_suite(
    context: Any, source: Any, asset: str, suite_name: str, checks: list[_Check], frame: pd.DataFrame
) -> list[Any]:
    """Validate `frame` with one suite; the result lands in the context's store for Data Docs."""
    import great_expectations as gx

    batch = source.add_dataframe_asset(asset)
    batch_definition = batch.add_batch_definition_whole_dataframe(asset)
    # All expectations at once: adding them one by one saves the suite to the store each time.
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=[c.expectation for c in checks]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    )
    # No `unexpected_index_column_names`: with it GX 1.24 reads every unexpected row
    # cell by cell (minutes at 100k failures). Positions into `frame` are cheap and we
    # look the uris up ourselves.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES}
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format).results


def _run_suites(
    docs_dir: str | Path,
    source_name: str,
    suites: list[tuple[str, str, list[_Check], pd.DataFrame]],
    data_docs: bool = True,
) -> tuple[dict[str, dict], str]:
    """Run every (asset, suite, checks, frame), build Data Docs; ({check: result}, index path or "")."""
    # GX logs hundreds of INFO lines per run.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    docs_dir = Path(docs_dir).resolve()
    context = _context(docs_dir, data_docs)
    source = context.data_sources.add_pandas(source_name)
    by_name: dict[str, dict] = {}
    for asset, suite_name, checks, frame in suites:
        if not checks:
            continue
        by_check = {c.name: c for c in checks}
        for gx_result in _run_suite(context, source, asset, suite_name, checks, frame):
            check = by_check[gx_result.expectation_config.meta["check"]]
            by_name[check.name] = _result_dict(check, gx_result, frame)
    if not data_docs:
        return by_name, ""
    context.build_data_docs(site_names=[_DOCS_SITE])
    return by_name, str(docs_dir / "index.html")


def __getattr__(name: str) -> Any:
    """KeepingSiteIndexBuilder, made on first use so that importing this module does not import GX.

    GX's DefaultSiteIndexBuilder drops from the index (and deletes) every page
    whose suite or result is not in the context's stores. Suites live in memory,
    per call, so the manifest's suite pages would vanish when the split
    validation builds the same site; this builder keeps every page in the folder.
    """
    if name != "KeepingSiteIndexBuilder":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from great_expectations.render.renderer.site_builder import DefaultSiteIndexBuilder

    class KeepingSiteIndexBuilder(DefaultSiteIndexBuilder):
        def build(self, skip_and_clean_missing: bool = True, build_index: bool = True):  # noqa: ARG002
            return super().build(skip_and_clean_missing=False, build_index=build_index)

    globals()[name] = KeepingSiteIndexBuilder
    return KeepingSiteIndexBuilder


# ---------------------------------------------------------------- reading results


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _exception_message(info: dict | None) -> str | None:
    """GX puts the error at the top level or, for a failed metric, one level down by metric id."""
    info = info or {}
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    messages = [str(c["exception_message"]) for c in candidates if c.get("exception_message")]
    return "; ".join(messages) or None


def _format_example(template: str, row: dict) -> str:
    try:
        return template.format(**row)
    except (ValueError, TypeError, KeyError):  # e.g. a None where a number format is asked
        return ", ".join(f"{key}={value}" for key, value in row.items())


def _result_dict(check: _Check, gx_result: Any, frame: pd.DataFrame) -> dict:
    config = gx_result.expectation_config
    raw = gx_result.result or {}
    column = config.kwargs.get("column")
    observed: dict[str, Any] = {}
    if "observed_value" in raw:  # table-level expectation (row count)
        observed["observed_value"] = _jsonable(raw["observed_value"])
    else:
        observed["element_count"] = raw.get("element_count")
        observed["unexpected_count"] = raw.get("unexpected_count")
        if check.quote_values:
            values = [_jsonable(v["value"]) for v in raw.get("partial_unexpected_counts", [])]
            observed["unexpected_values"] = values
    if check.examples is not None:
        observed["examples"] = list(check.examples) if not gx_result.success else []
    else:
        positions = raw.get("partial_unexpected_index_list") or []
        observed["examples"] = [_format_example(check.example, frame.iloc[int(i)].to_dict()) for i in positions]
    exception = _exception_message(gx_result.exception_info)
    if exception:
        observed["exception"] = exception
    severity = config.meta.get("severity", BLOCKING)
    return {
        "name": check.name,
        "severity": severity,
        "blocking": severity == BLOCKING,
        "success": bool(gx_result.success),
        "skipped": False,
        "expectation": config.type,
        "column": column,
        "observed": observed,
        "details": _details(check, config.type, column, bool(gx_result.success), observed),
    }


def _skipped(name: str, severity: str, why: str) -> dict:
    return {
        "name": name,
        "severity": severity,
        "blocking": severity == BLOCKING,
        "success": True,
        "skipped": True,
        "expectation": None,
        "column": None,
        "observed": {},
        "details": f"[{name}]: skipped: {why}",
    }


def _details(check: _Check, kind: str, column: str | None, success: bool, observed: dict) -> str:
    head = f"{kind}({column}) [{check.name}]" if column else f"{kind} [{check.name}]"
    if success:
        return f"{head}: passed"
    if "exception" in observed:
        return f"{head}: could not run: {observed['exception']}"
    if "observed_value" in observed:
        text = f"{head}: {observed['observed_value']} {check.problem}"
    else:
        text = f"{head}: {observed['unexpected_count']} of {observed['element_count']} {check.problem}"
    if observed.get("unexpected_values"):
        text += f"; unexpected values {observed['unexpected_values']}"
    if observed["examples"]:
        text += f"; e.g. {', '.join(observed['examples'])}"
    return text


def _summary(title: str, facts: str, results: list[dict], index: str) -> str:
    blocking = [r for r in results if not r["success"] and r["blocking"]]
    warnings = [r for r in results if not r["success"] and not r["blocking"]]
    verdict = "FAILED" if blocking else "PASSED"
    lines = [
        f"{title} {verdict}: {facts}, {len(results)} checks, "
        f"{len(blocking)} blocking failure(s), {len(warnings)} warning(s)."
    ]
    lines += [f"BLOCKING FAILED: {r['details']}" for r in blocking]
    lines += [f"WARNING (not blocking): {r['details']}" for r in warnings]
    lines.append(f"Data Docs: {index or 'not built'}")
    return "\n".join(lines)


def _records(frame: pd.DataFrame, limit: int = MAX_LISTED) -> list[dict]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.head(limit).to_dict("records")]


# ---------------------------------------------------------------- public API


def validate_manifest(
    manifest: pd.DataFrame,
    task: str,
    docs_dir: str | Path,
    *,
    suite_name: str = "cxr_manifest",
    data_docs: bool = True,
    **settings: Any,
) -> ValidationReport:
    """Validate `manifest` (every row; used rows held to the contract) and build Data Docs into `docs_dir`.

    `settings` are ValidationSettings keys (the run config's `validation`
    section); split-only settings are accepted and ignored here. Never raises
    for failed checks: see `raise_if_blocking`. `data_docs=False` skips
    building the site (about half the time on small manifests); the
    report's `data_docs_index` is then "".
    """
    config = ValidationSettings.from_mapping(settings)
    severity = config.severities()
    labels = labels_for_task(task)
    used = used_rows(manifest)
    n_sources = int(used["source"].fillna("").astype(str).nunique())

    near = near_duplicate_table(used, config.near_duplicate_max_distance)
    classes = class_table(used, labels)
    near_problem = f"near-duplicate pairs (pHash distance <= {config.near_duplicate_max_distance})"
    suites = [
        ("rows", f"{suite_name}_rows", _rows_checks(severity), rows_table(manifest)),
        ("images", suite_name, _image_checks(labels, config, severity), images_table(used)),
        ("classes", f"{suite_name}_classes", _class_checks(config, severity, n_sources), classes),
        (
            "near_duplicates",
            f"{suite_name}_near_duplicates",
            [
                _pairs_check(
                    NO_NEAR_DUPLICATES,
                    severity,
                    f"no two used images have pHashes within {config.near_duplicate_max_distance} bits "
                    "(re-encoded, resized or slightly edited copies), within a source or across sources.",
                    near_problem,
                    _pair_examples(near),
                )
            ],
            near,
        ),
    ]
    by_name, index = _run_suites(docs_dir, "manifest", suites, data_docs)
    if not config.frontal_only:
        by_name[FRONTAL_VIEWS_ONLY] = _skipped(
            FRONTAL_VIEWS_ONLY, severity[FRONTAL_VIEWS_ONLY], "frontal_only is false"
        )
    results = [by_name[name] for name in MANIFEST_CHECK_NAMES]  # GX does not keep the suite's order
    facts = f"{len(used)} used rows ({len(manifest) - len(used)} excluded)"
    return ValidationReport(
        success=all(r["success"] for r in results if r["blocking"]),
        results=results,
        data_docs_index=index,
        summary=_summary(f"Manifest validation for task {task!r}", facts, results, index),
        stage="manifest",
        listings={
            "exact_duplicates": exact_duplicate_listing(manifest)[:MAX_LISTED],
            "near_duplicates": _records(near),
        },
        tables={"classes": _records(classes)},
    )


def validate_split(
    split_manifest: pd.DataFrame,
    task: str,
    docs_dir: str | Path,
    *,
    suite_name: str = "cxr_split",
    data_docs: bool = True,
    **settings: Any,
) -> ValidationReport:
    """Validate the split manifest (used rows + `split`): leaks and images per split and class.

    Give the same `docs_dir` as validate_manifest: both land in one Data Docs
    site with one index. `settings` as for validate_manifest (manifest-only
    ones are ignored here).
    """
    config = ValidationSettings.from_mapping(settings)
    severity = config.severities()
    labels = labels_for_task(task)
    _require(split_manifest, ("uri", "source", "sha256", "phash", "patient_id", "label", "split"), "split manifest")
    frame = split_manifest.reset_index(drop=True)

    images = pd.DataFrame(
        {
            "uri": frame["uri"].fillna("").astype(str).to_numpy(dtype=object),
            "split": _text(frame["split"]),
        }
    )
    patients = split_patients_table(frame)
    split_classes = split_class_table(frame, labels)
    near = near_duplicate_table(frame, config.near_duplicate_max_distance, extra=("split",))
    leaks = near[near["split_a"] != near["split_b"]].reset_index(drop=True)
    leaking_patients = patients[patients["n_splits"] > 1].reset_index(drop=True)

    import great_expectations.expectations as gxe

    def expect(name: str, cls: type, why: str, **kw: Any) -> Any:
        return _expectation(cls, name, severity[name], why, **kw)

    m = config.min_images_per_split_class
    suites = [
        (
            "split_images",
            f"{suite_name}_images",
            [
                _Check(
                    SPLIT_VALUES_KNOWN,
                    expect(
                        SPLIT_VALUES_KNOWN,
                        gxe.ExpectColumnValuesToBeInSet,
                        f"every image is in one of {list(SPLITS)}.",
                        column="split",
                        value_set=list(SPLITS),
                    ),
                    f"rows outside the splits {list(SPLITS)}",
                )
            ],
            images,
        ),
        (
            "split_patients",
            f"{suite_name}_patients",
            [
                _Check(
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
            ],
            patients,
        ),
        (
            "split_classes",
            f"{suite_name}_classes",
            [
                _Check(
                    MIN_IMAGES_PER_SPLIT_CLASS,
                    expect(
                        MIN_IMAGES_PER_SPLIT_CLASS,
                        gxe.ExpectColumnValuesToBeBetween,
                        f"every split has at least {m} image(s) of every task label.",
                        column="count",
                        min_value=m,
                    ),
                    f"(split, class) cells with fewer than {m} image(s)",
                    "{split}/{label}={count}",
                    False,
                )
            ],
            split_classes,
        ),
        (
            "split_near_duplicates",
            f"{suite_name}_near_duplicates",
            [
                _pairs_check(
                    NO_NEAR_DUPLICATES_ACROSS_SPLITS,
                    severity,
                    f"no near-duplicate pair (pHash distance <= {config.near_duplicate_max_distance}) has its two "
                    "images in different splits: that is leakage, even between different patient ids.",
                    f"near-duplicate pairs across splits (pHash distance <= {config.near_duplicate_max_distance})",
                    _pair_examples(leaks, with_split=True),
                )
            ],
            leaks,
        ),
    ]
    by_name, index = _run_suites(docs_dir, "split", suites, data_docs)
    results = [by_name[name] for name in SPLIT_CHECK_NAMES]
    counts = frame["split"].value_counts()
    facts = f"{len(frame)} images ({', '.join(f'{s} {int(counts.get(s, 0))}' for s in SPLITS)})"
    return ValidationReport(
        success=all(r["success"] for r in results if r["blocking"]),
        results=results,
        data_docs_index=index,
        summary=_summary(f"Split validation for task {task!r}", facts, results, index),
        stage="split",
        listings={
            "patient_leaks": _records(leaking_patients),
            "near_duplicate_leaks": _records(leaks),
        },
        tables={"split_classes": _records(split_classes)},
    )


def raise_if_blocking(report: ValidationReport | Mapping[str, Any]) -> None:
    """Stop the pipeline when a blocking check failed; the message says why and where (Data Docs)."""
    if not isinstance(report, ValidationReport):
        report = ValidationReport.from_dict(report)
    if not report.success:
        raise (SplitValidationError if report.stage == "split" else ManifestValidationError)(report)
