"""Manifest and split validation through Great Expectations: every check passing and failing, severities."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import ConfigError, ValidationConfig, parse_run_config
from components.labels import COVID, EXCLUDE_DUPLICATE, EXCLUDE_TRUNCATED, EXCLUDE_UNREADABLE, NON_COVID
from components.manifest import MANIFEST_COLUMNS
from components.validation import (
    BLOCKING,
    CHECK_NAMES,
    DEFAULT_SEVERITY,
    MANIFEST_CHECK_NAMES,
    SPLIT_CHECK_NAMES,
    WARNING,
    CheckResult,
    ManifestValidationError,
    SplitValidationError,
    ValidationReport,
    raise_if_blocking,
    resolve_severities,
    validate_manifest,
    validate_split,
)
from tests.factories import manifest_row, manifest_table

PER_CLASS = 5  # min_images_per_class in these tests
IMAGES_PER_CLASS = 8  # 4 per source, room to corrupt rows without starving a class
# A steward's narrowed allowed_modes (the default allows every mode the decoder converts, CMYK included).
NARROW_MODES = ["L", "RGB", "RGBA", "P", "I;16", "I", "LA"]


@pytest.fixture
def manifest() -> pd.DataFrame:
    """A clean binary-task manifest: two sources, IMAGES_PER_CLASS used images per class; every check passes."""
    sources = ["src_a" if i % 2 else "src_b" for i in range(IMAGES_PER_CLASS)]
    return manifest_table(
        manifest_row(f"/data/{sources[i]}/{label[:3]}{i}.png", label, sources[i])
        for label in (NON_COVID, COVID)
        for i in range(IMAGES_PER_CLASS)
    )


def _validate(
    manifest: pd.DataFrame, tmp_path: Path, data_docs: bool = False, suite_name: str = "cxr_manifest", **settings
) -> ValidationReport:
    """Binary-task validation; Data Docs only where a test looks at them (building them is half the time)."""
    config = ValidationConfig(**{"min_images_per_class": PER_CLASS, **settings})
    return validate_manifest(manifest, "binary", tmp_path / "docs", config, suite_name=suite_name, data_docs=data_docs)


def _result(report: ValidationReport, name: str) -> CheckResult:
    return next(r for r in report.results if r.name == name)


def _failed(report: ValidationReport) -> list[str]:
    return [r.name for r in report.results if not r.success]


def _round_trip(report: ValidationReport) -> ValidationReport:
    """The report as ZenML's pydantic materializer stores and loads it (JSON)."""
    return ValidationReport.model_validate_json(report.model_dump_json())


def _add(m: pd.DataFrame, **row) -> pd.DataFrame:
    return pd.concat([m, pd.DataFrame([row], columns=MANIFEST_COLUMNS)], ignore_index=True)


# ---------------------------------------------------------------- manifest: passing


def test_clean_manifest_passes_every_check_and_builds_data_docs(manifest, tmp_path):
    report = _validate(manifest, tmp_path, suite_name="cxr_test_suite", data_docs=True)

    assert report.success, report.summary
    assert report.stage == "manifest"
    assert [r.name for r in report.results] == list(MANIFEST_CHECK_NAMES)
    assert all(r.success for r in report.results)
    assert not any(r.skipped for r in report.results)
    assert {r.name: r.severity for r in report.results} == {n: DEFAULT_SEVERITY[n] for n in MANIFEST_CHECK_NAMES}
    index = Path(report.data_docs_index)
    assert index.is_absolute()
    assert index.is_file()
    assert index.parent == (tmp_path / "docs").resolve()
    html = index.read_text()
    for suite in ("cxr_test_suite", "cxr_test_suite_rows", "cxr_test_suite_classes", "cxr_test_suite_near_duplicates"):
        assert suite in html
    assert "PASSED" in report.summary
    assert "0 blocking failure(s), 0 warning(s)" in report.summary
    assert report.listings == {"exact_duplicates": [], "near_duplicates": []}
    classes = {row["label"]: row for row in report.tables["classes"]}
    assert classes[COVID]["count"] == IMAGES_PER_CLASS
    assert classes[COVID]["fraction"] == 0.5
    assert classes[COVID]["n_sources"] == 2
    assert _round_trip(report) == report  # the stored artifact loads back as the same report
    raise_if_blocking(report)  # no exception


