"""The data steward's summary, HTML page (escaping, self-contained) and excluded-rows CSV (formula guard)."""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pandas as pd
import pytest

from components.labels import COVID, EXCLUDE_DUPLICATE, EXCLUDE_LATERAL, EXCLUDE_UNKNOWN_FINDING, NORMAL, PNEUMONIA
from components.manifest import MANIFEST_COLUMNS
from components.steward_report import (
    EXCLUDED_COLUMNS,
    EXCLUDED_ROWS_CSV,
    HTML_MAX_ROWS,
    SUMMARY_HTML,
    SUMMARY_JSON,
    StewardSummary,
    build_gallery,
    build_summary,
    excluded_rows,
    excluded_rows_csv,
    render_html,
    spreadsheet_safe,
    write_steward_report,
)
from components.validation import ValidationConfig, ValidationReport, validate_manifest, validate_split
from tests.factories import manifest_row, manifest_table

SCRIPT = "<script>alert(1)</script>"
NASTY_NAME = '/data/a&b"c<d>e.png'


@pytest.fixture
def manifest() -> pd.DataFrame:
    rows = [
        manifest_row(f"/data/{label}/{i}.png", label, "ieee" if i % 2 else "actualmed")
        for label in (COVID, NORMAL, PNEUMONIA)
        for i in range(6)
    ]
    rows[0]["uri"] = NASTY_NAME  # a COVID-19 image from actualmed
    rows[13]["age_group"] = "pediatric"  # a pneumonia image
    rows += [
        manifest_row("/data/x/script.png", "", "ieee", finding=SCRIPT, exclusion_reason=EXCLUDE_UNKNOWN_FINDING),
        manifest_row("/data/x/lateral.png", "", "ieee", view="L", exclusion_reason=EXCLUDE_LATERAL),
        manifest_row(
            "/data/x/copy.png",
            "",
            "ieee",
            sha256=rows[0]["sha256"],
            phash=rows[0]["phash"],
            patient_id=rows[0]["patient_id"],
            exclusion_reason=EXCLUDE_DUPLICATE,
            exclusion_detail=f"same bytes as {NASTY_NAME}",
        ),
    ]
    frame = manifest_table(rows)
    frame.loc[1, "phash"] = f"{int(frame.loc[0, 'phash'], 16) ^ 0b11:016x}"  # near-duplicate of the nasty name
    return frame


@pytest.fixture
def validated(manifest, tmp_path):
    """Both validations of the fixture (split: rows 0 and 1, near-duplicates, in train and test)."""
    used = manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)
    split = used.assign(split=(["train", "test", "val"] * 6))
    config = ValidationConfig(min_images_per_class=2)
    manifest_report = validate_manifest(manifest, "multiclass", tmp_path / "docs", config, data_docs=False)
    split_report = validate_split(split, "multiclass", tmp_path / "docs", config, data_docs=False)
    return manifest_report, split, split_report


