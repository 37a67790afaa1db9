"""Great Expectations checks of the image manifest, with Data Docs for data stewards.

Only the rows that are used (``exclusion_reason == ""``) are validated; excluded
rows stay in the manifest for the record and are not held to the contract.

Two small tables go through GX, each with its own suite, so both appear in the
Data Docs:

* ``images``: one row per used image, plus helper columns computed here
  (``file_exists``, ``row``) because GX has no expectation that touches disk.
* ``class_counts``: one row per task label with its image count, because GX has
  no expectation for per-class counts; a label with no image shows up as 0.

The GX context is ephemeral with in-memory stores: the only thing written to
disk is the Data Docs site in ``docs_dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.labels import labels_for_task
from components.manifest import MANIFEST_COLUMNS

DEFAULT_MODES: tuple[str, ...] = ("L", "RGB", "RGBA", "P", "I;16", "I", "LA")

# Check names callers use in `warning_only`, in report order.
LABEL_IN_TASK = "label_in_task"
PATH_NOT_MISSING = "path_not_missing"
PATH_EXISTS = "path_exists"
SHA256_UNIQUE = "sha256_unique"
MIN_WIDTH = "min_width"
MIN_HEIGHT = "min_height"
MODE_ALLOWED = "mode_allowed"
MIN_IMAGES_PER_CLASS = "min_images_per_class"
CHECK_NAMES: tuple[str, ...] = (
    LABEL_IN_TASK,
    PATH_NOT_MISSING,
    PATH_EXISTS,
    SHA256_UNIQUE,
    MIN_WIDTH,
    MIN_HEIGHT,
    MODE_ALLOWED,
    MIN_IMAGES_PER_CLASS,
)

_DOCS_SITE = "cxr_manifest_docs"
_IMAGES_ASSET = "images"
_COUNTS_ASSET = "class_counts"
# How many offending values/rows GX keeps per expectation (and we quote).
_EXAMPLES = 5


class ManifestValidationError(RuntimeError):
    """A blocking manifest expectation failed; the message is the report summary."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary)
        self.report = report


@dataclass
class ValidationReport:
    success: bool  # False iff a blocking expectation failed
    results: list[dict]  # one per expectation, in CHECK_NAMES order
    data_docs_index: str  # absolute path of the Data Docs index.html
    summary: str  # multi-line, names every failed expectation

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Check:
    """One expectation plus what a steward needs to read its failure."""

    name: str
    expectation: Any  # a gx.expectations.Expectation
    problem: str  # what each offending row/class is, e.g. "rows narrower than 64 px"
    example: str  # format string over a row of the validated frame, e.g. "{path}"
    quote_values: bool = True  # False where the values say nothing (booleans)


# ---------------------------------------------------------------- tables


def _used_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; expected {MANIFEST_COLUMNS}")
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    return manifest[reason == ""]


def images_table(used: pd.DataFrame) -> pd.DataFrame:
    """The frame GX validates: used rows, empty paths as nulls, a `file_exists` flag."""
    path = used["path"]
    has_path = path.notna() & (path.astype(str).str.strip() != "")
    # None (not False) where there is no path, so a missing path is reported once,
    # by `path_not_missing`, rather than also as a missing file.
    exists = [os.path.isfile(p) if ok else None for p, ok in zip(path, has_path)]
    return pd.DataFrame(
        {
            "row": [str(i) for i in used.index],  # manifest index, to find rows without a path
            "path": path.where(has_path).to_numpy(dtype=object),
            "file_exists": pd.Series(exists, dtype=object).to_numpy(),
            "sha256": used["sha256"].to_numpy(),
            "width": used["width"].to_numpy(),
            "height": used["height"].to_numpy(),
            "mode": used["mode"].to_numpy(),
            "label": used["label"].to_numpy(),
        }
    )