def test_default_severities():
    warnings = {name for name, severity in DEFAULT_SEVERITY.items() if severity == WARNING}
    assert warnings == {
        "files_readable",
        "enough_gray_levels",
        "views_known",
        "no_near_duplicates",
        "class_balance",
        "class_source_diversity",
        "age_group_consistency",
    }
    assert set(DEFAULT_SEVERITY) == set(CHECK_NAMES) == set(MANIFEST_CHECK_NAMES) | set(SPLIT_CHECK_NAMES)
    assert DEFAULT_SEVERITY["no_near_duplicates_across_splits"] == BLOCKING


# ---------------------------------------------------------------- manifest: each check failing


def _file_row_excluded(m):
    return _add(
        m,
        **manifest_row(
            "/data/src_a/broken.png",
            "",
            "src_a",
            exclusion_reason=EXCLUDE_TRUNCATED,
            sha256="",
            phash="",
            width=0,
            height=0,
            mode="",
            bit_depth=0,
            exclusion_detail="image file is truncated",
        ),
    )


def _set(index: int, column: str, value):
    def corrupt(m):
        m.loc[index, column] = value
        return m

    return corrupt


def _duplicate_sha(m):
    m.loc[1, "sha256"] = m.loc[0, "sha256"]
    return m


def _near_duplicate(m):
    m.loc[1, "phash"] = f"{int(m.loc[0, 'phash'], 16) ^ 0b101:016x}"  # 2 bits apart
    return m


def _too_few_covid(m):
    m.loc[m["label"] == COVID, "exclusion_reason"] = "test"
    m.loc[m.index[-2:], "exclusion_reason"] = ""  # two COVID-19 images left, one per source
    return m


def _covid_from_one_source(m):
    m.loc[m["label"] == COVID, "source"] = "src_a"
    return m


def _ages_by_class(m):
    m["age_group"] = m["label"].map({COVID: "adult", NON_COVID: "pediatric"})
    return m


FAILURES = [
    # (corrupt, check, text in the details, extra settings)
    (
        _file_row_excluded,
        "files_readable",
        "1 of 17 rows excluded for a file problem; "
        f"unexpected values ['{EXCLUDE_TRUNCATED}']; e.g. /data/src_a/broken.png ({EXCLUDE_TRUNCATED})",
        {},
    ),
    (_set(0, "uri", ""), "uri_not_null", "1 of 16 rows without a uri; e.g. row 0", {}),
    (_set(2, "sha256", " "), "sha256_not_null", "1 of 16 rows without a sha256", {}),
    (_set(0, "label", ""), "label_not_null", "1 of 16 rows without a label; e.g. /data/src_b/non0.png", {}),
    (_set(0, "patient_id", None), "patient_id_not_null", "1 of 16 rows without a patient_id", {}),
    (_set(0, "source", ""), "source_not_null", "1 of 16 rows without a source", {}),
    (_set(0, "label", "bogus"), "label_in_task", "1 of 16 rows with a label outside", {}),
    (_set(0, "width", 10), "min_width", "narrower than 64 px; unexpected values [10]", {}),
    (_set(0, "height", 10), "min_height", "shorter than 64 px; unexpected values [10]", {}),
    # Every mode and depth the decoder converts is allowed by default (issue 13): a steward narrows the lists.
    (_set(0, "mode", "CMYK"), "mode_allowed", "unexpected values ['CMYK']", {"allowed_modes": NARROW_MODES}),
    (
        _set(0, "bit_depth", 32),
        "bit_depth_allowed",
        "bit depth outside [1, 8, 16]; unexpected values [32]",
        {"allowed_bit_depths": [1, 8, 16]},
    ),
    (_set(0, "gray_levels", 13), "enough_gray_levels", "fewer than 32 gray levels; unexpected values [13]", {}),
    (_set(3, "view", " Lateral"), "frontal_views_only", "1 of 16 rows with a lateral view", {}),
    (_set(slice(0, 8), "view", ""), "views_known", "9 of 16 rows with a blank or unknown view", {}),
    (_duplicate_sha, "sha256_unique", "2 of 16 rows sharing a sha256", {}),
    (
        _near_duplicate,
        "no_near_duplicates",
        "1 near-duplicate pairs (pHash distance <= 4); e.g. /data/src_b/non0.png ~ /data/src_a/non1.png (distance 2)",
        {},
    ),
    (_too_few_covid, "min_images_per_class", f"fewer than {PER_CLASS} images; e.g. {COVID}=2", {}),
    (lambda m: m, "class_balance", "2 of 2 classes under 60% of the images", {"min_class_fraction": 0.6}),
    (
        _covid_from_one_source,
        "class_source_diversity",
        f"1 of 2 classes from a single source while there are 2 sources; e.g. {COVID} only from src_a",
        {},
    ),
    (
        _ages_by_class,
        "age_group_consistency",
        f"2 of 2 classes whose pediatric share differs from another class's by more than 50%; "
        f"e.g. {NON_COVID}: 100% pediatric, {COVID}: 0% pediatric",
        {},
    ),
]


