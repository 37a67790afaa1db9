"""`cxr validate` end to end: a synthetic folder on disk plus an ieee8023-layout data drop
on a real S3 server (rclone), full of the bad inputs real downloads contain. The run must
finish, exclude each bad file with its own reason, and leave the steward's report."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.labels import (
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNKNOWN_FINDING,
)
from steps.names import VALIDATE_SPLIT_STEP
from tests.factories import bomb_png, encode, noise_image, write_ieee8023
from tests.test_training_pipeline import run_cxr, tiny_config

pytestmark = pytest.mark.slow

SCRIPT = "<script>alert(1)</script>"
SIZE = (96, 96)  # (width, height) of the drop's images, above the 64 px minimum


def write_bad_drop(root: Path) -> dict[str, str]:
    """ieee8023 layout with one row per bad input; returns {filename: expected exclusion ("" = used)}."""
    jpeg = encode(noise_image(1, SIZE), "JPEG")
    files = {
        "gray16.png": encode(noise_image(2, SIZE).astype(np.uint16) * 257),  # 16-bit grayscale PNG
        "rgba.png": encode(np.dstack([noise_image(3, SIZE)] * 3 + [np.full((96, 96), 200, np.uint8)])),
        "palette.png": encode(Image.fromarray(noise_image(4, SIZE)).convert("P")),
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "text.png": b"this is a text file, not a PNG\n",
        "bomb.png": bomb_png(),
        "lateral.png": encode(noise_image(5, SIZE)),
        "script.png": encode(noise_image(6, SIZE)),
    }
    rows = [  # filename, finding, view
        ("gray16.png", "COVID-19", "PA"),
        ("rgba.png", "Pneumonia/Viral/SARS", "AP"),
        ("palette.png", "No Finding", "PA"),
        ("empty.png", "COVID-19", "PA"),
        ("truncated.jpg", "COVID-19", "PA"),
        ("text.png", "COVID-19", "PA"),
        ("bomb.png", "COVID-19", "PA"),
        ("lateral.png", "COVID-19", "L"),
        ("script.png", SCRIPT, "PA"),
        ("../../etc/passwd.png", "COVID-19", "PA"),
        ("absent.png", "COVID-19", "PA"),
        ("gray16.png", "COVID-19", "PA"),  # listed twice
    ]
    metadata = [
        {"filename": name, "patientid": f"p{index}", "finding": finding, "view": view, "modality": "X-ray", "age": "40"}
        for index, (name, finding, view) in enumerate(rows)
    ]
    # A spreadsheet export: UTF-8 with a byte-order mark.
    write_ieee8023(root, metadata, files, encoding="utf-8-sig")
    return {
        "gray16.png": "",
        "rgba.png": "",
        "palette.png": "",
        "empty.png": EXCLUDE_EMPTY_FILE,
        "truncated.jpg": EXCLUDE_TRUNCATED,
        "text.png": EXCLUDE_NOT_DECODABLE,
        "bomb.png": EXCLUDE_TOO_LARGE,
        "lateral.png": EXCLUDE_LATERAL,
        "script.png": EXCLUDE_UNKNOWN_FINDING,
        "passwd.png": EXCLUDE_OUTSIDE_ROOT,
        "absent.png": EXCLUDE_MISSING_FILE,
    }


def test_cxr_validate_on_disk_and_s3_with_bad_inputs(local_stack, s3_env, tmp_path, capsys):
    import time

    expected = write_bad_drop(Path(s3_env["dir"]) / "drops" / "ieee")
    time.sleep(s3_env["settle_s"])
    config = tiny_config(tmp_path / "synthetic", name="steward-test")
    config["data"]["sources"].append({"kind": "ieee8023", "root": "s3://drops/ieee", "name": "drop"})
    config["data"]["workers"] = 2
    config["validation"]["near_duplicate_max_distance"] = 2
    # The drop is held out: evaluated only, never split (and its 3 images meet no per-split minimum).
    config["evaluation"] = {"external_sources": ["drop"]}
    code = run_cxr(local_stack, "validate", config, tmp_path, "--summary-json", str(tmp_path / "summary.json"))
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "PASSED WITH WARNINGS" in out
    folder = Path(out.split("Steward report:")[1].split()[0]).parent

    with (folder / "excluded_rows.csv").open(newline="", encoding="utf-8") as handle:
        excluded = list(csv.DictReader(handle))
    duplicates = [row for row in excluded if row["exclusion_reason"] == EXCLUDE_DUPLICATE_ROW]
    assert [row["uri"] for row in duplicates] == ["s3://drops/ieee/images/gray16.png"]
    reasons = {
        row["uri"].rsplit("/", 1)[-1]: row["exclusion_reason"]
        for row in excluded
        if row["source"] == "drop" and row not in duplicates
    }
    for name, reason in expected.items():
        if reason:
            assert reasons.get(name) == reason, (name, reasons)
        else:
            assert name not in reasons

    summary = json.loads((folder / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["total"] == 36 + 12
    assert summary["counts"]["used"] == 36 + 3
    assert summary["counts"]["splits"]["external"] == 3
    assert sum(summary["counts"]["splits"].values()) == 36 + 3
    assert summary["class_by_external_source"]["totals"] == {"drop": 3}
    assert "External:   drop: COVID-19 1, normal 1, pneumonia 1" in out
    html = (folder / "summary.html").read_text()
    assert SCRIPT not in html
    assert "&lt;script&gt;" in html
    assert Path(summary["data_docs"]["index"]).is_file()

    # The same report reached the MLflow run of the data validation pipeline.
    from mlflow import MlflowClient

    client = MlflowClient(local_stack.tracking_uri)
    experiment = client.get_experiment_by_name("cxr_data_validation")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "data_validation")}
    assert {
        "data_validation/summary.html",
        "data_validation/summary.json",
        "data_validation/excluded_rows.csv",
    } <= logged
    downloaded = Path(client.download_artifacts(run.info.run_id, "data_validation/summary.json", str(tmp_path)))
    assert json.loads(downloaded.read_text()) == summary


def test_cxr_validate_blocked_drop_still_writes_the_report(local_stack, tmp_path, capsys):
    config = tiny_config(tmp_path / "synthetic", name="blocked-test", validation={"min_images_per_class": 1000})
    code = run_cxr(local_stack, "validate", config, tmp_path)
    out = capsys.readouterr().out
    assert code == 1
    assert "BLOCKED" in out
    assert "min_images_per_class" in out
    folder = Path(out.split("Steward report:")[1].split()[0]).parent
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["success"] is False
    assert [check["name"] for check in summary["blocked_by"]] == ["min_images_per_class"]

    # The reports and the summary are typed artifacts: each loads back as its pydantic model.
    from zenml.client import Client

    from components.steward_report import StewardSummary
    from components.validation import ValidationReport
    from cxr.runner import latest_run_id, steward_outputs
    from pipelines.data import PIPELINE_NAME
    from steps.names import SPLIT_VALIDATION_REPORT, VALIDATE_STEP, VALIDATION_REPORT

    run = Client().get_pipeline_run(latest_run_id(PIPELINE_NAME))
    manifest_report = run.steps[VALIDATE_STEP].outputs[VALIDATION_REPORT][0].load()
    split_report = run.steps[VALIDATE_SPLIT_STEP].outputs[SPLIT_VALIDATION_REPORT][0].load()
    assert isinstance(manifest_report, ValidationReport)
    assert manifest_report.success is False
    assert isinstance(split_report, ValidationReport)
    assert split_report.stage == "split"
    loaded = steward_outputs(run.id).summary
    assert isinstance(loaded, StewardSummary)
    assert loaded.model_dump(mode="json") == summary


def test_missing_metadata_column_is_named_without_a_traceback(local_stack, tmp_path, capsys):
    # An evaluation drop without labels (no finding column): evaluating needs them (all-"todo"
    # findings are test_splitting's unlabelled-source case).
    drop = tmp_path / "drop"
    (drop / "images").mkdir(parents=True)
    (drop / "metadata.csv").write_text("filename,patientid,view,modality\na.png,1,PA,X-ray\n")
    config = tiny_config(tmp_path / "synthetic", name="bad-metadata")
    config["data"]["sources"] = [{"kind": "ieee8023", "root": str(drop), "name": "drop"}]
    del config["data"]["synthetic"]
    del config["backbones"]  # the data-only config `cxr evaluate` takes: validating it needs no backbone
    code = run_cxr(local_stack, "validate", config, tmp_path, "--purpose", "evaluation")
    message = capsys.readouterr().err
    assert code == 1
    assert str(drop / "metadata.csv") in message
    assert "missing required column(s) ['finding']" in message
    assert "Traceback" not in message