def test_summary_holds_what_a_steward_reads(manifest, validated):
    manifest_report, split, split_report = validated

    summary = build_summary(manifest, "multiclass", manifest_report, split, split_report, dataset_version="v1.2")

    dumped = summary.model_dump(mode="json")
    assert json.loads(json.dumps(dumped, allow_nan=False)) == dumped  # summary.json: strict JSON (no NaN)
    assert StewardSummary.model_validate_json(summary.model_dump_json()) == summary  # the artifact loads back
    assert summary.dataset_version == "v1.2"
    assert summary.task == "multiclass"
    assert dumped["counts"] == {
        "total": 21,
        "used": 18,
        "excluded": 3,
        "patients": 18,
        "sources": 2,
        "splits": {"train": 6, "test": 6, "val": 6},
    }
    assert summary.exclusions_by_reason == {EXCLUDE_UNKNOWN_FINDING: 1, EXCLUDE_LATERAL: 1, EXCLUDE_DUPLICATE: 1}
    assert dumped["excluded_findings"] == [{"finding": SCRIPT, "reason": EXCLUDE_UNKNOWN_FINDING, "rows": 1}]
    assert dumped["classes"][0] == {"label": COVID, "count": 6, "fraction": round(6 / 18, 4)}
    by_source = {row.label: row.counts for row in summary.class_by_source.rows}
    assert by_source[COVID] == {"actualmed": 3, "ieee": 3}
    by_age = {row.label: row.counts for row in summary.class_by_age_group.rows}
    assert summary.class_by_age_group.columns == ["adult", "pediatric", "unknown"]
    assert by_age[PNEUMONIA] == {"adult": 5, "pediatric": 1, "unknown": 0}
    by_split = {row.label: row.counts for row in summary.class_by_split.rows}
    assert summary.class_by_split.columns == ["train", "val", "test"]
    assert by_split[NORMAL] == {"train": 2, "val": 2, "test": 2}

    # Duplicates: the excluded copy of the nasty name, and its near-duplicate (same for the split leak).
    assert [(p["uri_a"], p["uri_b"], p["excluded"], p["same_patient"]) for p in summary.exact_duplicates] == [
        (NASTY_NAME, "/data/x/copy.png", True, True)
    ]
    near = summary.near_duplicates
    assert [(p["uri_a"], p["uri_b"], p["distance"], p["same_patient"]) for p in near] == [
        (NASTY_NAME, f"/data/{COVID}/1.png", 2, False)
    ]
    leaks = summary.near_duplicate_leaks
    assert [(p["split_a"], p["split_b"]) for p in leaks] == [("train", "test")]
    assert summary.patient_leaks == []

    # Every check, with severity and result; the leak blocks, the near-duplicate only warns.
    assert len(summary.checks) == len(manifest_report.results) + len(split_report.results)
    assert {c.stage for c in summary.checks} == {"manifest", "split"}
    assert [c.name for c in summary.blocked_by] == ["no_near_duplicates_across_splits"]
    assert "no_near_duplicates" in [c.name for c in summary.warnings]
    assert summary.verdict == "BLOCKED"
    assert not summary.success
    assert set(dumped["data_docs"]) == {"index", "manifest", "split"}


def test_summary_accepts_a_reloaded_report_and_a_missing_split(manifest, validated):
    manifest_report, _, _ = validated
    reloaded = ValidationReport.model_validate_json(manifest_report.model_dump_json())  # as the step loads it

    summary = build_summary(manifest, "multiclass", reloaded)

    assert not summary.split_checked
    assert summary.class_by_split is None
    assert summary.counts.splits is None
    assert summary.verdict == "PASSED WITH WARNINGS"  # near-duplicate warning only
    assert summary.success
    assert summary.dataset_version is None
    assert "split not checked yet" in render_html(summary)


def _report(stage: str, results: list[dict], docs: str = "/site/index.html") -> ValidationReport:
    return ValidationReport(
        success=all(r["success"] for r in results if r["blocking"]),
        results=results,
        data_docs_index=docs,
        summary="",
        stage=stage,
    )


def _check(name: str, success: bool, severity: str = "blocking", details: str = "") -> dict:
    return {
        "name": name,
        "severity": severity,
        "blocking": severity == "blocking",
        "success": success,
        "skipped": False,
        "details": details or f"[{name}]: {'passed' if success else 'failed'}",
    }


@pytest.mark.parametrize(
    ("results", "verdict", "css"),
    [
        ([_check("min_width", True)], "PASSED", "PASSED"),
        ([_check("min_width", True), _check("class_balance", False, "warning")], "PASSED WITH WARNINGS", "WARN"),
        ([_check("min_width", False), _check("class_balance", False, "warning")], "BLOCKED", "BLOCKED"),
    ],
)
def test_verdict_banner(manifest, results, verdict, css):
    summary = build_summary(manifest, "multiclass", _report("manifest", results))

    assert summary.verdict == verdict
    assert f'<div class="banner {css}">{verdict}' in render_html(summary)