@pytest.mark.parametrize(("corrupt", "check", "mention", "settings"), FAILURES, ids=[f[1] for f in FAILURES])
def test_each_check_fails_alone_with_its_default_severity(manifest, tmp_path, corrupt, check, mention, settings):
    report = _validate(corrupt(manifest), tmp_path, **settings)

    assert _failed(report) == [check], report.summary
    result = _result(report, check)
    blocking = DEFAULT_SEVERITY[check] == BLOCKING
    assert result.blocking is blocking
    assert result.severity == DEFAULT_SEVERITY[check]
    assert report.success is not blocking
    prefix = "BLOCKING FAILED: " if blocking else "WARNING (not blocking): "
    assert f"{prefix}{result.details}" in report.summary
    assert mention in result.details
    assert _round_trip(report) == report


def test_every_manifest_check_has_a_failing_case():
    assert sorted(f[1] for f in FAILURES) == sorted(MANIFEST_CHECK_NAMES)


def test_failure_quotes_offending_uris(manifest, tmp_path):
    manifest.loc[0:2, "label"] = "bogus"
    observed = _result(_validate(manifest, tmp_path), "label_in_task").observed

    assert observed.unexpected_count == 3
    assert observed.unexpected_values == ["bogus"]
    assert observed.examples == list(manifest.loc[0:2, "uri"])


def test_excluded_rows_are_not_held_to_the_contract(manifest, tmp_path):
    bad = manifest_row(
        "/data/src_a/gone.png",
        "",
        "src_a",
        width=1,
        height=1,
        mode="CMYK",
        bit_depth=32,
        view="L",
        sha256=manifest.loc[0, "sha256"],
        phash=manifest.loc[0, "phash"],
        exclusion_reason="lateral view",
    )
    report = _validate(_add(manifest, **bad), tmp_path)

    assert report.success, report.summary
    assert not _failed(report), report.summary
    assert "16 used rows (1 excluded)" in report.summary
    assert _result(report, "label_in_task").observed.element_count == 16


def test_frontal_only_false_skips_the_view_check(manifest, tmp_path):
    manifest.loc[0, "view"] = "L"
    report = _validate(manifest, tmp_path, frontal_only=False)

    result = _result(report, "frontal_views_only")
    assert report.success
    assert result.success
    assert result.skipped
    assert "skipped: frontal_only is false" in result.details


def test_single_source_manifest_does_not_warn_about_source_diversity(manifest, tmp_path):
    manifest["source"] = "only"
    report = _validate(manifest, tmp_path)

    assert _result(report, "class_source_diversity").success


def test_unknown_ages_do_not_count_as_an_age_difference(manifest, tmp_path):
    manifest["age_group"] = ""
    manifest.loc[manifest["label"] == COVID, "age_group"] = "pediatric"
    report = _validate(manifest, tmp_path)

    assert _result(report, "age_group_consistency").success
    classes = {row["label"]: row for row in report.tables["classes"]}
    assert classes[NON_COVID]["pediatric_share"] is None
    assert classes[COVID]["pediatric_share"] == 1.0


