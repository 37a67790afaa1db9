"""Manifest validation through Great Expectations, on small manifests of real PNG files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from components.labels import COVID, NON_COVID
from components.manifest import MANIFEST_COLUMNS
from components.validation import (
    CHECK_NAMES,
    ManifestValidationError,
    raise_if_blocking,
    validate_manifest,
)

PER_CLASS = 5  # min_images_per_class in these tests
IMAGES_PER_CLASS = PER_CLASS + 3  # room to corrupt 3 rows without starving a class


def _image_row(folder: Path, name: str, label: str, size: tuple[int, int] = (64, 64)) -> dict:
    path = folder / f"{name}.png"
    Image.new("L", size, len(name) * 7 % 256).save(path)
    # Pixel values repeat across files, so hash the name too to keep digests unique.
    digest = hashlib.sha256(path.read_bytes() + name.encode()).hexdigest()
    return {
        "path": str(path), "sha256": digest, "width": size[0], "height": size[1], "mode": "L",
        "label": label, "finding": label, "patient_id": f"src-{name}", "source": "src",
        "view": "PA", "exclusion_reason": "",
    }


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """A clean binary-task manifest: IMAGES_PER_CLASS used images per class, all valid."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = [
        _image_row(folder, f"{label[:3]}{i}", label)
        for label in (NON_COVID, COVID)
        for i in range(IMAGES_PER_CLASS)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _validate(manifest: pd.DataFrame, tmp_path: Path, **kwargs):
    return validate_manifest(manifest, "binary", tmp_path / "docs", min_images_per_class=PER_CLASS, **kwargs)


def _result(report, name: str) -> dict:
    return next(r for r in report.results if r["name"] == name)


def test_clean_manifest_passes_and_builds_data_docs(manifest, tmp_path):
    report = _validate(manifest, tmp_path, suite_name="cxr_test_suite")

    assert report.success, report.summary
    assert [r["name"] for r in report.results] == list(CHECK_NAMES)
    assert all(r["success"] and r["blocking"] for r in report.results)
    index = Path(report.data_docs_index)
    assert index.is_absolute() and index.is_file()
    assert index.parent == (tmp_path / "docs").resolve()
    html = index.read_text()
    assert "cxr_test_suite" in html and "cxr_test_suite_class_counts" in html
    assert "PASSED" in report.summary
    json.dumps(report.to_dict())  # must be JSON-serialisable
    raise_if_blocking(report)  # no exception


def _bad_label(m: pd.DataFrame) -> None:
    m.loc[0:2, "label"] = "bogus"


def _duplicate_sha(m: pd.DataFrame) -> None:
    m.loc[1, "sha256"] = m.loc[0, "sha256"]


def _too_narrow(m: pd.DataFrame) -> None:
    m.loc[0, "width"] = 10


def _too_short(m: pd.DataFrame) -> None:
    m.loc[0, "height"] = 10


def _bad_mode(m: pd.DataFrame) -> None:
    m.loc[0, "mode"] = "CMYK"


def _missing_file(m: pd.DataFrame) -> None:
    Path(m.loc[0, "path"]).unlink()


def _empty_path(m: pd.DataFrame) -> None:
    m.loc[0, "path"] = ""


def _too_few_covid(m: pd.DataFrame) -> None:
    m.loc[m["label"] == COVID, "exclusion_reason"] = "test"
    m.loc[m.index[-1], "exclusion_reason"] = ""  # one COVID-19 image left


@pytest.mark.parametrize(
    ("corrupt", "check", "mention"),
    [
        (_bad_label, "label_in_task", "3 of 16 rows with a label outside"),
        (_duplicate_sha, "sha256_unique", "2 of 16 rows sharing a sha256"),
        (_too_narrow, "min_width", "narrower than 64 px; unexpected values [10]"),
        (_too_short, "min_height", "shorter than 64 px; unexpected values [10]"),
        (_bad_mode, "mode_allowed", "unexpected values ['CMYK']"),
        (_missing_file, "path_exists", "1 of 16 rows whose file does not exist"),
        (_empty_path, "path_not_missing", "1 of 16 rows without a path; e.g. row 0"),
        (_too_few_covid, "min_images_per_class", f"fewer than {PER_CLASS} images; e.g. {COVID}=1"),
    ],
)
def test_each_blocking_failure_fails_and_is_summarised(manifest, tmp_path, corrupt, check, mention):
    corrupt(manifest)
    report = _validate(manifest, tmp_path)

    assert not report.success
    failed = [r["name"] for r in report.results if not r["success"]]
    assert failed == [check]
    assert "BLOCKING FAILED: " in report.summary and f"[{check}]" in report.summary
    assert mention in report.summary
    assert mention in _result(report, check)["details"]
    json.dumps(report.to_dict())


