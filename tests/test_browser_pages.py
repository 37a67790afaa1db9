"""The self-contained HTML pages in a real browser (headless Debian Chromium, `make browser`).

The steward page and the evaluation card render offline, every image shows, no
request leaves the page, and no script runs (no dialog, no error). A handmade
page with an external image and a broken one shows that the check can fail.
"""

from __future__ import annotations

import base64

import pytest

from components.evaluation_card import write_card
from components.steward_report import build_summary, write_steward_report
from components.validation import ValidationReport
from tests.browser import ChromiumMissingError, check_page, launch_chromium
from tests.cards import SCRIPT, tiny_card
from tests.factories import encode, manifest_row, manifest_table, noise_image


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; a clear failure (not a skip) when it is not installed."""
    try:
        with launch_chromium() as chromium:
            yield chromium
    except ChromiumMissingError as error:
        pytest.fail(str(error), pytrace=False)


def _check(name: str, success: bool, severity: str = "blocking", details: str = "") -> dict:
    return {
        "name": name,
        "severity": severity,
        "blocking": severity == "blocking",
        "success": success,
        "skipped": False,
        "details": details or f"[{name}]: {'passed' if success else 'failed'}",
    }


def test_steward_page_renders_offline(browser, tmp_path):
    rows = [
        manifest_row(f"/data/{label}/{i}.png", label, "ieee8023" if i % 2 else "Actualmed")
        for label in ("COVID-19", "non-COVID")
        for i in range(4)
    ]
    rows.append(manifest_row("/data/x/odd.png", "", "ieee8023", finding=SCRIPT, exclusion_reason="unknown finding"))
    report = ValidationReport(
        success=False,
        results=[_check("min_width", True), _check("class_balance", False, "warning", f"finding {SCRIPT}")],
        data_docs_index=str(tmp_path / "docs" / "index.html"),
        summary="",
        stage="manifest",
    )
    manifest = manifest_table(rows)
    write_steward_report(build_summary(manifest, "binary", report, dataset_version=SCRIPT), manifest, tmp_path)

    check = check_page(tmp_path / "summary.html", browser)

    assert check.problems() == []
    assert check.title.startswith("Data steward report")


def test_evaluation_card_renders_offline_and_every_image_shows(browser, tmp_path):
    card, predictions = tiny_card(tmp_path / "images")  # a source named <script>alert(1)</script>
    html_path, _ = write_card(card, predictions, tmp_path / "card")

    check = check_page(html_path, browser)

    assert check.requests_leaving == []
    assert check.broken_images == []
    assert check.dialogs == []  # the script in the metadata stays text
    assert check.console_errors == []
    assert check.page_errors == []
    # Per column: confusion matrix, ROC/PR curves, reliability diagram; then the example strip.
    assert len(check.images) == 3 * len(card.assessments) + len(card.examples)
    assert all(image.width > 0 for image in check.images)
    assert check.title == "Evaluation card: cxr-classifier version 3"


def test_batch_report_renders_offline_with_its_plots_samples_and_heat_maps(browser, tmp_path):
    import numpy as np
    import pandas as pd

    from components.batch_report import BatchPage, Thumbnail, batch_report_html
    from components.drift import DriftConfig, drift_figures, fit_drift_reference, input_drift, input_features
    from components.explain import explanation_png
    from components.imaging import encode_png

    rng = np.random.default_rng(0)
    grays = rng.integers(0, 256, (24, 32, 32), dtype=np.uint8)
    rows = pd.DataFrame({"width": [32] * 24, "height": [32] * 24, "mode": ["L"] * 24, "bit_depth": [8] * 24})
    reference = fit_drift_reference(rows[:12], grays[:12], None, None, None, ["COVID-19", "normal"])
    current = 255 - grays[12:]  # inverted: blocks on the pixel statistics
    report = input_drift(reference, rows[12:].reset_index(drop=True), current, None, None, DriftConfig())
    plots = drift_figures(
        reference, input_features(rows[12:].reset_index(drop=True), current, None, None, reference), report
    )
    excluded = pd.DataFrame(
        {"uri": [f"/drop/{SCRIPT}.png"], "exclusion_reason": ["image too small"], "exclusion_detail": ["8 x 8 px"]}
    )
    page = BatchPage(
        title="Batch predictions: cxr-classifier v3 on 0123abcd",
        identity=[("Model", "cxr-classifier version 3")],
        input_drift=report,
        output_drift=report.model_copy(update={"scope": "output"}),
        drift_plots=plots,
        predicted={"COVID-19": 1, "normal": 1},
        samples={"COVID-19": [Thumbnail(encode_png(grays[0]), f"{SCRIPT} 0.91")], "normal": []},
        explanations=[Thumbnail(explanation_png(grays[1], rng.random((32, 32))), "b.png: normal 0.80")],
        excluded=excluded,
        outputs=[("Predictions (CSV)", "/tmp/predictions.csv")],
    )
    html_path = tmp_path / "report.html"
    html_path.write_text(batch_report_html(page), encoding="utf-8")

    check = check_page(html_path, browser)

    assert check.problems() == []
    assert len(check.images) == 2 * len(plots) + 2  # input and output drift plots, one sample, one heat map
    assert check.title == "Batch predictions: cxr-classifier v3 on 0123abcd"


def test_the_check_catches_a_request_leaving_and_a_broken_image(browser, tmp_path):
    good = base64.b64encode(encode(noise_image(0, (8, 8)))).decode("ascii")
    page = tmp_path / "leaky.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>leaky</title></head><body>"
        f'<img alt="inline" src="data:image/png;base64,{good}">'
        '<img alt="remote" src="https://example.org/x-ray.png">'
        '<img alt="corrupt" src="data:image/png;base64,AAAA">'
        '<img alt="beside" src="beside.png">'
        "</body></html>",
        encoding="utf-8",
    )
    (tmp_path / "beside.png").write_bytes(encode(noise_image(1, (8, 8))))  # another file: leaves the page too

    check = check_page(page, browser)

    assert "https://example.org/x-ray.png" in check.requests_leaving
    assert (tmp_path / "beside.png").as_uri() in check.requests_leaving
    assert [image.alt for image in check.broken_images] == ["remote", "corrupt", "beside"]
    assert [image.alt for image in check.images if image.loaded] == ["inline"]
    assert not check.ok


def test_a_missing_chromium_names_make_browser(monkeypatch):
    monkeypatch.delenv("CXR_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", "")

    with pytest.raises(ChromiumMissingError, match="make browser"):
        check_page(__file__)