def test_check_that_cannot_run_fails_with_its_error(manifest, tmp_path):
    manifest["width"] = "wide"  # GX cannot compare text with 64
    report = _validate(manifest, tmp_path)

    assert not report.success
    assert "[min_width]: could not run: " in report.summary


# ---------------------------------------------------------------- duplicates listed pairwise


def test_exact_duplicates_are_listed_including_those_already_excluded(manifest, tmp_path):
    manifest.loc[1, ["sha256", "phash"]] = manifest.loc[0, ["sha256", "phash"]].to_numpy()  # used twice
    copy = manifest_row(
        "/data/src_a/copy.png",
        "",
        "src_a",
        sha256=manifest.loc[2, "sha256"],
        phash=manifest.loc[2, "phash"],
        patient_id=manifest.loc[2, "patient_id"],
        exclusion_reason=EXCLUDE_DUPLICATE,
        exclusion_detail=f"same bytes as {manifest.loc[2, 'uri']}",
    )
    orphan = manifest_row(
        "/data/src_b/orphan.png",
        "",
        "src_b",
        sha256="",
        exclusion_reason=EXCLUDE_DUPLICATE,
        exclusion_detail="same bytes as /elsewhere/original.png",
    )
    manifest = _add(_add(manifest, **copy), **orphan)

    report = _validate(manifest, tmp_path)

    pairs = {(p["uri_a"], p["uri_b"]): p for p in report.listings["exact_duplicates"]}
    assert set(pairs) == {
        (manifest.loc[0, "uri"], manifest.loc[1, "uri"]),
        (manifest.loc[2, "uri"], "/data/src_a/copy.png"),
        ("/elsewhere/original.png", "/data/src_b/orphan.png"),
    }
    used_pair = pairs[(manifest.loc[0, "uri"], manifest.loc[1, "uri"])]
    assert not used_pair["excluded"]
    assert not used_pair["same_patient"]
    excluded_pair = pairs[(manifest.loc[2, "uri"], "/data/src_a/copy.png")]
    assert excluded_pair["excluded"]
    assert excluded_pair["same_patient"]
    assert _failed(report) == ["sha256_unique", "no_near_duplicates"]  # same bytes: also distance 0


def test_near_duplicates_are_listed_within_and_across_sources(manifest, tmp_path):
    base = int(manifest.loc[0, "phash"], 16)  # row 0: src_b
    manifest.loc[2, "phash"] = f"{base ^ 0b1111:016x}"  # src_b, distance 4: within the source
    manifest.loc[1, "phash"] = f"{base ^ 0b11:016x}"  # src_a, distance 2: across sources
    report = _validate(manifest, tmp_path, near_duplicate_max_distance=4)

    pairs = {(p["uri_a"], p["uri_b"]): p for p in report.listings["near_duplicates"]}
    uris = manifest["uri"]
    assert set(pairs) == {(uris[0], uris[1]), (uris[0], uris[2]), (uris[1], uris[2])}
    assert pairs[(uris[0], uris[2])]["distance"] == 4
    assert pairs[(uris[0], uris[2])]["same_source"]
    assert pairs[(uris[0], uris[1])]["distance"] == 2
    assert not pairs[(uris[0], uris[1])]["same_source"]
    assert _result(report, "no_near_duplicates").observed.observed_value == 3

    tighter = _validate(manifest, tmp_path, near_duplicate_max_distance=2)  # rows 1 and 2 differ in 2 bits
    assert [(p["uri_a"], p["uri_b"]) for p in tighter.listings["near_duplicates"]] == [
        (uris[0], uris[1]),
        (uris[1], uris[2]),
    ]


# ---------------------------------------------------------------- severities