def test_html_escapes_every_value_and_is_self_contained(manifest, validated, tmp_path):
    manifest_report, split, split_report = validated
    summary = build_summary(
        manifest, "multiclass", manifest_report, split, split_report, dataset_version='<b onmouseover="x">v1</b>'
    )
    summary.blocked_by[0].details += f" {SCRIPT}"  # check details quote data too

    page = render_html(summary)

    assert SCRIPT not in page
    assert "<b onmouseover" not in page
    assert html_escaped(SCRIPT) in page  # the finding, listed as left out
    assert html_escaped(NASTY_NAME) == "/data/a&amp;b&quot;c&lt;d&gt;e.png"
    assert html_escaped(NASTY_NAME) in page
    assert NASTY_NAME not in page
    # Only the tags the renderer writes itself; no scripts, links, images or remote assets.
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "<img" not in page.lower()
    assert not re.search(r"(src=|url\(|@import|https?://)", page)
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    for heading in (
        "Counts",
        "Exclusions by reason",
        "Class &times; source",
        "Class &times; age group",
        "Class &times; split",
        "Checks",
        "Exact duplicates",
        "Near-duplicates",
        "Leaks across splits",
        "What blocked the run",
        "Great Expectations Data Docs",
    ):
        assert heading in page


def html_escaped(text: str) -> str:
    return html.escape(text, quote=True)


def test_data_docs_links_are_local_and_never_scripts(manifest):
    report = _report("manifest", [_check("min_width", True)], docs="/runs/docs & more/index.html")
    page = render_html(build_summary(manifest, "multiclass", report))
    assert 'href="file:///runs/docs%20%26%20more/index.html"' in page
    assert (
        render_html(build_summary(manifest, "multiclass", report), link_base="/runs").count(
            'href="docs%20%26%20more/index.html"'
        )
        == 1
    )

    evil = _report("manifest", [_check("min_width", True)], docs="javascript:alert(1)")
    page = render_html(build_summary(manifest, "multiclass", evil))
    assert 'href="javascript' not in page
    assert "javascript:alert(1)" in page  # shown as text, not linked


def test_long_tables_are_cut_in_html_but_kept_in_the_summary(manifest):
    pairs = [
        {
            "uri_a": f"/a/{i}.png",
            "uri_b": f"/b/{i}.png",
            "distance": 2,
            "same_patient": False,
            "patient_a": "p",
            "patient_b": "q",
            "source_a": "s",
            "source_b": "s",
        }
        for i in range(HTML_MAX_ROWS + 7)
    ]
    report = _report("manifest", [_check("no_near_duplicates", False, "warning")])
    report.listings = {"near_duplicates": pairs, "exact_duplicates": []}

    summary = build_summary(manifest, "multiclass", report)
    page = render_html(summary)

    assert len(summary.near_duplicates) == HTML_MAX_ROWS + 7
    assert f"{HTML_MAX_ROWS} of {HTML_MAX_ROWS + 7} rows shown" in page
    assert f"/a/{HTML_MAX_ROWS + 6}.png" not in page


# ---------------------------------------------------------------- excluded rows and CSV


def test_excluded_rows_lists_the_left_out_rows_with_their_reason(manifest):
    rows = excluded_rows(manifest)

    assert list(rows.columns) == list(EXCLUDED_COLUMNS)
    assert list(rows["exclusion_reason"]) == [EXCLUDE_UNKNOWN_FINDING, EXCLUDE_LATERAL, EXCLUDE_DUPLICATE]
    assert rows.loc[2, "exclusion_detail"] == f"same bytes as {NASTY_NAME}"


