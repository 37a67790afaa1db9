"""Inputs as archives and spreadsheets really send them (issue 13): odd file names, text encodings,
names without an extension, open-ended ages and blank views. Every input is built in the test."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from components.candidates import ADULT, PEDIATRIC, SourceError, age_group_from_age
from components.labels import EXCLUDE_NAME_NOT_UTF8, EXCLUDE_NOT_IMAGE
from components.manifest import dataset_version
from components.steward_report import (
    build_gallery,
    build_summary,
    excluded_rows_csv,
    render_html,
    summary_text,
    write_steward_report,
)
from components.storage import StorageError, decode_text, describe_content, escaped_name, has_undecodable_bytes
from components.validation import ValidationConfig, validate_manifest
from tests.factories import (
    encode,
    manifest_row,
    manifest_table,
    noise_image,
    source_manifest,
    write_bytes,
    write_class_folders,
    write_ieee8023,
    write_noise_image,
)

# ---------------------------------------------------------------- file names that are not UTF-8

# Bytes an archive made elsewhere leaves in a name: Latin-1/cp1252 é, a byte cp1252 leaves undefined,
# 0xFF (never in UTF-8), and Shift-JIS for "テ" (a Japanese Windows archive).
BAD_NAMES = [
    (b"caf\xe9_1.png", "caf\\xe9_1.png"),
    (b"x\x81y_1.png", "x\\x81y_1.png"),
    (b"\xff_1.png", "\\xff_1.png"),
    (b"\x83e\x83X\x83g_1.png", "\\x83e\\x83X\\x83g_1.png"),
]


def _write_bytes_name(folder: Path, name: bytes, seed: int) -> None:
    target = os.path.join(os.fsencode(folder), name)
    with open(target, "wb") as file:
        file.write(encode(noise_image(seed, (64, 64))))


@pytest.mark.parametrize(("raw", "shown"), BAD_NAMES)
def test_a_file_name_that_is_not_utf8_is_an_excluded_row_and_the_rest_goes_on(tmp_path, raw, shown):
    root = tmp_path / "drop"
    write_class_folders(root, labels=("COVID-19", "normal"), patients_per_label=3, size=64)
    _write_bytes_name(root / "normal", raw, seed=99)

    manifest = source_manifest(root, "binary")

    assert len(manifest) == 7
    bad = manifest[manifest["exclusion_reason"] == EXCLUDE_NAME_NOT_UTF8]
    assert len(bad) == 1
    assert bad["uri"].iloc[0] == f"{root}/normal/{shown}"
    assert f"normal/{shown}" in bad["exclusion_detail"].iloc[0]
    assert "not UTF-8" in bad["exclusion_detail"].iloc[0]
    assert bad["patient_id"].iloc[0].encode("utf-8")  # stored escaped, not as a lone surrogate
    assert (manifest["exclusion_reason"] == "").sum() == 6  # the rest of the drop goes on


def test_a_name_that_is_not_utf8_passes_every_writer(tmp_path):
    """Parquet, the dataset version, GX, the steward files, the CSV and MLflow take the escaped name."""
    import mlflow

    root = tmp_path / "drop"
    write_class_folders(root, labels=("COVID-19", "normal"), patients_per_label=3, size=64)
    os.mkdir(os.path.join(os.fsencode(root), b"norm\xe9l"))  # a class folder with such a name too
    _write_bytes_name(root / "normal", b"caf\xe9_1.png", seed=98)
    _write_bytes_name(Path(os.fsdecode(os.path.join(os.fsencode(root), b"norm\xe9l"))), b"a_1.png", seed=97)

    manifest = source_manifest(root, "binary")
    manifest.to_parquet(tmp_path / "manifest.parquet")
    version = dataset_version(manifest)
    report = validate_manifest(
        manifest, "binary", tmp_path / "docs", ValidationConfig(min_images_per_class=1), data_docs=False
    )
    summary = build_summary(manifest, "binary", report, dataset_version=version)
    files = write_steward_report(summary, manifest, tmp_path / "report")
    with mlflow.start_run() as run:  # the session's MLflow store (tests/conftest.py)
        mlflow.log_text(files.csv, "excluded_rows.csv")
        mlflow.log_dict(summary.model_dump(mode="json"), "summary.json")
    logged = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/excluded_rows.csv")

    assert pd.read_parquet(tmp_path / "manifest.parquet")["exclusion_reason"].tolist().count(EXCLUDE_NAME_NOT_UTF8) == 2
    assert len(version) == 16
    assert summary.exclusions_by_reason[EXCLUDE_NAME_NOT_UTF8] == 2
    assert "caf\\xe9_1.png" in (tmp_path / "report" / "excluded_rows.csv").read_text(encoding="utf-8")
    assert "norm\\xe9l/a_1.png" in excluded_rows_csv(manifest)
    assert "caf\\xe9_1.png" in files.html
    assert "caf\\xe9_1.png" in logged


def test_escaped_name_of_valid_and_undecodable_names():
    assert escaped_name("plain/é.png") == "plain/é.png"
    assert escaped_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert has_undecodable_bytes(os.fsdecode(b"caf\xe9.png"))
    assert not has_undecodable_bytes("café.png")


# ---------------------------------------------------------------- text encodings

MANIFEST_TEXT = "path,label,patient_id\nimages/a.png,normal,José\nimages/b.png,COVID-19,Zoë Ångström\n"
# (encoding name as saved, how to encode): spreadsheet "Unicode" exports, Excel's "CSV UTF-8", Windows code pages.
ENCODINGS = {
    "utf-16 (BOM, native order)": lambda text: text.encode("utf-16"),
    "utf-16-le with BOM": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    "utf-16-be with BOM": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    "utf-16-le without BOM": lambda text: text.encode("utf-16-le"),
    "utf-16-be without BOM": lambda text: text.encode("utf-16-be"),
    "utf-32 with BOM": lambda text: text.encode("utf-32"),
    "utf-8 with BOM": lambda text: text.encode("utf-8-sig"),
    "utf-8": lambda text: text.encode("utf-8"),
    "cp1252": lambda text: text.encode("cp1252"),
    "latin-1": lambda text: text.encode("latin-1"),
}


def _images(root: Path) -> None:
    write_noise_image(root / "images" / "a.png", seed=1, size=(64, 64))
    write_noise_image(root / "images" / "b.png", seed=2, size=(64, 64))


@pytest.mark.parametrize("saved_as", list(ENCODINGS))
def test_a_manifest_csv_in_any_common_encoding_is_read(tmp_path, saved_as):
    _images(tmp_path)
    write_bytes(tmp_path / "manifest.csv", ENCODINGS[saved_as](MANIFEST_TEXT))

    manifest = source_manifest(tmp_path, "multiclass", kind="manifest", name="m")

    assert manifest["patient_id"].tolist() == ["m:José", "m:Zoë Ångström"]
    assert manifest["label"].tolist() == ["normal", "COVID-19"]


def test_a_spreadsheet_unicode_text_export_is_tab_separated_utf16(tmp_path):
    _images(tmp_path)
    write_bytes(tmp_path / "manifest.csv", MANIFEST_TEXT.replace(",", "\t").encode("utf-16"))

    manifest = source_manifest(tmp_path, "multiclass", kind="manifest", name="m")

    assert manifest["patient_id"].tolist() == ["m:José", "m:Zoë Ångström"]


def test_a_semicolon_csv_from_a_european_spreadsheet_is_read(tmp_path):
    _images(tmp_path)
    write_bytes(tmp_path / "manifest.csv", MANIFEST_TEXT.replace(",", ";").encode("cp1252"))

    manifest = source_manifest(tmp_path, "multiclass", kind="manifest", name="m")

    assert manifest["label"].tolist() == ["normal", "COVID-19"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "cp1252"])
def test_every_adapter_reading_metadata_reads_its_encoding(tmp_path, encoding):
    ieee = write_ieee8023(
        tmp_path / "ieee",
        [
            {"patientid": "Jörg", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "filename": "a.png"},
        ],
        images={"a.png": encode(noise_image(3, (64, 64)))},
        encoding=encoding,
    )
    covidx = tmp_path / "covidx"
    write_noise_image(covidx / "train" / "ä.png", seed=4, size=(64, 64))
    write_bytes(covidx / "train.txt", "Jörg ä.png positive sirm\n".encode(encoding))

    ieee_rows = source_manifest(ieee, "multiclass", kind="ieee8023")
    covidx_rows = source_manifest(covidx, "multiclass", kind="covidx")

    assert ieee_rows["patient_id"].tolist() == ["ieee8023:Jörg"]
    assert covidx_rows["uri"].tolist() == [str(covidx / "train" / "ä.png")]
    assert covidx_rows["label"].tolist() == ["COVID-19"]


def test_a_metadata_file_that_is_not_text_names_the_file_and_the_encodings_tried(tmp_path):
    write_bytes(tmp_path / "manifest.csv", encode(noise_image(5, (16, 16))))  # a PNG saved as .csv

    with pytest.raises(SourceError) as caught:
        source_manifest(tmp_path, "multiclass", kind="manifest", name="m")

    message = str(caught.value)
    assert str(tmp_path / "manifest.csv") in message
    assert "encodings tried: UTF-8, CP1252, LATIN-1" in message


def test_a_byte_order_mark_that_lies_names_its_encoding(tmp_path):
    with pytest.raises(StorageError) as caught:
        decode_text(codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", "x.csv")  # a lone UTF-16 surrogate

    assert "x.csv is not UTF-16-LE text (a UTF-16-LE byte-order mark" in str(caught.value)


# ---------------------------------------------------------------- names without an extension


def test_a_file_listed_without_its_extension_says_what_was_expected_and_found(tmp_path):
    write_noise_image(tmp_path / "images" / "img001.png", seed=1, size=(64, 64))
    write_noise_image(tmp_path / "images" / "img002", seed=2, size=(64, 64), image_format="PNG")
    write_bytes(tmp_path / "images" / "img004", b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    write_bytes(
        tmp_path / "manifest.csv",
        "path,label\nimages/img001,normal\nimages/img002,normal\nimages/img003,normal\nimages/img004,normal\n",
    )

    manifest = source_manifest(tmp_path, "multiclass", kind="manifest", name="m")

    assert manifest["exclusion_reason"].tolist() == [EXCLUDE_NOT_IMAGE] * 4
    expected = "expected a PNG or JPEG file (.png, .jpg, .jpeg)"
    assert manifest["exclusion_detail"].tolist() == [
        f"listed as 'images/img001' without an extension; {expected}; no file of that name, "
        "but images/img001.png exists: list it with its extension",
        f"listed as 'images/img002' without an extension; {expected}; found a PNG image at images/img002",
        f"listed as 'images/img003' without an extension; {expected}; no file of that name",
        f"listed as 'images/img004' without an extension; {expected}; found a DICOM file at images/img004",
    ]


def test_a_file_of_another_format_in_a_class_folder_says_what_it_holds(tmp_path):
    write_class_folders(tmp_path, labels=("COVID-19",), patients_per_label=1)
    write_bytes(tmp_path / "COVID-19" / "scan.tif", b"II*\x00" + b"\x00" * 32)
    write_bytes(tmp_path / "COVID-19" / "notes.txt", "seen by Dr. Who\n")

    manifest = source_manifest(tmp_path, "multiclass").set_index("uri")

    expected = "expected a PNG or JPEG file (.png, .jpg, .jpeg)"
    assert manifest.loc[str(tmp_path / "COVID-19" / "scan.tif"), "exclusion_detail"] == (
        f"listed as 'COVID-19/scan.tif' with the extension '.tif'; {expected}; found a TIFF image at COVID-19/scan.tif"
    )
    assert manifest.loc[str(tmp_path / "COVID-19" / "notes.txt"), "exclusion_detail"].endswith(
        "found text at COVID-19/notes.txt"
    )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff\xe0", "a JPEG image"),
        (b"\x00" * 128 + b"DICM", "a DICOM file"),
        (b"GIF89a", "a GIF image"),
        (b"PK\x03\x04", "a ZIP archive (or a .xlsx/.docx)"),
        (b"", "an empty file"),
        (b"patientid,finding\n", "text"),
        (b"\x00\x01\x02\x03\xfe", "bytes starting 00 01 02 03 fe"),
    ],
)
def test_describe_content(head, expected):
    assert describe_content(head) == expected


# ---------------------------------------------------------------- open-ended ages


@pytest.mark.parametrize(
    ("age", "group"),
    [
        ("50", ADULT),
        ("17", PEDIATRIC),
        ("50+", ADULT),
        ("18+", ADULT),
        ("17+", ""),  # 17 is pediatric, 40 adult: no single group
        (">60", ADULT),
        (">= 18", ADULT),
        ("≥65", ADULT),
        ("over 65", ADULT),
        ("90 or older", ADULT),
        ("90 and over", ADULT),
        ("<18", PEDIATRIC),
        ("< 5", PEDIATRIC),
        ("<=17", PEDIATRIC),
        ("<= 18", ""),
        ("under 18", PEDIATRIC),
        ("40-49", ADULT),
        ("10 to 15", PEDIATRIC),
        ("10-20", ""),
        ("045Y", ADULT),
        ("006M", PEDIATRIC),
        ("010W", PEDIATRIC),
        ("003D", PEDIATRIC),
        ("50 years", ADULT),
        ("6 months", PEDIATRIC),
        ("", ""),
        ("unknown", ""),
        ("-3", ""),
        (42.0, ADULT),
    ],
)
def test_ages_as_metadata_writes_them(age, group):
    assert age_group_from_age(age) == group


def test_every_adapter_reading_ages_parses_open_ended_ones(tmp_path):
    ages = ["50+", "<18", "90 or older", ">60"]
    images = {f"{i}.png": encode(noise_image(10 + i, (64, 64))) for i in range(len(ages))}
    rows = [
        {"patientid": f"p{i}", "finding": "normal", "view": "PA", "modality": "X-ray", "age": age}
        | {"filename": f"{i}.png", "imagename": f"{i}.png"}
        for i, age in enumerate(ages)
    ]
    ieee = write_ieee8023(tmp_path / "ieee", rows, images=images)
    actualmed = write_ieee8023(tmp_path / "actualmed", rows, images=images)
    manifest_root = tmp_path / "manifest"
    for name, data in images.items():
        write_bytes(manifest_root / name, data)
    write_bytes(
        manifest_root / "manifest.csv",
        "path,label,age\n" + "".join(f"{i}.png,normal,{a}\n" for i, a in enumerate(ages)),
    )
    expected = [ADULT, PEDIATRIC, ADULT, ADULT]

    assert source_manifest(ieee, "multiclass", kind="ieee8023")["age_group"].tolist() == expected
    assert source_manifest(actualmed, "multiclass", kind="actualmed")["age_group"].tolist() == expected
    assert source_manifest(manifest_root, "multiclass", kind="manifest")["age_group"].tolist() == expected


# ---------------------------------------------------------------- blank views in the steward report


def _report(results=()):
    from components.validation import ValidationReport

    return ValidationReport(success=True, results=list(results), data_docs_index="", summary="", stage="manifest")


def test_blank_views_are_counted_per_source_and_shown():
    rows = [manifest_row(f"/a/{i}.png", "normal", "public", view="" if i < 31 else "PA") for i in range(42)]
    rows += [manifest_row(f"/b/{i}.png", "COVID-19", "hospital", view="unknown" if i < 2 else "AP") for i in range(5)]
    rows += [manifest_row("/b/lat.png", "", "hospital", view="", exclusion_reason="lateral view")]  # excluded
    manifest = manifest_table(rows)

    summary = build_summary(manifest, "multiclass", _report())

    assert summary.unknown_views == {"hospital": 2, "public": 31}
    views = {row.label: row.counts for row in summary.views_by_source.rows}
    assert views["unknown"] == {"hospital": 2, "public": 31}
    assert views["PA"] == {"hospital": 0, "public": 11}
    page = render_html(summary)
    assert "<h2>Views</h2>" in page
    assert "hospital: 2 of 5, public: 31 of 42" in page
    assert "Views:      unknown for 33 of 47 used images (hospital 2, public 31)" in summary_text(summary)


def test_summary_json_keeps_the_view_counts_and_source_roots():
    manifest = manifest_table([manifest_row("/data/drop/COVID-19/1.png", "COVID-19", "s", view="")])

    dumped = json.loads(build_summary(manifest, "multiclass", _report()).model_dump_json())

    assert dumped["unknown_views"] == {"s": 1}
    assert dumped["source_roots"] == {"s": "/data/drop/COVID-19/"}


def test_the_gallery_of_an_empty_report_is_empty():
    manifest = manifest_table([])

    gallery = build_gallery(build_summary(manifest, "multiclass", _report()), manifest)

    assert gallery.thumbnails() == []


def _public_set_with_blank_views() -> pd.DataFrame:
    """42 used images of which 31 have a blank view, as in one public set."""
    labels = ("COVID-19", "non-COVID")
    return manifest_table(
        manifest_row(f"/a/{i}.png", labels[i % 2], "public", view="" if i < 31 else "PA") for i in range(42)
    )


def test_the_views_known_check_warns_on_many_blank_views(tmp_path):
    report = validate_manifest(_public_set_with_blank_views(), "binary", tmp_path / "docs", data_docs=False)

    result = next(r for r in report.results if r.name == "views_known")
    assert not result.success
    assert result.severity == "warning"
    assert report.success  # a warning: the drop goes on
    assert "31 of 42 rows with a blank or unknown view" in result.details


def test_the_views_known_check_is_configurable(tmp_path):
    config = ValidationConfig(max_unknown_view_fraction=0.8)

    report = validate_manifest(_public_set_with_blank_views(), "binary", tmp_path / "docs", config, data_docs=False)

    assert next(r for r in report.results if r.name == "views_known").success


def test_the_retraining_listing_of_a_name_that_is_not_utf8_is_json(tmp_path):
    from components.retraining import list_source

    _write_bytes_name(tmp_path, b"caf\xe9_1.png", seed=1)

    entries = list_source(str(tmp_path))

    assert [json.loads(entry.model_dump_json())["path"] for entry in entries] == ["caf\\xe9_1.png"]


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cxr_validate_reports_a_drop_with_an_odd_name_and_a_utf16_manifest(local_stack, tmp_path, capsys):
    """The data pipeline writes its report (and MLflow its artifacts) for such a drop; the row is excluded."""
    from mlflow import MlflowClient

    from tests.test_training_pipeline import run_cxr, tiny_config

    odd = tmp_path / "odd"
    write_class_folders(odd, labels=("COVID-19", "normal", "pneumonia"), patients_per_label=2, size=96)
    _write_bytes_name(odd / "normal", b"caf\xe9_1.png", seed=77)
    sheet = tmp_path / "sheet"
    for i in range(3):
        write_noise_image(sheet / "images" / f"s{i}.png", seed=200 + i, size=(96, 96))
    text = (
        "path,label,age,view\nimages/s0.png,COVID-19,50+,PA\nimages/s1.png,normal,<18,\nimages/s2.png,pneumonia,,AP\n"
    )
    write_bytes(sheet / "manifest.csv", text.encode("utf-16"))
    config = tiny_config(tmp_path / "synthetic", name="odd-inputs")
    config["data"]["sources"] += [
        {"kind": "folder", "root": str(odd), "name": "odd"},
        {"kind": "manifest", "root": str(sheet), "name": "sheet"},
    ]

    code = run_cxr(local_stack, "validate", config, tmp_path)

    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    assert f"{EXCLUDE_NAME_NOT_UTF8} 1" in out
    folder = Path(out.split("Steward report:")[1].split()[0]).parent
    excluded = (folder / "excluded_rows.csv").read_text(encoding="utf-8")
    assert "normal/caf\\xe9_1.png" in excluded
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["exclusions_by_reason"][EXCLUDE_NAME_NOT_UTF8] == 1
    assert summary["unknown_views"]["sheet"] == 1
    assert summary["class_by_age_group"]["totals"]["pediatric"] == 1  # "<18" parsed
    client = MlflowClient(local_stack.tracking_uri)
    experiment = client.get_experiment_by_name("cxr_data_validation")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    logged = Path(client.download_artifacts(run.info.run_id, "data_validation/excluded_rows.csv", str(tmp_path)))
    assert "normal/caf\\xe9_1.png" in logged.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("written", "recorded"),
    [
        ("M", "M"),
        ("f", "F"),
        (" Female ", "F"),
        ("male", "M"),
        ("O", ""),
        ("unknown", ""),
        ("", ""),
        (float("nan"), ""),
    ],
)
def test_sex_is_recorded_as_m_f_or_unknown(written, recorded):
    from components.candidates import sex_code

    assert sex_code(written) == recorded


def test_the_steward_summary_crosses_class_and_sex(tmp_path):
    from components.steward_report import build_summary, render_html
    from components.validation import ValidationConfig, validate_manifest
    from tests.factories import manifest_row, manifest_table

    rows = [
        manifest_row(f"/d/{i}.png", label, sha256=f"{i:064x}", phash=f"{i * 0x1111:016x}", sex=sex)
        for i, (label, sex) in enumerate([("COVID-19", "M"), ("COVID-19", "M"), ("normal", "F"), ("normal", "")])
    ]
    manifest = manifest_table(rows)
    report = validate_manifest(manifest, "binary", tmp_path / "docs", ValidationConfig(), data_docs=False)
    summary = build_summary(manifest, "binary", report)
    by_class = {row.label: row.counts for row in summary.class_by_sex.rows}
    assert by_class["COVID-19"] == {"F": 0, "M": 2, "unknown": 0}
    assert by_class["normal"] == {"F": 1, "M": 0, "unknown": 1}
    assert "Class &times; sex" in render_html(summary)
