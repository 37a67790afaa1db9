"""Great Expectations checks of the image manifest and of the split, with Data Docs for data stewards.

Two validations, each a function returning a typed ValidationReport:

* ``validate_manifest``: the manifest from ingest (every row, used or excluded).
* ``validate_split``: the split manifest (used rows plus a ``split`` column).

Every check has a name (CHECK_NAMES), a default severity (DEFAULT_SEVERITY:
"blocking" fails the report, "warning" is reported only) and settings
(ValidationConfig, the run config's ``validation`` section).
``severity: {check: "blocking"|"warning"}`` overrides any default;
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
  ``split_classes`` (images per training split and class) and
  ``split_near_duplicates`` (near-duplicate pairs whose images sit in
  different splits; ``external``, the held-out split of components.splitting,
  counts as one).

Both validations take a ``purpose`` (components.splitting.DataPurpose):
``evaluation`` (an evaluation-only drop, every row ``external``) skips the
training thresholds (severities.TRAINING_THRESHOLDS), reported as skipped.

Modules, lowest first (none imports the run-config module components.config,
which imports ``settings``):

* ``severities``: check names, default severities, ``resolve_severities``.
* ``settings``: ``ValidationConfig``, the settings of both validations.
* ``report``: ``ValidationReport`` and ``CheckResult`` (pydantic), the errors.
* ``tables``: the pandas tables GX checks and the rows a report lists.
* ``checks``: one GX expectation per check, grouped into suites.
* ``gx``: the ephemeral GX context, running suites, Data Docs, reading results.
* ``api``: ``validate_manifest``, ``validate_split``, ``raise_if_blocking``.
"""

from components.splitting import SPLITS
from components.validation.api import raise_if_blocking, validate_manifest, validate_split
from components.validation.checks import FILE_REASONS
from components.validation.report import (
    CheckResult,
    JsonScalar,
    ManifestValidationError,
    Observed,
    Record,
    SplitValidationError,
    ValidationReport,
)
from components.validation.settings import DEFAULT_BIT_DEPTHS, DEFAULT_MODES, ValidationConfig
from components.validation.severities import (
    BLOCKING,
    CHECK_NAMES,
    DEFAULT_SEVERITY,
    MANIFEST_CHECK_NAMES,
    REQUIRED_COLUMNS,
    SEVERITIES,
    SPLIT_CHECK_NAMES,
    WARNING,
    Severity,
    resolve_severities,
)
from components.validation.tables import MAX_LISTED, used_rows

__all__ = [
    "BLOCKING",
    "CHECK_NAMES",
    "DEFAULT_BIT_DEPTHS",
    "DEFAULT_MODES",
    "DEFAULT_SEVERITY",
    "FILE_REASONS",
    "MANIFEST_CHECK_NAMES",
    "MAX_LISTED",
    "REQUIRED_COLUMNS",
    "SEVERITIES",
    "SPLITS",
    "SPLIT_CHECK_NAMES",
    "WARNING",
    "CheckResult",
    "JsonScalar",
    "ManifestValidationError",
    "Observed",
    "Record",
    "Severity",
    "SplitValidationError",
    "ValidationConfig",
    "ValidationReport",
    "raise_if_blocking",
    "resolve_severities",
    "used_rows",
    "validate_manifest",
    "validate_split",
]
