"""Label mapping, the folder and ieee8023 adapters through build_manifest, and the real ieee8023 snapshot.

Image decoding itself (components.image_info) is tested elsewhere; here a
file problem is only checked to be *some* file reason (FILE_REASONS).
The other layouts are in tests/test_sources.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components import image_info
from components import manifest as manifest_module
from components.labels import (
    COVID,
    EXCLUDE_DICOM_NOT_IMAGE,
    EXCLUDE_DUPLICATE,
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_MULTI_FRAME,
    EXCLUDE_NAME_NOT_UTF8,
    EXCLUDE_NO_PIXEL_DATA,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_NOT_DICOM,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_NORMAL,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_UNLABELLED,
    EXCLUDE_UNREADABLE,
    EXCLUDE_UNSUPPORTED_MODE,
    NON_COVID,
    NORMAL,
    PNEUMONIA,
    TASK_LABELS,
    finding_to_label,
    label_map_for_task,
)
from components.manifest import (
    EXCLUSION_PRECEDENCE,
    MANIFEST_COLUMNS,
    build_manifest,
    exclusion_summary,
    first_reason,
    included,
    mark_duplicates,
)
from components.sources import FolderOptions, Ieee8023Options, parse_sources
from tests.factories import (
    encode,
    flat_image,
    noise_image,
    source_manifest,
    write_ieee8023,
    write_image,
    write_noise_image,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REAL_IEEE8023 = SHARED / "covid-chestxray-dataset"
REAL_ACTUALMED = SHARED / "actualmed-covid-chestxray-dataset"
needs_real_data = pytest.mark.skipif(not REAL_IEEE8023.is_dir(), reason=f"{REAL_IEEE8023} not present")

# A broken file gets one of these (which one is components.image_info's business).
FILE_REASONS = {EXCLUDE_EMPTY_FILE, EXCLUDE_NOT_DECODABLE, EXCLUDE_TRUNCATED, EXCLUDE_TOO_LARGE, EXCLUDE_UNREADABLE}

# Every finding of the June 2020 ieee8023 snapshot, with its expected labels.
REAL_FINDINGS = {
    # finding: (multiclass, binary); "" = excluded
    "COVID-19": (COVID, COVID),
    "COVID-19, ARDS": (COVID, COVID),
    "No Finding": (NORMAL, NON_COVID),
    "ARDS": ("", NON_COVID),
    "todo": ("", ""),
    "SARS": (PNEUMONIA, NON_COVID),
    "Pneumocystis": (PNEUMONIA, NON_COVID),
    "Pneumonia": (PNEUMONIA, NON_COVID),
    "Streptococcus": (PNEUMONIA, NON_COVID),
    "Klebsiella": (PNEUMONIA, NON_COVID),
    "Mycoplasma Bacterial Pneumonia": (PNEUMONIA, NON_COVID),
    "Legionella": (PNEUMONIA, NON_COVID),
    "Lipoid": (PNEUMONIA, NON_COVID),
    "Varicella": (PNEUMONIA, NON_COVID),
    "E.Coli": (PNEUMONIA, NON_COVID),
    "Bacterial": (PNEUMONIA, NON_COVID),
    "Influenza": (PNEUMONIA, NON_COVID),
}


# ---------------------------------------------------------------- helpers


def reasons(frame: pd.DataFrame) -> dict[str, str]:
    """file name -> exclusion reason (file reasons shown as "file")."""
    return {
        Path(uri).name: ("file" if reason in FILE_REASONS else reason)
        for uri, reason in zip(frame["uri"], frame["exclusion_reason"], strict=False)
    }


def assert_manifest_contract(frame: pd.DataFrame, task: str) -> None:
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert all(os.path.isabs(uri) for uri in frame["uri"])
    excluded = frame["exclusion_reason"] != ""
    # Exactly one of label / exclusion_reason is set.
    assert (frame.loc[excluded, "label"] == "").all()
    assert frame.loc[~excluded, "label"].isin(TASK_LABELS[task]).all()
    assert (frame.loc[~excluded, "sha256"].str.len() == 64).all()
    assert (frame.loc[~excluded, "width"] > 0).all()
    assert frame["exclusion_reason"].isin(("", *EXCLUSION_PRECEDENCE)).all()
    assert all(pid.startswith(f"{source}:") for pid, source in zip(frame["patient_id"], frame["source"], strict=False))


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("finding", sorted(REAL_FINDINGS))
@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_real_findings_map_to_expected_labels(finding: str, task: str) -> None:
    expected = REAL_FINDINGS[finding][0 if task == "multiclass" else 1]
    label, reason = finding_to_label(finding, task)
    assert label == expected
    assert bool(label) != bool(reason)  # exactly one is set


@pytest.mark.parametrize(
    ("finding", "task", "expected"),
    [
        ("todo", "binary", ("", EXCLUDE_UNLABELLED)),
        ("", "multiclass", ("", EXCLUDE_UNLABELLED)),
        ("  Inconclusive ", "binary", ("", EXCLUDE_UNLABELLED)),
        ("ARDS", "multiclass", ("", EXCLUDE_OUT_OF_TASK)),
        ("Lung cancer", "multiclass", ("", EXCLUDE_UNKNOWN_FINDING)),
        ("Lung cancer", "binary", ("", EXCLUDE_UNKNOWN_FINDING)),
        # Hierarchical findings of later ieee8023 versions: most specific known part.
        ("Pneumonia/Viral/COVID-19", "multiclass", (COVID, "")),
        ("Pneumonia/Bacterial/Streptococcus", "multiclass", (PNEUMONIA, "")),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "binary", (NON_COVID, "")),
        ("Pneumonia/Viral/SARS-CoV-2", "binary", (COVID, "")),
        ("Pneumonia/Aspiration", "multiclass", (PNEUMONIA, "")),
        ("Pneumonia/Fungal/Aspergillosis", "multiclass", (PNEUMONIA, "")),
        ("Tuberculosis", "multiclass", ("", EXCLUDE_OUT_OF_TASK)),
        ("Tuberculosis", "binary", (NON_COVID, "")),
        # Combined findings: COVID-19 plus anything is COVID-19; others must be mapped whole.
        ("Pneumonia/Viral/COVID-19, ARDS", "multiclass", (COVID, "")),
        ("Pneumonia, ARDS", "multiclass", ("", EXCLUDE_UNKNOWN_FINDING)),
        # Folder names of other public datasets; case and spacing do not matter.
        ("NORMAL", "multiclass", (NORMAL, "")),
        ("PNEUMONIA", "binary", (NON_COVID, "")),
        ("COVID", "multiclass", (COVID, "")),
        ("Viral  Pneumonia", "multiclass", (PNEUMONIA, "")),
        ("No finding", "multiclass", (NORMAL, "")),  # Actualmed's spelling
        # COVID-19 Radiography Database: lung opacity is a non-COVID diagnosis outside the 3 classes.
        ("Lung_Opacity", "multiclass", ("", EXCLUDE_OUT_OF_TASK)),
        ("Lung_Opacity", "binary", (NON_COVID, "")),
        # Kaggle pediatric pneumonia findings (built by the adapter).
        ("pneumonia/bacterial", "multiclass", (PNEUMONIA, "")),
        ("pneumonia/viral", "binary", (NON_COVID, "")),
        # COVIDx's positive/negative only mean COVID-19 in COVIDx (its adapter adds them).
        ("positive", "binary", ("", EXCLUDE_UNKNOWN_FINDING)),
    ],
)
def test_finding_to_label_rules(finding: str, task: str, expected: tuple[str, str]) -> None:
    assert finding_to_label(finding, task) == expected


def test_overrides_are_case_insensitive_and_canonicalised() -> None:
    overrides = {"ards": "PNEUMONIA", "Lung_Opacity": "pneumonia", "NO FINDING": None}
    assert finding_to_label("ARDS", "multiclass", overrides) == (PNEUMONIA, "")
    assert finding_to_label("lung_opacity", "multiclass", overrides) == (PNEUMONIA, "")
    assert finding_to_label("No Finding", "multiclass", overrides) == ("", EXCLUDE_OUT_OF_TASK)
    # Overrides are per task: binary values are binary labels.
    assert finding_to_label("ARDS", "binary", {"ARDS": None}) == ("", EXCLUDE_OUT_OF_TASK)
    assert finding_to_label("Lung cancer", "binary", {"lung cancer": "non-covid"}) == (NON_COVID, "")
    # Defaults are untouched by an override call.
    assert finding_to_label("ARDS", "multiclass") == ("", EXCLUDE_OUT_OF_TASK)


def test_overrides_cannot_label_unlabelled_findings() -> None:
    assert finding_to_label("todo", "multiclass", {"todo": "pneumonia"}) == ("", EXCLUDE_UNLABELLED)


def test_invalid_overrides_and_task_are_errors() -> None:
    with pytest.raises(ValueError, match="not a multiclass label"):
        label_map_for_task("multiclass", {"ARDS": "non-COVID"})
    with pytest.raises(ValueError, match="same finding"):
        label_map_for_task("binary", {"ARDS": "COVID-19", "ards": None})
    with pytest.raises(ValueError, match="valid tasks"):
        finding_to_label("COVID-19", "ternary")


# ---------------------------------------------------------------- folder adapter


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder_source"
    write_image(root / "COVID-19" / "p1_0.png", "RGB")
    write_image(root / "COVID-19" / "p1_1.png", "RGBA")
    write_image(root / "normal" / "p2_0.png", "L", value=10)
    write_noise_image(root / "NORMAL" / "IM-0001-0001.JPEG", image_format="JPEG")  # no "_": the stem is the patient
    write_image(root / "PNEUMONIA" / "person3_bacteria_1.png", "P", value=3)
    write_image(root / "PNEUMONIA" / "sub" / "person3_virus_2.PNG", "I;16", value=20)  # nested, upper-case ext
    (root / "pneumonia").mkdir()
    (root / "pneumonia" / "p4_0.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    (root / "pneumonia" / "p5_0.png").write_bytes(b"")
    (root / "pneumonia" / "notes.txt").write_text("not an image")
    (root / "pneumonia" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (root / "pneumonia" / "._p6_0.png").write_bytes(b"\0")  # AppleDouble: ignored
    write_image(root / "ARDS" / "p7_0.png", value=30)
    write_image(root / "Lung_Opacity" / "p8_0.png", value=40)
    write_image(root / "Lung cancer" / "p10_0.png", value=50)
    (root / "README.txt").write_text("files at the root are not in a class")
    (root / ".cache").mkdir()
    write_image(root / ".cache" / "p9_0.png")  # hidden folder: ignored
    return root


def test_folder_manifest(image_folder: Path) -> None:
    frame = source_manifest(image_folder, "multiclass", name="kaggle")
    assert_manifest_contract(frame, "multiclass")
    assert reasons(frame) == {
        "p1_0.png": "",
        "p1_1.png": "",
        "p2_0.png": "",
        "IM-0001-0001.JPEG": "",
        "person3_bacteria_1.png": "",
        "person3_virus_2.PNG": "",
        "p4_0.png": "file",
        "p5_0.png": "file",
        "notes.txt": EXCLUDE_NOT_IMAGE,
        "p7_0.png": EXCLUDE_OUT_OF_TASK,
        "p8_0.png": EXCLUDE_OUT_OF_TASK,
        "p10_0.png": EXCLUDE_UNKNOWN_FINDING,
    }
    by_name = frame.set_index(frame["uri"].map(lambda uri: Path(uri).name))
    assert by_name.loc["p1_0.png", ["label", "finding", "patient_id"]].tolist() == [COVID, "COVID-19", "kaggle:p1"]
    assert by_name.loc["IM-0001-0001.JPEG", ["label", "patient_id"]].tolist() == [NORMAL, "kaggle:IM-0001-0001"]
    assert by_name.loc["person3_virus_2.PNG", ["label", "patient_id"]].tolist() == [PNEUMONIA, "kaggle:person3"]
    assert (frame["source"] == "kaggle").all()
    assert (frame["view"] == "unknown").all()
    assert by_name.loc["notes.txt", "sha256"] == ""


def test_folder_manifest_binary_pattern_and_view(image_folder: Path) -> None:
    frame = source_manifest(
        image_folder, "binary", name="f", patient_id_pattern=r"^person(?P<patient_id>\d+)", default_view="PA"
    )
    assert_manifest_contract(frame, "binary")
    labels = included(frame)["label"].value_counts().to_dict()
    assert labels == {NON_COVID: 6, COVID: 2}  # ARDS and lung opacity are non-COVID diagnoses here
    assert set(frame.loc[frame["uri"].str.contains("person3"), "patient_id"]) == {"f:3"}
    assert (frame["view"] == "PA").all()


def test_folder_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        source_manifest(tmp_path / "absent", "binary")
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no files in class subfolders"):
        source_manifest(tmp_path, "binary")
    write_image(tmp_path / "normal" / "a_1.png")
    with pytest.raises(ValueError, match="named group"):
        source_manifest(tmp_path, "binary", patient_id_pattern=r"^([^_]+)_")


# ---------------------------------------------------------------- ieee8023 adapter


IEEE_ROWS = [
    # patientid, finding, view, modality, filename, what the file is
    ("1", "COVID-19", "PA", "X-ray", "a.jpg", "jpeg"),
    ("1", "COVID-19, ARDS", "AP Supine", "X-ray", "b.png", "png"),
    ("2", "No Finding", "", "X-ray", "c.png", "png"),
    ("3", "Pneumonia/Bacterial/Streptococcus", "?", "X-ray", "d.png", "png"),
    ("4", "ARDS", "AP", "X-ray", "e.png", "png"),
    ("5", "COVID-19", "Axial", "CT", "f.nii.gz", "absent"),  # CT volume: not a PNG/JPEG, not read at all
    ("6", "todo", "L", "X-ray", "g.png", "png"),  # lateral beats unlabelled
    ("7", "todo", "L", "X-ray", "h.png", "absent"),  # missing file beats lateral
    ("8", "todo", "PA", "X-ray", "i.png", "corrupt"),  # unreadable beats unlabelled
    ("9", "Lung cancer", "L", "X-ray", "j.png", "png"),  # lateral beats unknown finding
    ("10", "Lung cancer", "PA", "X-ray", "k.png", "png"),
    ("11", "todo", "PA", "CT", "l.png", "corrupt"),  # not X-ray beats unreadable
    ("", "SARS", "PA", "X-ray", "m.png", "png"),  # blank patient id
    ("12", "COVID-19", "PA", "X-ray", "a.jpg", "listed"),  # a.jpg again, other patient: duplicate row
]


IEEE_COLUMNS = ["patientid", "finding", "view", "modality", "filename", "folder", "sex"]


def ieee8023_tree(root: Path, drop: str | None = None) -> Path:
    """IEEE_ROWS as an ieee8023 tree; metadata.csv without the column `drop` if given."""
    images = {}
    for index, (*_, filename, kind) in enumerate(IEEE_ROWS):
        if kind == "jpeg":
            images[filename] = encode(noise_image(0, (32, 32)), "JPEG")
        elif kind == "png":
            images[filename] = encode(flat_image("RGB", value=index * 7))  # distinct bytes per file
        elif kind == "corrupt":
            images[filename] = b"\xff\xd8\xff garbage"
    rows = [dict(zip(IEEE_COLUMNS, (*row[:5], "images", "M"), strict=True)) for row in IEEE_ROWS]
    return write_ieee8023(root, rows, images, columns=[column for column in IEEE_COLUMNS if column != drop])


def test_ieee8023_manifest_multiclass(tmp_path: Path) -> None:
    frame = source_manifest(ieee8023_tree(tmp_path), "multiclass", kind="ieee8023")
    assert_manifest_contract(frame, "multiclass")
    assert len(frame) == len(IEEE_ROWS)
    assert list(
        zip(
            frame["uri"].map(lambda uri: Path(uri).name),
            frame["exclusion_reason"].map(lambda reason: "file" if reason in FILE_REASONS else reason),
            strict=False,
        )
    ) == [
        ("a.jpg", ""),
        ("b.png", ""),
        ("c.png", ""),
        ("d.png", ""),
        ("e.png", EXCLUDE_OUT_OF_TASK),
        ("f.nii.gz", EXCLUDE_NOT_IMAGE),
        ("g.png", EXCLUDE_LATERAL),
        ("h.png", EXCLUDE_MISSING_FILE),
        ("i.png", "file"),
        ("j.png", EXCLUDE_LATERAL),
        ("k.png", EXCLUDE_UNKNOWN_FINDING),
        ("l.png", EXCLUDE_NOT_XRAY),
        ("m.png", ""),
        ("a.jpg", EXCLUDE_DUPLICATE_ROW),
    ]
    assert frame["label"].tolist()[:4] == [COVID, COVID, NORMAL, PNEUMONIA]
    assert frame["view"].tolist()[:4] == ["PA", "AP Supine", "unknown", "unknown"]
    assert frame["patient_id"].tolist()[:3] == ["ieee8023:1", "ieee8023:1", "ieee8023:2"]
    assert frame["patient_id"].iloc[-2] == "ieee8023:file:m.png"
    assert frame["exclusion_detail"].iloc[-1] == "same file as metadata row 1"
    assert frame["finding"].tolist() == [row[1] for row in IEEE_ROWS]  # untouched
    # Lateral images are still described (their bytes matter for duplicate checks).
    assert frame.loc[frame["uri"].str.endswith("g.png"), "width"].item() == 40


def test_ieee8023_manifest_binary(tmp_path: Path) -> None:
    frame = source_manifest(
        ieee8023_tree(tmp_path), "binary", kind="ieee8023", name="cohen", label_map={"lung cancer": None}
    )
    assert_manifest_contract(frame, "binary")
    assert included(frame)["label"].tolist() == [COVID, COVID, NON_COVID, NON_COVID, NON_COVID, NON_COVID]
    summary = exclusion_summary(frame)
    assert sum(count for reason, count in summary.items() if reason in FILE_REASONS) == 1
    assert {reason: count for reason, count in summary.items() if reason not in FILE_REASONS} == {
        EXCLUDE_DUPLICATE_ROW: 1,
        EXCLUDE_NOT_IMAGE: 1,
        EXCLUDE_NOT_XRAY: 1,
        EXCLUDE_MISSING_FILE: 1,
        EXCLUDE_LATERAL: 2,
        EXCLUDE_OUT_OF_TASK: 1,
    }
    assert frame["patient_id"].iloc[0] == "cohen:1"


@pytest.mark.parametrize("column", ["filename", "patientid", "finding", "view", "modality"])
def test_ieee8023_missing_column_is_a_clear_error(tmp_path: Path, column: str) -> None:
    ieee8023_tree(tmp_path, drop=column)
    with pytest.raises(ValueError, match=rf"metadata\.csv: missing required column\(s\) \['{column}'\]"):
        source_manifest(tmp_path, "binary", kind="ieee8023")


def test_ieee8023_missing_metadata(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        source_manifest(tmp_path, "binary", kind="ieee8023")


# ---------------------------------------------------------------- precedence, several sources


def test_exclusion_precedence_is_the_documented_order() -> None:
    assert EXCLUSION_PRECEDENCE == (
        EXCLUDE_OUTSIDE_ROOT,
        EXCLUDE_NAME_NOT_UTF8,
        EXCLUDE_DUPLICATE_ROW,
        EXCLUDE_NOT_IMAGE,
        EXCLUDE_NOT_DICOM,
        EXCLUDE_DICOM_NOT_IMAGE,
        EXCLUDE_NOT_XRAY,
        EXCLUDE_MULTI_FRAME,
        EXCLUDE_NO_PIXEL_DATA,
        EXCLUDE_MISSING_FILE,
        EXCLUDE_EMPTY_FILE,
        EXCLUDE_NOT_DECODABLE,
        EXCLUDE_TRUNCATED,
        EXCLUDE_TOO_LARGE,
        EXCLUDE_UNSUPPORTED_MODE,
        EXCLUDE_UNREADABLE,
        EXCLUDE_LATERAL,
        EXCLUDE_NOT_NORMAL,
        EXCLUDE_UNLABELLED,
        EXCLUDE_UNKNOWN_FINDING,
        EXCLUDE_OUT_OF_TASK,
        EXCLUDE_DUPLICATE,
    )
    assert first_reason(["", EXCLUDE_OUT_OF_TASK, EXCLUDE_LATERAL, EXCLUDE_UNREADABLE]) == EXCLUDE_UNREADABLE
    assert first_reason(["", ""]) == ""


def test_build_manifest_of_typed_source_configs(tmp_path: Path, image_folder: Path) -> None:
    ieee_root = ieee8023_tree(tmp_path / "ieee")
    # Folder stems that collide with ieee8023 patient ids ("1_...") must stay distinct.
    write_image(image_folder / "COVID-19" / "1_0.png", value=200)
    sources = [
        Ieee8023Options(root=str(ieee_root), name="ieee8023"),
        FolderOptions(root=str(image_folder), name="kaggle"),
    ]
    frame = build_manifest(sources, "multiclass")
    assert_manifest_contract(frame, "multiclass")
    assert frame["source"].value_counts().to_dict() == {"ieee8023": len(IEEE_ROWS), "kaggle": 13}
    ids = frame.groupby("source")["patient_id"].agg(set)
    assert not ids["ieee8023"] & ids["kaggle"]
    assert {"ieee8023:1", "kaggle:1"} <= set(frame["patient_id"])


def test_build_manifest_marks_duplicate_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_image(first / "COVID-19" / "p1_0.png", value=1)
    write_image(second / "COVID-19" / "q9_0.png", value=1)  # same bytes, other patient
    write_image(second / "todo" / "q9_1.png", value=1)  # same bytes but excluded anyway
    write_image(second / "normal" / "q8_0.png", value=2)
    sources = parse_sources(
        [
            {"kind": "folder", "root": str(first), "name": "a"},
            {"kind": "folder", "root": str(second), "name": "b"},
        ]
    )
    frame = build_manifest(sources, "multiclass")
    assert frame["exclusion_reason"].tolist() == ["", EXCLUDE_DUPLICATE, "", EXCLUDE_UNLABELLED]
    assert frame["label"].tolist() == [COVID, "", NORMAL, ""]
    assert frame["exclusion_detail"].iloc[1] == f"same bytes as {first / 'COVID-19' / 'p1_0.png'}"
    assert exclusion_summary(frame) == {EXCLUDE_UNLABELLED: 1, EXCLUDE_DUPLICATE: 1}
    assert build_manifest(sources, "multiclass", deduplicate=False)["exclusion_reason"].tolist()[1] == ""
    assert included(frame)["patient_id"].tolist() == ["a:p1", "b:q8"]
    assert included(frame).index.tolist() == [0, 1]


def test_build_manifest_errors(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"valid kinds: \['actualmed', 'covid_radiography', 'covidx', 'dicom', 'figure1', "
        r"'folder', 'ieee8023', 'images', 'kaggle_pneumonia', 'manifest', 'rsna_pneumonia'\]",
    ):
        build_manifest(parse_sources([{"kind": "s3", "root": "x", "name": "x"}]), "binary")
    with pytest.raises(ValueError, match="unknown option 'lable_map'"):
        build_manifest(parse_sources([{"kind": "folder", "root": str(image_folder), "lable_map": {}}]), "binary")
    with pytest.raises(ValueError, match="does not apply"):
        build_manifest(parse_sources([{"kind": "ieee8023", "root": str(tmp_path), "default_view": "PA"}]), "binary")
    with pytest.raises(ValueError, match="unique"):
        build_manifest(parse_sources([{"kind": "folder", "root": str(image_folder), "name": "x"}] * 2), "binary")
    with pytest.raises(ValueError, match=r"0\.root\n  String should have at least 1 character"):  # no root
        build_manifest(parse_sources([{"kind": "folder", "root": "", "name": "x"}]), "binary")
    with pytest.raises(ValueError, match="at least one source"):
        build_manifest([], "binary")
    with pytest.raises(ValueError, match="valid tasks"):
        build_manifest([FolderOptions(root=str(image_folder), name="x")], "ternary")
    with pytest.raises(ValueError, match="build_manifest takes validated source configs"):
        build_manifest([{"kind": "folder", "root": str(image_folder), "name": "x"}], "binary")  # type: ignore[list-item]


def test_exclusion_summary_and_included_on_empty_manifest() -> None:
    empty = pd.DataFrame(columns=MANIFEST_COLUMNS)
    assert exclusion_summary(empty) == {}
    assert included(empty).empty
    assert mark_duplicates(empty).empty


# ---------------------------------------------------------------- real ieee8023 snapshot
#
# Expected numbers follow from the dataset README (653 X-ray rows: COVID-19
# 439, COVID-19+ARDS 12, other pneumonias 101, ARDS 4, No Finding 19, todo 78;
# views PA 309, AP Supine 135, AP 115, L 55, blank/? 39) and were checked once
# with pandas on metadata.csv. All files exist and decode, so no file reasons.
# - duplicate manifest row (first in precedence among what applies): patients
#   339 and 340 re-list 5 files of 285 and 287 (000001-24, 000006-17,
#   000007-15 Pneumonia PA; 000001-27 Legionella PA; 000002-29 Legionella L):
#   the later row of each is excluded, never read twice. 653 rows, 648 files.
# - lateral: 55 L rows - 1 duplicate row = 54 = COVID-19 24 + todo 11 + other
#   pneumonias 19; no ARDS / No Finding / COVID+ARDS is L.
# - unlabelled: todo 78 - 11 lateral = 67.
# - COVID-19: (439 - 24) + 12 COVID-19+ARDS = 427.
# - pneumonia: 101 - 20 lateral - 4 duplicate PA rows = 77; normal: No Finding 19; ARDS 4 (all PA).
# - binary non-COVID: 77 + 19 + 4 = 100 (ARDS is a non-COVID diagnosis).
# - no "duplicate image" left: two "todo" files of patient 364 are
#   byte-identical, but they are excluded anyway.
REAL_EXPECTED = {
    "multiclass": (
        {COVID: 427, PNEUMONIA: 77, NORMAL: 19},
        {EXCLUDE_DUPLICATE_ROW: 5, EXCLUDE_LATERAL: 54, EXCLUDE_UNLABELLED: 67, EXCLUDE_OUT_OF_TASK: 4},
    ),
    "binary": (
        {COVID: 427, NON_COVID: 100},
        {EXCLUDE_DUPLICATE_ROW: 5, EXCLUDE_LATERAL: 54, EXCLUDE_UNLABELLED: 67},
    ),
}
# The Actualmed subset (27 rows, all PA/AP X-rays): COVID-19 15, No finding 8, blank finding 4.
REAL_ACTUALMED_EXPECTED = {
    "multiclass": ({COVID: 15, NORMAL: 8}, {EXCLUDE_UNLABELLED: 4}),
    "binary": ({COVID: 15, NON_COVID: 8}, {EXCLUDE_UNLABELLED: 4}),
}


@pytest.fixture(scope="module")
def decode_once():
    """Read and decode each real file once for the whole module (decoding is not what is tested here)."""
    cache: dict[str, dict[str, Any]] = {}

    def describe_uris(uris, workers: int = 1, progress: bool = False):
        missing = [uri for uri in uris if uri not in cache]
        cache.update(zip(missing, image_info.describe_uris(missing, workers=workers, progress=progress), strict=False))
        return [cache[uri] for uri in uris]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_module, "describe_uris", describe_uris)
        yield cache


@needs_real_data
@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_real_ieee8023_counts(task: str, decode_once) -> None:
    frame = source_manifest(REAL_IEEE8023, task, kind="ieee8023")
    assert_manifest_contract(frame, task)
    assert len(frame) == 653
    labels, exclusions = REAL_EXPECTED[task]
    assert included(frame)["label"].value_counts().to_dict() == labels
    assert exclusion_summary(frame) == exclusions
    assert frame["view"].value_counts().to_dict() == {"PA": 309, "AP Supine": 135, "AP": 115, "L": 55, "unknown": 39}
    assert frame["patient_id"].nunique() == 351
    assert frame["sex"].value_counts().to_dict() == {"M": 374, "F": 227, "": 52}  # metadata.csv's `sex`
    read = frame[frame["exclusion_reason"] != EXCLUDE_DUPLICATE_ROW]
    assert read["uri"].nunique() == len(read) == 648
    assert (read["width"] > 0).all()
    assert max(read["width"].max(), read["height"].max()) <= 768


@needs_real_data
@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_real_ieee8023_with_another_source(task: str, tmp_path: Path, decode_once) -> None:
    from components.synthetic import generate_dataset

    generate_dataset(tmp_path, n_patients_per_class=2, images_per_patient=2, image_size=48)
    write_image(tmp_path / "normal" / "2_0.png", value=77)  # raw id "2" also exists in ieee8023
    sources = [
        Ieee8023Options(root=str(REAL_IEEE8023), name="ieee8023"),
        FolderOptions(root=str(tmp_path), name="synthetic"),
    ]
    frame = build_manifest(sources, task)
    real = frame[frame["source"] == "ieee8023"]
    labels, exclusions = REAL_EXPECTED[task]
    assert included(real)["label"].value_counts().to_dict() == labels
    assert exclusion_summary(real) == exclusions
    per_source = frame.groupby("patient_id")["source"].nunique()
    assert (per_source == 1).all(), "a patient id is shared across sources"
    assert exclusion_summary(frame[frame["source"] == "synthetic"]) == {}


@needs_real_data
@pytest.mark.skipif(not REAL_ACTUALMED.is_dir(), reason=f"{REAL_ACTUALMED} not present")
@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_real_ieee8023_with_actualmed(task: str, decode_once) -> None:
    sources = parse_sources(
        [
            {"kind": "ieee8023", "root": str(REAL_IEEE8023), "name": "ieee8023"},
            {"kind": "actualmed", "root": str(REAL_ACTUALMED), "name": "actualmed"},
        ]
    )
    frame = build_manifest(sources, task)
    assert_manifest_contract(frame, task)
    assert frame["source"].value_counts().to_dict() == {"ieee8023": 653, "actualmed": 27}
    for name, expected in (("ieee8023", REAL_EXPECTED), ("actualmed", REAL_ACTUALMED_EXPECTED)):
        part = frame[frame["source"] == name]
        labels, exclusions = expected[task]
        assert included(part)["label"].value_counts().to_dict() == labels, name
        assert exclusion_summary(part) == exclusions, name
    # No image of one set is a byte copy of the other's; patients stay apart.
    assert EXCLUDE_DUPLICATE not in exclusion_summary(frame)
    assert frame.loc[frame["source"] == "actualmed", "patient_id"].nunique() == 25
    assert (frame.groupby("patient_id")["source"].nunique() == 1).all()