def test_severity_overrides_turn_failures_into_warnings_and_back(manifest, tmp_path):
    manifest.loc[0, "mode"] = "CMYK"
    _near_duplicate(manifest)

    default = _validate(manifest, tmp_path, allowed_modes=NARROW_MODES)
    assert not default.success
    assert _result(default, "mode_allowed").blocking
    assert not _result(default, "no_near_duplicates").blocking

    relaxed = _validate(manifest, tmp_path, allowed_modes=NARROW_MODES, severity={"mode_allowed": "warning"})
    assert relaxed.success
    assert not _result(relaxed, "mode_allowed").blocking
    assert "WARNING (not blocking): " in relaxed.summary
    assert "BLOCKING FAILED" not in relaxed.summary
    raise_if_blocking(relaxed)

    strict = _validate(
        manifest,
        tmp_path,
        allowed_modes=NARROW_MODES,
        severity={"mode_allowed": "warning", "no_near_duplicates": "blocking"},
    )
    assert not strict.success
    assert _result(strict, "no_near_duplicates").severity == BLOCKING

    shorthand = _validate(manifest, tmp_path, allowed_modes=NARROW_MODES, warning_only=["mode_allowed"])
    assert shorthand.success


def test_resolve_severities_rejects_unknown_names_values_and_conflicts():
    with pytest.raises(ValueError, match=r"unknown validation check\(s\) \['no_such_check'\].*min_width"):
        resolve_severities({"no_such_check": "warning"})
    with pytest.raises(ValueError, match="no_such_check"):
        resolve_severities(warning_only=["no_such_check"])
    with pytest.raises(ValueError, match="severity must be one of"):
        resolve_severities({"min_width": "fatal"})
    with pytest.raises(ValueError, match="in warning_only and set to 'blocking'"):
        resolve_severities({"min_width": "blocking"}, ["min_width"])
    assert resolve_severities(warning_only=["min_width"])["min_width"] == WARNING


def test_validate_rejects_unknown_checks_settings_task_and_columns(manifest, tmp_path):
    with pytest.raises(ValueError, match="valid checks: .*min_width"):
        _validate(manifest, tmp_path, severity={"no_such_check": "warning"})
    with pytest.raises(ValueError, match=r"min_widht\n  Extra inputs are not permitted"):
        _validate(manifest, tmp_path, min_widht=10)
    with pytest.raises(ValueError, match="unknown task"):
        validate_manifest(manifest, "tri-class", tmp_path / "docs")
    with pytest.raises(ValueError, match="sha256"):
        _validate(manifest.drop(columns=["sha256"]), tmp_path)


def test_config_rejects_unknown_checks():
    with pytest.raises(ValueError, match="valid checks"):
        ValidationConfig(severity={"no_such_check": "warning"})
    with pytest.raises(ValueError, match="valid checks"):
        ValidationConfig(warning_only=["no_such_check"])
    with pytest.raises(ValueError):
        ValidationConfig(severity={"min_width": "fatal"})
    run = {
        "data": {"sources": [{"kind": "folder", "root": "x", "name": "x"}]},
        "backbones": [{"name": "mobilenet"}],
        "validation": {"severity": {"min_widht": "warning"}},
    }
    with pytest.raises(ConfigError, match="validation: .*min_widht"):
        parse_run_config(run)


def test_raise_if_blocking_carries_summary_and_docs_path(manifest, tmp_path):
    manifest.loc[0, "mode"] = "CMYK"
    report = _validate(manifest, tmp_path, data_docs=True, allowed_modes=NARROW_MODES)

    with pytest.raises(ManifestValidationError) as caught:
        raise_if_blocking(report)
    message = str(caught.value)
    assert "mode_allowed" in message
    assert report.data_docs_index in message
    assert caught.value.report is report
    with pytest.raises(ManifestValidationError):
        raise_if_blocking(_round_trip(report))  # the report as the gate step loads it works too


# ---------------------------------------------------------------- split


@pytest.fixture
def split_manifest(manifest) -> pd.DataFrame:
    """Used rows with a split: each class has patients in train, val and test; no leak."""
    splits = (["train"] * 4 + ["val"] * 2 + ["test"] * 2) * 2
    return manifest.assign(split=splits)


def _validate_split(
    split_manifest, tmp_path, data_docs: bool = False, suite_name: str = "cxr_split", **settings
) -> ValidationReport:
    config = ValidationConfig(**settings)
    return validate_split(
        split_manifest, "binary", tmp_path / "docs", config, suite_name=suite_name, data_docs=data_docs
    )