def class_counts_table(used: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per task label (0 when absent); out-of-task labels are `label_in_task`'s job."""
    counts = used["label"].value_counts()
    return pd.DataFrame({"label": list(labels), "count": [int(counts.get(lb, 0)) for lb in labels]})


# ---------------------------------------------------------------- expectations


def _expectation(cls: type, name: str, blocking: bool, why: str, **kwargs: Any) -> Any:
    from great_expectations.expectations.metadata_types import FailureSeverity

    kind = "Blocking" if blocking else "Warning only"
    return cls(
        meta={"check": name, "blocking": blocking},
        notes=f"{kind} ({name}): {why}",
        severity=FailureSeverity.CRITICAL if blocking else FailureSeverity.WARNING,
        **kwargs,
    )


def _image_checks(
    labels: Sequence[str],
    min_width: int,
    min_height: int,
    modes: Sequence[str],
    warning_only: set[str],
) -> list[_Check]:
    import great_expectations.expectations as gxe

    def check(name: str, cls: type, why: str, problem: str, quote: bool = True, **kw: Any) -> _Check:
        expectation = _expectation(cls, name, name not in warning_only, why, **kw)
        example = "row {row}" if name == PATH_NOT_MISSING else "{path}"
        return _Check(name, expectation, problem, example, quote)

    return [
        check(LABEL_IN_TASK, gxe.ExpectColumnValuesToBeInSet,
              "every used image has a label of the task.",
              f"rows with a label outside {list(labels)}", column="label", value_set=list(labels)),
        check(PATH_NOT_MISSING, gxe.ExpectColumnValuesToNotBeNull,
              "every used image has a path (empty paths count as missing).",
              "rows without a path", quote=False, column="path"),
        check(PATH_EXISTS, gxe.ExpectColumnValuesToBeInSet,
              "file_exists is computed from the file system just before validation.",
              "rows whose file does not exist", quote=False, column="file_exists", value_set=[True]),
        check(SHA256_UNIQUE, gxe.ExpectColumnValuesToBeUnique,
              "the same bytes twice would leak across splits.",
              "rows sharing a sha256 with another row", column="sha256"),
        check(MIN_WIDTH, gxe.ExpectColumnValuesToBeBetween, f"width >= {min_width} px.",
              f"rows narrower than {min_width} px", column="width", min_value=min_width),
        check(MIN_HEIGHT, gxe.ExpectColumnValuesToBeBetween, f"height >= {min_height} px.",
              f"rows shorter than {min_height} px", column="height", min_value=min_height),
        check(MODE_ALLOWED, gxe.ExpectColumnValuesToBeInSet, "PIL modes the decoder handles.",
              f"rows with a mode outside {list(modes)}", column="mode", value_set=list(modes)),
    ]


def _count_checks(min_per_class: int, warning_only: set[str]) -> list[_Check]:
    import great_expectations.expectations as gxe

    blocking = MIN_IMAGES_PER_CLASS not in warning_only
    expectation = _expectation(
        gxe.ExpectColumnValuesToBeBetween, MIN_IMAGES_PER_CLASS, blocking,
        f"each task label has at least {min_per_class} used images (table built from value counts).",
        column="count", min_value=min_per_class,
    )
    problem = f"classes with fewer than {min_per_class} images"
    return [_Check(MIN_IMAGES_PER_CLASS, expectation, problem, "{label}={count}", quote_values=False)]


# ---------------------------------------------------------------- GX context and run


def _context(docs_dir: Path) -> Any:
    """Ephemeral context: in-memory stores, one local Data Docs site, no progress bars."""
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
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={_DOCS_SITE: site},
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _run_suite(
    context: Any, asset: str, suite_name: str, checks: list[_Check], frame: pd.DataFrame
) -> list[Any]:
    """Validate `frame` with one suite; the result lands in the context's store for Data Docs."""
    import great_expectations as gx

    batch = context.data_sources.get("manifest").add_dataframe_asset(asset)
    batch_definition = batch.add_batch_definition_whole_dataframe(asset)
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for check in checks:
        suite.add_expectation(check.expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    )
    # No `unexpected_index_column_names`: with it GX 1.24 reads every unexpected row
    # cell by cell (minutes at 100k failures). Positions into `frame` are cheap and we
    # look the paths up ourselves.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES}
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format).results


# ---------------------------------------------------------------- reading results


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _exception_message(info: dict | None) -> str | None:
    """GX puts the error at the top level or, for a failed metric, one level down by metric id."""
    info = info or {}
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    messages = [str(c["exception_message"]) for c in candidates if c.get("exception_message")]
    return "; ".join(messages) or None


