"""What a validation returns: a typed report of every check, and the errors raised on blocking failures.

``ValidationReport`` is a pydantic model: the validation steps return it and
ZenML stores it with its pydantic materializer (JSON, shown in the dashboard);
``model_dump(mode="json")`` is what MLflow receives.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from components.errors import CxrError
from components.validation.severities import Severity

# A JSON scalar: what a cell of a listed row or table holds.
JsonScalar = str | int | float | bool | None
# One row of a listing or small table (e.g. a near-duplicate pair, a class), column -> value.
Record = dict[str, JsonScalar]
Stage = Literal["manifest", "split"]


def json_scalar(value: Any) -> JsonScalar:
    """`value` as a JSON scalar: numpy scalars unwrapped, NaN as None, anything else as its text.

    Args:
        value: A cell of a pandas frame or a value GX reports (any type).

    Returns:
        A str, int, float, bool or None; never NaN.
    """
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isnan(value):  # NaN is not JSON
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


class Observed(BaseModel):
    """What Great Expectations saw for one check (all None for a skipped check)."""

    # Column-level expectations: rows checked and rows that failed.
    element_count: int | None = None
    unexpected_count: int | None = None
    # Distinct offending values (at most 5), where they say something (not for booleans or counts).
    unexpected_values: list[JsonScalar] | None = None
    # Table-level expectations (row counts): the value GX measured.
    observed_value: JsonScalar = None
    # Offending rows, formatted for a steward (at most 5), e.g. "/data/a.png".
    examples: list[str] = []
    # Set when the expectation could not run (e.g. text compared with a number).
    exception: str | None = None


class CheckResult(BaseModel):
    """The outcome of one check."""

    name: str  # a name of components.validation.CHECK_NAMES
    severity: Severity
    blocking: bool  # severity == "blocking"
    success: bool  # True for a skipped check
    skipped: bool = False
    expectation: str | None = None  # GX expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None = None  # the column checked (None for table-level expectations)
    observed: Observed = Field(default_factory=Observed)
    details: str  # one line for a steward, e.g. "... [min_width]: 1 of 16 rows narrower than 64 px; ..."


class ValidationReport(BaseModel):
    """The result of one validation (of the manifest or of the split)."""

    success: bool  # False iff a blocking check failed
    results: list[CheckResult]  # one per check, in MANIFEST_CHECK_NAMES / SPLIT_CHECK_NAMES order
    data_docs_index: str  # absolute path of the Data Docs index.html (shared by both validations); "" if not built
    summary: str  # multi-line, names every failed check
    stage: Stage = "manifest"
    # Pairs and leaks behind the checks, for stewards (each at most MAX_LISTED rows):
    # manifest: exact_duplicates, near_duplicates; split: patient_leaks, near_duplicate_leaks.
    listings: dict[str, list[Record]] = {}
    # Small tables behind the checks: manifest: classes; split: split_classes.
    tables: dict[str, list[Record]] = {}


class ManifestValidationError(CxrError, RuntimeError):
    """A blocking expectation failed (manifest or split); the message is the report summary."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary)
        self.report = report

    def __reduce__(self) -> tuple[type, tuple[ValidationReport]]:
        return type(self), (self.report,)


class SplitValidationError(ManifestValidationError):
    """A blocking expectation of the split failed (patient or near-duplicate leak, empty class)."""