def test_clean_split_passes_and_shares_the_data_docs_site(manifest, split_manifest, tmp_path):
    manifest_report = _validate(manifest, tmp_path, suite_name="cxr_manifest", data_docs=True)
    report = _validate_split(split_manifest, tmp_path, suite_name="cxr_split", data_docs=True)

    assert report.success, report.summary
    assert report.stage == "split"
    assert [r.name for r in report.results] == list(SPLIT_CHECK_NAMES)
    assert all(r.success for r in report.results)
    assert all(r.blocking for r in report.results)
    assert report.listings == {"patient_leaks": [], "near_duplicate_leaks": []}
    assert {(r["split"], r["label"]): r["count"] for r in report.tables["split_classes"]}[("val", COVID)] == 2
    assert "16 images (train 8, val 4, test 4)" in report.summary
    # One index reaches both validations' suites and results.
    assert report.data_docs_index == manifest_report.data_docs_index
    index = Path(report.data_docs_index).read_text()
    for suite in ("cxr_manifest", "cxr_manifest_classes", "cxr_split_patients", "cxr_split_near_duplicates"):
        assert f"validations/{suite}/" in index
        assert f"expectations/{suite}.html" in index
    assert _round_trip(report) == report
    raise_if_blocking(report)


def test_patient_in_two_splits_blocks_and_is_listed(split_manifest, tmp_path):
    split_manifest.loc[1, "patient_id"] = split_manifest.loc[0, "patient_id"]  # same patient ...
    split_manifest.loc[1, "split"] = "test"  # ... in train and test
    report = _validate_split(split_manifest, tmp_path)

    assert not report.success
    assert _failed(report) == ["no_patient_in_two_splits"]
    patient = split_manifest.loc[0, "patient_id"]
    assert report.listings["patient_leaks"] == [
        {"patient_id": patient, "n_splits": 2, "n_images": 2, "splits": "test, train"}
    ]
    assert f"1 of 15 patients in several splits; e.g. {patient} in test, train" in report.summary
    with pytest.raises(SplitValidationError):
        raise_if_blocking(report)


def test_near_duplicates_across_splits_block_but_not_within_a_split(split_manifest, tmp_path):
    base = int(split_manifest.loc[0, "phash"], 16)
    split_manifest.loc[1, "phash"] = f"{base ^ 0b11:016x}"  # row 1: train, like row 0
    same_split = _validate_split(split_manifest, tmp_path)
    assert same_split.success
    assert same_split.listings["near_duplicate_leaks"] == []

    split_manifest.loc[4, "phash"] = f"{base ^ 0b1100:016x}"  # row 4: val
    report = _validate_split(split_manifest, tmp_path)

    assert not report.success
    assert _failed(report) == ["no_near_duplicates_across_splits"]
    leaks = report.listings["near_duplicate_leaks"]
    uris = split_manifest["uri"]
    assert {(p["uri_a"], p["uri_b"], p["split_a"], p["split_b"], p["distance"]) for p in leaks} == {
        (uris[0], uris[4], "train", "val", 2),
        (uris[1], uris[4], "train", "val", 4),
    }
    assert "2 near-duplicate pairs across splits" in report.summary
    relaxed = _validate_split(split_manifest, tmp_path, severity={"no_near_duplicates_across_splits": "warning"})
    assert relaxed.success
    assert "WARNING (not blocking)" in relaxed.summary


def test_too_few_images_of_a_class_in_a_split_blocks(split_manifest, tmp_path):
    split_manifest.loc[(split_manifest["label"] == COVID) & (split_manifest["split"] == "test"), "split"] = "train"
    report = _validate_split(split_manifest, tmp_path)

    assert _failed(report) == ["min_images_per_split_class"]
    assert not report.success
    assert f"1 of 6 (split, class) cells with fewer than 1 image(s); e.g. test/{COVID}=0" in report.summary
    assert _validate_split(split_manifest, tmp_path, min_images_per_split_class=0).success


def test_unknown_split_value_blocks(split_manifest, tmp_path):
    split_manifest.loc[0, "split"] = "holdout"
    report = _validate_split(split_manifest, tmp_path)

    assert "split_values_known" in _failed(report)
    assert not report.success
    assert "unexpected values ['holdout']" in _result(report, "split_values_known").details