def test_failure_names_offending_paths(manifest, tmp_path):
    _bad_label(manifest)
    report = _validate(manifest, tmp_path)

    observed = _result(report, "label_in_task")["observed"]
    assert observed["unexpected_count"] == 3
    assert observed["unexpected_values"] == ["bogus"]
    assert observed["examples"] == list(manifest.loc[0:2, "path"])


def test_raise_if_blocking_carries_summary_and_docs_path(manifest, tmp_path):
    _bad_mode(manifest)
    report = _validate(manifest, tmp_path)

    with pytest.raises(ManifestValidationError) as caught:
        raise_if_blocking(report)
    message = str(caught.value)
    assert "mode_allowed" in message and report.data_docs_index in message
    assert caught.value.report is report


def test_warning_only_checks_do_not_block(manifest, tmp_path):
    _bad_mode(manifest)
    _too_narrow(manifest)
    report = _validate(manifest, tmp_path, warning_only={"mode_allowed", "min_width"})

    assert report.success
    for name in ("mode_allowed", "min_width"):
        result = _result(report, name)
        assert not result["success"] and not result["blocking"]
    assert "WARNING (not blocking): " in report.summary and "CMYK" in report.summary
    assert "BLOCKING FAILED" not in report.summary
    raise_if_blocking(report)


def test_excluded_rows_are_not_checked(manifest, tmp_path):
    bad = dict(manifest.iloc[0])
    bad.update(path=str(tmp_path / "gone.png"), width=1, height=1, mode="CMYK", label="",
               exclusion_reason="unreadable image")  # also duplicates row 0's sha256
    manifest = pd.concat([manifest, pd.DataFrame([bad])], ignore_index=True)

    report = _validate(manifest, tmp_path)

    assert report.success, report.summary
    assert "16 used rows (1 excluded)" in report.summary
    assert _result(report, "label_in_task")["observed"]["element_count"] == 16


def test_rejects_unknown_check_task_and_columns(manifest, tmp_path):
    with pytest.raises(ValueError, match="min_width"):
        _validate(manifest, tmp_path, warning_only={"no_such_check"})
    with pytest.raises(ValueError, match="unknown task"):
        validate_manifest(manifest, "tri-class", tmp_path / "docs")
    with pytest.raises(ValueError, match="sha256"):
        _validate(manifest.drop(columns=["sha256"]), tmp_path)


def test_check_that_cannot_run_fails_with_its_error(manifest, tmp_path):
    manifest["width"] = "wide"  # GX cannot compare text with 64
    report = _validate(manifest, tmp_path)

    assert not report.success
    assert "[min_width]: could not run: " in report.summary


def test_validate_step_fails_the_run_with_a_readable_summary(manifest, tmp_path):
    """The ZenML step (called through .entrypoint()) logs the report to MLflow and then stops the run."""
    import mlflow

    from cxr.stack import ensure_mlflow_experiment
    from steps.validate import validate_data

    # An explicit artifact location: MLflow's default would be ./mlruns of the current folder.
    experiment_id = ensure_mlflow_experiment(mlflow.get_tracking_uri(), tmp_path / "mlflow", "validate-step-test")

    checks = {"min_width": 64, "min_height": 64, "allowed_modes": ["L"], "min_images_per_class": PER_CLASS}
    bad = manifest.copy()
    bad.loc[0, "label"] = "bogus"
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with pytest.raises(ManifestValidationError) as error:
            validate_data.entrypoint(bad, task="binary", docs_dir=str(tmp_path / "docs"), checks=checks)
    assert "label" in str(error.value) and "bogus" in str(error.value)
    assert "index.html" in str(error.value)
    logged = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id, "data_validation")}
    assert {"data_validation/report.json", "data_validation/data_docs"} <= logged

    with mlflow.start_run(experiment_id=experiment_id):
        report, docs_index = validate_data.entrypoint(manifest, task="binary", docs_dir=str(tmp_path / "ok"), checks=checks)
    assert report["success"] and Path(docs_index).is_file()