def test_csv_neutralises_formula_injection(manifest):
    formulas = {
        "uri": '=HYPERLINK("http://evil","click")',
        "finding": "+cmd|' /C calc'!A0",
        "patient_id": "@SUM(A1)",
        "exclusion_detail": "-2+3",
        "view": "\tPA",
        "source": "\r=1",
    }
    bad = manifest_row("/data/x/bad.png", "", "ieee", exclusion_reason=EXCLUDE_LATERAL)
    bad.update(formulas)
    manifest = pd.concat([manifest, pd.DataFrame([bad], columns=MANIFEST_COLUMNS)], ignore_index=True)

    parsed = list(csv.DictReader(io.StringIO(excluded_rows_csv(manifest))))

    assert list(parsed[0]) == list(EXCLUDED_COLUMNS)
    last = parsed[-1]
    for column, value in formulas.items():
        assert last[column] == "'" + value, column
    # Ordinary values are untouched, including ones with commas, quotes and markup.
    assert parsed[0]["finding"] == SCRIPT
    assert parsed[2]["exclusion_detail"] == f"same bytes as {NASTY_NAME}"
    assert spreadsheet_safe("plain") == "plain"
    assert spreadsheet_safe(-3) == -3
    assert spreadsheet_safe("a=b") == "a=b"


def test_summary_text_for_the_terminal(manifest, validated):
    from components.steward_report import summary_text

    manifest_report, split, split_report = validated
    text = summary_text(build_summary(manifest, "multiclass", manifest_report, split, split_report, "v3"))

    assert text.startswith(
        "Data validation BLOCKED (task multiclass, dataset version v3): 21 rows, 18 used, 3 excluded"
    )
    assert f"Classes:    {COVID} 6 (33.3%)" in text
    assert (
        "Duplicates: 1 exact pair(s), 1 near-duplicate pair(s); leaks: 0 patient(s) and 1 near-duplicate pair(s)"
        in text
    )
    assert "BLOCKING    split/no_near_duplicates_across_splits: " in text
    assert "WARNING     manifest/no_near_duplicates: " in text
    assert text.endswith("Data Docs:  not built")


def test_report_files_are_written_into_one_folder(manifest, validated, tmp_path):
    manifest_report, split, split_report = validated
    summary = build_summary(manifest, "multiclass", manifest_report, split, split_report, dataset_version="v4")
    folder = tmp_path / "reports" / "run-1"

    files = write_steward_report(summary, manifest, folder)

    assert sorted(path.name for path in folder.iterdir()) == sorted([SUMMARY_HTML, SUMMARY_JSON, EXCLUDED_ROWS_CSV])
    assert (folder / SUMMARY_HTML).read_text(encoding="utf-8") == render_html(
        summary, gallery=build_gallery(summary, manifest)
    )
    assert json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8")) == summary.model_dump(mode="json")
    assert (folder / EXCLUDED_ROWS_CSV).read_text(encoding="utf-8") == excluded_rows_csv(manifest)
    assert files.by_name()[SUMMARY_JSON] == (folder / SUMMARY_JSON).read_text(encoding="utf-8")


# ---------------------------------------------------------------- thumbnails