def test_split_manifest_needs_a_split_column(manifest, tmp_path):
    with pytest.raises(ValueError, match="split"):
        _validate_split(manifest, tmp_path)


def test_excluded_file_reasons_cover_the_unreadable_kinds():
    from components.validation import FILE_REASONS

    assert EXCLUDE_UNREADABLE in FILE_REASONS
    assert EXCLUDE_TRUNCATED in FILE_REASONS
    assert EXCLUDE_DUPLICATE not in FILE_REASONS


def test_without_data_docs_nothing_is_written(manifest, tmp_path):
    report = _validate(manifest, tmp_path, data_docs=False)

    assert report.success
    assert report.data_docs_index == ""
    assert "Data Docs: not built" in report.summary
    assert not (tmp_path / "docs").exists()


# ---------------------------------------------------------------- external data and evaluation drops


def _with_external(split_manifest: pd.DataFrame) -> pd.DataFrame:
    """The split fixture plus one external COVID-19 image of source "ext" (no non-COVID one)."""
    from tests.factories import manifest_row

    row = manifest_row("/data/ext/covid.png", COVID, "ext")
    return _add(split_manifest, **row).assign(split=[*split_manifest["split"], "external"])


def test_external_rows_are_held_out_exempt_from_the_per_split_minimum_and_counted_per_source(split_manifest, tmp_path):
    report = _validate_split(_with_external(split_manifest), tmp_path)

    assert report.success, report.summary
    assert "17 images (train 8, val 4, test 4, external 1)" in report.summary
    assert {(r["split"], r["label"]) for r in report.tables["split_classes"]} == {
        (split, label) for split in ("train", "val", "test") for label in (NON_COVID, COVID)
    }
    assert report.tables["external_classes"] == [
        {"source": "ext", "label": NON_COVID, "count": 0},
        {"source": "ext", "label": COVID, "count": 1},
    ]


def test_an_external_near_duplicate_of_a_training_image_is_a_leak(split_manifest, tmp_path):
    frame = _with_external(split_manifest)
    base = int(frame.loc[0, "phash"], 16)  # row 0: train
    frame.loc[len(frame) - 1, "phash"] = f"{base ^ 0b1:016x}"
    report = _validate_split(frame, tmp_path)

    assert _failed(report) == ["no_near_duplicates_across_splits"]
    leaks = report.listings["near_duplicate_leaks"]
    assert [(p["uri_a"], p["uri_b"], p["split_a"], p["split_b"]) for p in leaks] == [
        (frame.loc[0, "uri"], "/data/ext/covid.png", "train", "external")
    ]


def test_an_evaluation_drop_skips_the_training_thresholds(manifest, split_manifest, tmp_path):
    evaluation = manifest.assign(split="external")
    many = {"min_images_per_class": 1000, "min_class_fraction": 0.9, "min_images_per_split_class": 1000}
    config = ValidationConfig(**many)
    manifest_report = validate_manifest(manifest, "binary", tmp_path, config, data_docs=False, purpose="evaluation")
    split_report = validate_split(evaluation, "binary", tmp_path, config, data_docs=False, purpose="evaluation")

    assert manifest_report.success, manifest_report.summary
    assert [r.name for r in manifest_report.results] == list(MANIFEST_CHECK_NAMES)
    assert _result(manifest_report, "min_images_per_class").skipped
    assert _result(manifest_report, "class_balance").skipped
    assert "training thresholds do not apply" in _result(manifest_report, "class_balance").details
    assert "(evaluation data)" in manifest_report.summary
    assert split_report.success, split_report.summary
    assert _result(split_report, "min_images_per_split_class").skipped
    assert "16 images (external 16)" in split_report.summary
    assert split_report.tables["split_classes"] == []
    # The same data for training: blocked by the thresholds.
    assert not _validate(manifest, tmp_path, **many).success
    # An evaluation drop has no training split.
    report = validate_split(split_manifest, "binary", tmp_path, config, data_docs=False, purpose="evaluation")
    assert _failed(report) == ["split_values_known"]
    with pytest.raises(ValueError, match="purpose"):
        validate_split(evaluation, "binary", tmp_path, config, data_docs=False, purpose="serving")