def _result_dict(check: _Check, gx_result: Any, frame: pd.DataFrame) -> dict:
    config = gx_result.expectation_config
    raw = gx_result.result or {}
    column = config.kwargs.get("column")
    observed: dict[str, Any] = {
        "element_count": raw.get("element_count"),
        "unexpected_count": raw.get("unexpected_count"),
    }
    if check.quote_values:
        values = [_jsonable(v["value"]) for v in raw.get("partial_unexpected_counts", [])]
        observed["unexpected_values"] = values
    positions = raw.get("partial_unexpected_index_list") or []
    observed["examples"] = [check.example.format(**frame.iloc[int(i)].to_dict()) for i in positions]
    exception = _exception_message(gx_result.exception_info)
    if exception:
        observed["exception"] = exception
    blocking = bool(config.meta.get("blocking", True))
    return {
        "name": check.name,
        "expectation": config.type,
        "column": column,
        "blocking": blocking,
        "success": bool(gx_result.success),
        "observed": observed,
        "details": _details(check, config.type, column, bool(gx_result.success), observed),
    }


def _details(check: _Check, kind: str, column: str | None, success: bool, observed: dict) -> str:
    head = f"{kind}({column}) [{check.name}]"
    if success:
        return f"{head}: passed"
    if "exception" in observed:
        return f"{head}: could not run: {observed['exception']}"
    text = f"{head}: {observed['unexpected_count']} of {observed['element_count']} {check.problem}"
    if observed.get("unexpected_values"):
        text += f"; unexpected values {observed['unexpected_values']}"
    if observed["examples"]:
        text += f"; e.g. {', '.join(observed['examples'])}"
    return text


def _summary(task: str, used: int, excluded: int, results: list[dict], index: str) -> str:
    blocking = [r for r in results if not r["success"] and r["blocking"]]
    warnings = [r for r in results if not r["success"] and not r["blocking"]]
    verdict = "FAILED" if blocking else "PASSED"
    lines = [
        f"Manifest validation {verdict} for task {task!r}: {used} used rows ({excluded} excluded), "
        f"{len(results)} expectations, {len(blocking)} blocking failure(s), {len(warnings)} warning(s)."
    ]
    lines += [f"BLOCKING FAILED: {r['details']}" for r in blocking]
    lines += [f"WARNING (not blocking): {r['details']}" for r in warnings]
    lines.append(f"Data Docs: {index}")
    return "\n".join(lines)


# ---------------------------------------------------------------- public API


def validate_manifest(
    manifest: pd.DataFrame,
    task: str,
    docs_dir: str | Path,
    min_width: int = 64,
    min_height: int = 64,
    allowed_modes: Sequence[str] = DEFAULT_MODES,
    min_images_per_class: int = 5,
    suite_name: str = "cxr_manifest",
    warning_only: Iterable[str] = (),
) -> ValidationReport:
    """Validate the used rows of `manifest` with GX and build Data Docs into `docs_dir`.

    `warning_only` names checks (see CHECK_NAMES) whose failure is reported but
    does not make the report fail.
    """
    labels = labels_for_task(task)
    warning_only = set(warning_only)
    unknown = warning_only - set(CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown checks in warning_only: {sorted(unknown)}; valid: {list(CHECK_NAMES)}")
    # GX logs hundreds of INFO lines per run.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    used = _used_rows(manifest)
    docs_dir = Path(docs_dir).resolve()
    context = _context(docs_dir)
    context.data_sources.add_pandas("manifest")

    image_checks = _image_checks(labels, min_width, min_height, allowed_modes, warning_only)
    count_checks = _count_checks(min_images_per_class, warning_only)
    suites = [
        (_IMAGES_ASSET, suite_name, image_checks, images_table(used)),
        (_COUNTS_ASSET, f"{suite_name}_class_counts", count_checks, class_counts_table(used, labels)),
    ]
    by_name: dict[str, dict] = {}
    for asset, name, checks, frame in suites:
        by_check = {c.name: c for c in checks}
        for gx_result in _run_suite(context, asset, name, checks, frame):
            check = by_check[gx_result.expectation_config.meta["check"]]
            by_name[check.name] = _result_dict(check, gx_result, frame)
    context.build_data_docs(site_names=[_DOCS_SITE])
    index = docs_dir / "index.html"

    # GX does not keep the suite's order in its results.
    results = [by_name[name] for name in CHECK_NAMES]
    return ValidationReport(
        success=all(r["success"] for r in results if r["blocking"]),
        results=results,
        data_docs_index=str(index),
        summary=_summary(task, len(used), len(manifest) - len(used), results, str(index)),
    )


def raise_if_blocking(report: ValidationReport) -> None:
    """Stop the pipeline when a blocking expectation failed; the message says why and where."""
    if not report.success:
        raise ManifestValidationError(report)
