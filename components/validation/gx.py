"""Great Expectations plumbing: an ephemeral context, running the suites, Data Docs, reading results.

The GX context is ephemeral with in-memory stores: the only things written to
disk are the Data Docs site and its validation results, in ``docs_dir``.
Both validations write into the same site when given the same ``docs_dir``:
GX's site index lists every validation page found in the site folder (see
``KeepingSiteIndexBuilder``), so one index.html reaches both.

Each GX result is read back into a ``CheckResult`` whose ``details`` line says
what failed and quotes a few offending rows. GX itself is imported inside the
functions (importing it takes seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.validation.checks import EXAMPLES, Check, Suite
from components.validation.report import CheckResult, Observed, json_scalar
from components.validation.severities import BLOCKING, Severity

_DOCS_SITE = "cxr_data_docs"
_RESULTS_FOLDER = "_validation_results"  # GX validation results (JSON), inside docs_dir


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


def _run_suite(context: Any, source: Any, suite: Suite) -> list[Any]:
    """Validate `suite.frame` with its suite; the result lands in the context's store for Data Docs."""
    import great_expectations as gx

    batch = source.add_dataframe_asset(suite.asset)
    batch_definition = batch.add_batch_definition_whole_dataframe(suite.asset)
    # All expectations at once: adding them one by one saves the suite to the store each time.
    expectations = [c.expectation for c in suite.checks]
    gx_suite = context.suites.add(gx.ExpectationSuite(name=suite.name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=gx_suite)
    )
    # No `unexpected_index_column_names`: with it GX 1.24 reads every unexpected row
    # cell by cell (minutes at 100k failures). Positions into `frame` are cheap and we
    # look the uris up ourselves.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
    return definition.run(batch_parameters={"dataframe": suite.frame}, result_format=result_format).results


def run_suites(
    docs_dir: str | Path, source_name: str, suites: Sequence[Suite], data_docs: bool = True
) -> tuple[dict[str, CheckResult], str]:
    """Run every suite in one ephemeral GX context and build the Data Docs site.

    Args:
        docs_dir: Folder of the Data Docs site (created when `data_docs`).
        source_name: Name of the GX pandas data source, e.g. "manifest".
        suites: The suites to run; a suite without checks is skipped.
        data_docs: Build the site (and keep the validation results beside it); without it
            nothing is written to disk.

    Returns:
        ({check name: result} for every check of the suites, absolute path of the site's
        index.html, or "" without `data_docs`).
    """
    # GX logs hundreds of INFO lines per run.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    docs_dir = Path(docs_dir).resolve()
    context = _context(docs_dir, data_docs)
    source = context.data_sources.add_pandas(source_name)
    by_name: dict[str, CheckResult] = {}
    for suite in suites:
        if not suite.checks:
            continue
        by_check = {c.name: c for c in suite.checks}
        for gx_result in _run_suite(context, source, suite):
            check = by_check[gx_result.expectation_config.meta["check"]]
            by_name[check.name] = _check_result(check, gx_result, suite.frame)
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


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _check_result(check: Check, gx_result: Any, frame: pd.DataFrame) -> CheckResult:
    config = gx_result.expectation_config
    raw = gx_result.result or {}
    column = config.kwargs.get("column")
    observed = Observed()
    if "observed_value" in raw:  # table-level expectation (row count)
        observed.observed_value = json_scalar(raw["observed_value"])
    else:
        observed.element_count = _count(raw.get("element_count"))
        observed.unexpected_count = _count(raw.get("unexpected_count"))
        if check.quote_values:
            observed.unexpected_values = [json_scalar(v["value"]) for v in raw.get("partial_unexpected_counts", [])]
    if check.examples is not None:
        observed.examples = list(check.examples) if not gx_result.success else []
    else:
        positions = raw.get("partial_unexpected_index_list") or []
        observed.examples = [_format_example(check.example, frame.iloc[int(i)].to_dict()) for i in positions]
    observed.exception = _exception_message(gx_result.exception_info)
    severity = config.meta.get("severity", BLOCKING)
    success = bool(gx_result.success)
    return CheckResult(
        name=check.name,
        severity=severity,
        blocking=severity == BLOCKING,
        success=success,
        expectation=config.type,
        column=column,
        observed=observed,
        details=_details(check, config.type, column, success, observed),
    )


def skipped_result(name: str, severity: Severity, why: str) -> CheckResult:
    """The result of a check that did not run: it passes, marked skipped.

    Args:
        name: The check's name.
        severity: Its severity under the config.
        why: Why it did not run, e.g. "frontal_only is false".

    Returns:
        A passing, skipped result whose details say why.
    """
    return CheckResult(
        name=name,
        severity=severity,
        blocking=severity == BLOCKING,
        success=True,
        skipped=True,
        details=f"[{name}]: skipped: {why}",
    )


def _details(check: Check, kind: str, column: str | None, success: bool, observed: Observed) -> str:
    head = f"{kind}({column}) [{check.name}]" if column else f"{kind} [{check.name}]"
    if success:
        return f"{head}: passed"
    if observed.exception is not None:
        return f"{head}: could not run: {observed.exception}"
    if observed.observed_value is not None:
        text = f"{head}: {observed.observed_value} {check.problem}"
    else:
        text = f"{head}: {observed.unexpected_count} of {observed.element_count} {check.problem}"
    if observed.unexpected_values:
        text += f"; unexpected values {observed.unexpected_values}"
    if observed.examples:
        text += f"; e.g. {', '.join(observed.examples)}"
    return text