@pytest.fixture
def drop_with_thumbnails(tmp_path):
    """A real drop: two sources, a near-duplicate re-encoded as JPEG, 8 lateral rows, a broken file, a path outside."""
    from PIL import Image

    from components.manifest import build_manifest
    from components.sources import parse_sources
    from tests.factories import noise_image, radiograph, write_bytes, write_class_folders

    root = tmp_path / "drop"
    write_class_folders(root / "a", labels=("COVID-19", "normal", "pneumonia"), patients_per_label=10, size=64)
    hospital = root / "b"
    lines = ["path,label,view,patient_id"]
    hospital.mkdir()
    for i in range(12):
        Image.fromarray(radiograph(i, (96, 80))).save(hospital / f"img{i}.png")
        lines.append(f"img{i}.png,{(COVID, NORMAL, PNEUMONIA)[i % 3]},PA,h{i}")
    Image.fromarray(radiograph(0, (96, 80))).save(hospital / "again.jpg", quality=90)  # img0 re-filed
    lines.append(f"again.jpg,{COVID},PA,h99")
    for i in range(8):
        Image.fromarray(noise_image(50 + i, (64, 64))).save(hospital / f"lateral{i}.png")
        lines.append(f"lateral{i}.png,{NORMAL},L,l{i}")
    write_bytes(hospital / "broken.png", "not a png")
    lines += ["broken.png,normal,PA,x1", "../a/COVID-19/COV0_0.png,normal,PA,x2"]
    write_bytes(hospital / "manifest.csv", "\n".join(lines) + "\n")

    sources = parse_sources(
        [
            {"kind": "folder", "root": str(root / "a"), "name": "a"},
            {"kind": "manifest", "root": str(hospital), "name": "b"},
        ]
    )
    manifest = build_manifest(sources, "multiclass")
    report = validate_manifest(manifest, "multiclass", tmp_path / "docs", ValidationConfig(), data_docs=False)
    return manifest, build_summary(manifest, "multiclass", report), hospital


def test_the_gallery_shows_pairs_excluded_images_and_classes_by_source(drop_with_thumbnails):
    manifest, summary, hospital = drop_with_thumbnails

    gallery = build_gallery(summary, manifest)

    pair_names = [(pair.a.shown, pair.b.shown) for pair in gallery.pairs]
    assert ("img0.png", "again.jpg") in pair_names
    assert all(pair.a.image.startswith("data:image/jpeg;base64,") for pair in gallery.pairs)
    assert gallery.excluded_totals[EXCLUDE_LATERAL] == 8
    assert len(gallery.excluded[EXCLUDE_LATERAL]) == 6  # a capped sample
    assert all(thumb.image for thumb in gallery.excluded[EXCLUDE_LATERAL])
    broken = next(t for thumbs in gallery.excluded.values() for t in thumbs if t.shown == "broken.png")
    assert broken.image is None  # a placeholder, with the exclusion detail
    outside = gallery.excluded["path outside the source root"][0]
    assert outside.image is None  # never opened
    assert set(gallery.samples) == {(label, source) for label in (COVID, NORMAL, PNEUMONIA) for source in "ab"}
    assert len(gallery.samples[(COVID, "a")]) == 8  # 10 images, 8 shown
    assert gallery.sample_totals[(COVID, "a")] == 10
    assert gallery.samples[(COVID, "a")][0].shown.startswith("COVID-19/")  # relative to the source root
    assert build_gallery(summary, manifest) == gallery  # a fixed seed: the same sample every time


def test_the_page_embeds_its_thumbnails_and_shows_paths_relative_to_the_source_root(drop_with_thumbnails):
    manifest, summary, hospital = drop_with_thumbnails
    gallery = build_gallery(summary, manifest)

    page = render_html(summary, gallery=gallery)

    with_image = [thumb for thumb in gallery.thumbnails() if thumb.image]
    assert page.count("<img ") == len(with_image)
    assert page.count('class="ph"') == len(gallery.thumbnails()) - len(with_image)
    assert not re.search(r"src=\"(?!data:image/jpeg;base64,)", page)  # nothing but embedded images
    assert f'<span title="{hospital}/img0.png">img0.png</span>' in page


def test_the_page_with_thumbnails_loads_in_a_browser(drop_with_thumbnails, tmp_path):
    from tests.browser import ChromiumMissingError, check_page

    manifest, summary, _ = drop_with_thumbnails
    write_steward_report(summary, manifest, tmp_path / "report")

    try:
        check = check_page(tmp_path / "report" / SUMMARY_HTML)
    except ChromiumMissingError as error:
        pytest.fail(str(error), pytrace=False)

    assert check.problems() == []
    assert len(check.images) == len([t for t in build_gallery(summary, manifest).thumbnails() if t.image])
    assert all(image.width > 0 for image in check.images)
