"""Source adapters and their registry (components.sources): one tiny generated fixture per public layout.

Images are 32x32 px of noise (size checks come later, in validation); every
image has distinct bytes so that the byte-duplicate check never interferes
unless a test wants it to. Image decoding itself is tested elsewhere. Every
registered kind round-trips a generated tree of its layout (TREES), and a kind
registered by a test (one adapter, one options model) works in a run config
and in build_manifest.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pandas as pd
import pytest
import yaml
from pydantic import Field

from components.candidates import candidate
from components.config import ConfigError, load_run_config, parse_run_config
from components.labels import (
    COVID,
    EXCLUDE_DUPLICATE,
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_UNLABELLED,
    NON_COVID,
    NORMAL,
    PNEUMONIA,
    TASK_LABELS,
    label_map_for_task,
)
from components.manifest import MANIFEST_COLUMNS, build_manifest, exclusion_summary, included
from components.sources import (
    ActualmedOptions,
    CovidRadiographyOptions,
    CovidxOptions,
    Figure1Options,
    KagglePneumoniaOptions,
    ManifestOptions,
    SourceOptions,
    describe_sources,
    parse_sources,
    register_source,
    source_kinds,
    unregister_source,
)
from components.storage import list_files
from cxr.cli import main
from tests.dicom_factory import dicom_tree, rsna_tree
from tests.factories import source_manifest, write_ieee8023, write_noise_image

PROJECT = Path(__file__).resolve().parents[1]
REAL_ACTUALMED = PROJECT.parent / "shared" / "datasets" / "actualmed-covid-chestxray-dataset"

_distinct = itertools.count(1)


def image(path: Path, image_format: str | None = None) -> Path:
    """A small noise image with bytes no other call produces (a fresh seed per call)."""
    return write_noise_image(path, seed=next(_distinct), image_format=image_format)


def labels(frame: pd.DataFrame) -> dict[str, int]:
    return included(frame)["label"].value_counts().to_dict()


def by_name(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(frame["uri"].map(lambda uri: uri.rsplit("/", 1)[-1]))


def check_contract(frame: pd.DataFrame, task: str) -> None:
    assert list(frame.columns) == MANIFEST_COLUMNS
    used = frame["exclusion_reason"] == ""
    assert frame.loc[used, "label"].isin(TASK_LABELS[task]).all()
    assert (frame.loc[~used, "label"] == "").all()
    assert (frame.loc[used, "sha256"].str.len() == 64).all()
    assert all(pid.startswith(f"{source}:") for pid, source in zip(frame["patient_id"], frame["source"], strict=False))


# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("kind", sorted(source_kinds()))
def test_each_kind_has_an_options_model_pinned_to_it_with_described_options(kind: str) -> None:
    entry = source_kinds()[kind]
    assert issubclass(entry.options, SourceOptions)
    assert entry.options(root="r", name="n").kind == kind
    assert entry.summary, f"{kind}: its adapter has no docstring"
    for option in entry.own_options():
        assert option.description, f"{kind}.{option.name} has no description"


def test_register_source_refuses_a_model_of_another_kind_and_a_taken_kind() -> None:
    with pytest.raises(TypeError, match=r'must declare kind: Literal\["other"\]'):
        register_source("other", options=CovidxOptions)
    with pytest.raises(TypeError, match="must be a SourceOptions subclass"):
        register_source("other", options=dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source kind 'covidx' is already registered"):
        register_source("covidx", options=CovidxOptions)(lambda root, task, options: [])
    assert source_kinds()["covidx"].options is CovidxOptions


def test_cxr_sources_lists_every_kind_with_its_options(capsys) -> None:
    assert main(["sources"]) == 0
    printed = capsys.readouterr().out
    assert printed == describe_sources() + "\n"
    for kind, entry in source_kinds().items():
        assert f"\n{kind}: " in printed
        for option in entry.own_options():
            assert f"    {option.name}: {option.type}, default {option.default}\n" in printed
    assert "    split_files: list[str] | None, default null\n" in printed
    assert "    manifest_file: str, default 'manifest.csv'\n" in printed
    assert "    root: str, required\n" in printed


def test_listing_commands_import_neither_tensorflow_nor_zenml() -> None:
    code = (
        "import sys; from cxr.cli import main; main(['sources']); main(['backbones']); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'zenml', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT)
    assert result.stdout.splitlines()[-1] == "[]"


def test_unknown_kind_and_another_kinds_option_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown source kind 'covidx2'; valid kinds: \['actualmed', 'covid_radiography', "
        r"'covidx', 'dicom', 'figure1', 'folder', 'ieee8023', 'images', 'kaggle_pneumonia', 'manifest', "
        r"'rsna_pneumonia'\]",
    ):
        source_manifest(tmp_path, "binary", "covidx2")
    image(tmp_path / "images" / "a.png")
    (tmp_path / "train.txt").write_text("1 a.png COVID-19\n")
    with pytest.raises(ValueError, match="option 'split_files' does not apply to kind 'actualmed'"):
        source_manifest(tmp_path, "binary", "actualmed", split_files=["train.txt"])
    with pytest.raises(ValueError, match="option 'manifest_file' does not apply to kind 'covidx'"):
        source_manifest(tmp_path, "binary", "covidx", manifest_file="m.csv")
    with pytest.raises(
        ValueError,
        match=r"unknown option 'split_file'; valid: \['default_view', 'image_folders', "
        r"'label_map', 'split_files'\]",
    ):
        source_manifest(tmp_path, "binary", "covidx", split_file=["train.txt"])


# ---------------------------------------------------------------- actualmed


ACTUALMED_COLUMNS = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "survival",
    "temperature",
    "pO2 saturation",
    "view",
    "modality",
    "imagename",
    "artifacts/distortion",
    "notes",
]


@pytest.fixture
def actualmed(tmp_path: Path) -> Path:
    root = tmp_path / "actualmed"
    rows = [
        {
            "patientid": "A1",
            "age": "45",
            "finding": "COVID-19",
            "view": "AP",
            "modality": "X-ray",
            "imagename": "a1.png",
        },
        {"patientid": "A1", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "imagename": "a1b.png"},
        {
            "patientid": "A2",
            "finding": "No finding",
            "view": "PA",
            "modality": "X-ray",
            "imagename": "a2.png",
            "notes": "Negative (covid-19 viral infection is excluded)",
        },
        {
            "patientid": "A3",
            "finding": "",
            "view": "PA",
            "modality": "X-ray",
            "imagename": "a3.png",
            "notes": "Inconclusive, date taken (YYYYMMDD): 20200321",
        },
        {"patientid": "A4", "finding": "COVID-19", "view": "L", "modality": "X-ray", "imagename": "a4.png"},
        {"patientid": "A5", "finding": "COVID-19", "view": "AP", "modality": "CT", "imagename": "a5.png"},
        {
            "patientid": "A6",
            "finding": "No finding",
            "view": "AP",
            "modality": "",
            "imagename": "a6.png",
        },  # blank: X-ray
        {"patientid": "A7", "finding": "COVID-19", "view": "AP", "modality": "X-ray", "imagename": "absent.png"},
        {"patientid": "A8", "finding": "Lung cancer", "view": "PA", "modality": "X-ray", "imagename": "a8.png"},
        {
            "patientid": "A9",
            "finding": "COVID-19",
            "view": "PA",
            "modality": "X-ray",
            "imagename": "a1.png",
        },  # listed twice
        {
            "patientid": "A10",
            "finding": "COVID-19",
            "view": "PA",
            "modality": "X-ray",
            "imagename": "",
        },  # images/A10.jpg
    ]
    for name in ("a1.png", "a1b.png", "a2.png", "a3.png", "a4.png", "a5.png", "a6.png", "a8.png", "A10.jpg"):
        image(root / "images" / name)
    write_ieee8023(root, rows, columns=ACTUALMED_COLUMNS, encoding="utf-8-sig")  # with a BOM, as spreadsheets export it
    assert (root / "metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    return root


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("multiclass", {COVID: 3, NORMAL: 2}),
        ("binary", {COVID: 3, NON_COVID: 2}),
    ],
)
def test_actualmed(actualmed: Path, task: str, expected: dict[str, int]) -> None:
    frame = source_manifest(actualmed, task, "actualmed")
    check_contract(frame, task)
    assert len(frame) == 11
    assert labels(frame) == expected
    assert exclusion_summary(frame) == {
        EXCLUDE_DUPLICATE_ROW: 1,
        EXCLUDE_NOT_XRAY: 1,
        EXCLUDE_MISSING_FILE: 1,
        EXCLUDE_LATERAL: 1,
        EXCLUDE_UNLABELLED: 1,
        EXCLUDE_UNKNOWN_FINDING: 1,
    }
    rows = by_name(frame)
    assert (
        rows.loc["a3.png", "exclusion_detail"] == "blank finding; notes: Inconclusive, date taken (YYYYMMDD): 20200321"
    )
    assert rows.loc["a5.png", "sha256"] == ""  # a CT row's file is not read
    assert rows.loc["A10.jpg", ["patient_id", "label"]].tolist() == ["actualmed:A10", COVID]
    assert rows.loc["a6.png", "exclusion_reason"] == ""
    assert frame["age_group"].tolist()[:2] == ["adult", ""]
    assert frame["view"].tolist()[:3] == ["AP", "PA", "PA"]
    assert frame["patient_id"].tolist()[:2] == ["actualmed:A1", "actualmed:A1"]


def test_actualmed_missing_column_names_file_and_column(actualmed: Path) -> None:
    table = pd.read_csv(actualmed / "metadata.csv", dtype=str, encoding="utf-8-sig").drop(columns=["finding"])
    table.to_csv(actualmed / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"actualmed/metadata\.csv: missing required column\(s\) \['finding'\]"):
        source_manifest(actualmed, "binary", "actualmed")
    (actualmed / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"actualmed metadata .*metadata\.csv does not exist"):
        source_manifest(actualmed, "binary", "actualmed")


@pytest.mark.skipif(not REAL_ACTUALMED.is_dir(), reason=f"{REAL_ACTUALMED} not present")
@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("multiclass", {COVID: 15, NORMAL: 8}),
        ("binary", {COVID: 15, NON_COVID: 8}),
    ],
)
def test_real_actualmed(task: str, expected: dict[str, int]) -> None:
    frame = source_manifest(REAL_ACTUALMED, task, "actualmed")
    check_contract(frame, task)
    assert len(frame) == 27
    assert labels(frame) == expected
    assert exclusion_summary(frame) == {EXCLUDE_UNLABELLED: 4}
    unlabelled = frame[frame["exclusion_reason"] == EXCLUDE_UNLABELLED]
    assert unlabelled["exclusion_detail"].str.startswith("blank finding; notes: Inconclusive").all()
    assert frame["view"].value_counts().to_dict() == {"AP": 17, "PA": 10}
    assert frame["patient_id"].nunique() == 25  # ANON218 has three images
    assert (frame["width"] > 0).all()


# ---------------------------------------------------------------- figure1


@pytest.fixture
def figure1(tmp_path: Path) -> Path:
    root = tmp_path / "figure1"
    columns = ["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality", "notes"]
    rows = [
        {"patientid": "COVID-00001", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "age": "71"},
        {"patientid": "COVID-00003a", "finding": "COVID-19", "view": "AP", "modality": "X-ray"},
        {"patientid": "COVID-00003b", "finding": "COVID-19", "view": "AP", "modality": "X-ray"},
        {"patientid": "COVID-00004", "finding": "COVID-19", "view": "PA", "modality": "X-ray"},  # no image
        {
            "patientid": "COVID-00005",
            "finding": "Pneumonia",
            "view": "PA",
            "modality": "X-ray",
            "notes": "Café-au-lait",
        },
        {"patientid": "COVID-00006", "finding": "No finding", "view": "PA", "modality": "X-ray"},
        {"patientid": "COVID-00007", "finding": "", "view": "PA", "modality": "X-ray", "notes": "Inconclusive"},
    ]
    image(root / "images" / "COVID-00001.jpg")
    image(root / "images" / "COVID-00003a.png")
    image(root / "images" / "COVID-00003b.jpg")
    image(root / "images" / "COVID-00005.png")
    image(root / "images" / "COVID-00006.jpeg")
    image(root / "images" / "COVID-00007.jpg")
    write_ieee8023(root, rows, columns=columns, encoding="cp1252")  # Figure1's metadata.csv is not UTF-8
    return root


def test_figure1_images_named_after_the_patient(figure1: Path) -> None:
    frame = source_manifest(figure1, "multiclass", "figure1")
    check_contract(frame, "multiclass")
    assert len(frame) == 7
    assert labels(frame) == {COVID: 3, PNEUMONIA: 1, NORMAL: 1}
    assert exclusion_summary(frame) == {EXCLUDE_MISSING_FILE: 1, EXCLUDE_UNLABELLED: 1}
    # COVID-00003a / b are two images of one case.
    assert frame["patient_id"].tolist()[:3] == ["figure1:COVID-00001", "figure1:COVID-00003", "figure1:COVID-00003"]
    missing = frame[frame["exclusion_reason"] == EXCLUDE_MISSING_FILE].iloc[0]
    assert missing["patient_id"] == "figure1:COVID-00004"
    assert "images/COVID-00004.*" in missing["exclusion_detail"]
    assert by_name(frame).loc["COVID-00007.jpg", "exclusion_detail"] == "blank finding; notes: Inconclusive"
    assert source_manifest(figure1, "binary", "figure1")["label"].tolist() == [
        COVID,
        COVID,
        COVID,
        "",
        NON_COVID,
        NON_COVID,
        "",
    ]


# ---------------------------------------------------------------- Kaggle pediatric pneumonia


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle"
    base = root / "chest_xray"
    image(base / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    image(base / "train" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg")
    image(base / "val" / "NORMAL" / "IM-0115-0002.jpeg")  # same patient, other original split
    image(base / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    image(base / "test" / "PNEUMONIA" / "person1_virus_6.jpeg")
    image(base / "test" / "PNEUMONIA" / "person2_virus_3.jpeg")
    (base / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    (base / "README.md").write_text("outside <split>/<class>/: ignored")
    image(base / "chest_xray" / "train" / "NORMAL" / "IM-9999-0001.jpeg")  # the download's nested copy: ignored
    image(root / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg")  # ignored
    return root


@pytest.mark.parametrize("subfolder", ["", "chest_xray"])
def test_kaggle_pneumonia(kaggle: Path, subfolder: str) -> None:
    frame = source_manifest(kaggle / subfolder, "multiclass", "kaggle_pneumonia", name="kermany")
    check_contract(frame, "multiclass")
    assert len(frame) == 7
    assert labels(frame) == {NORMAL: 3, PNEUMONIA: 3}
    assert exclusion_summary(frame) == {EXCLUDE_NOT_IMAGE: 1}
    rows = by_name(frame)
    assert rows.loc["IM-0115-0001.jpeg", ["patient_id", "finding"]].tolist() == ["kermany:IM-0115", "normal"]
    assert rows.loc["IM-0115-0002.jpeg", "patient_id"] == "kermany:IM-0115"
    assert rows.loc["NORMAL2-IM-1427-0001.jpeg", "patient_id"] == "kermany:NORMAL2-IM-1427"
    assert rows.loc["person1_bacteria_1.jpeg", ["patient_id", "finding"]].tolist() == [
        "kermany:person1",
        "pneumonia/bacterial",
    ]
    assert rows.loc["person1_virus_6.jpeg", ["patient_id", "finding"]].tolist() == [
        "kermany:person1",
        "pneumonia/viral",
    ]
    assert (frame["age_group"] == "pediatric").all()
    assert not frame["uri"].str.contains("IM-9999|__MACOSX").any()


def test_kaggle_pneumonia_binary_and_errors(kaggle: Path, tmp_path: Path) -> None:
    frame = source_manifest(kaggle, "binary", "kaggle_pneumonia", default_view="AP")
    assert labels(frame) == {NON_COVID: 6}
    assert (frame["view"] == "AP").all()
    image(tmp_path / "elsewhere" / "NORMAL" / "x.jpeg")
    with pytest.raises(ValueError, match=r"no files in \{train,val,test\}/\{NORMAL,PNEUMONIA\}/"):
        source_manifest(tmp_path / "elsewhere", "binary", "kaggle_pneumonia")


# ---------------------------------------------------------------- COVID-19 Radiography Database


@pytest.fixture
def radiography(tmp_path: Path) -> Path:
    root = tmp_path / "radiography" / "COVID-19_Radiography_Dataset"
    image(root / "COVID" / "images" / "COVID-1.png")
    image(root / "COVID" / "images" / "COVID-2.png")
    image(root / "COVID" / "masks" / "COVID-1.png")  # segmentation mask: ignored
    image(root / "Normal" / "images" / "Normal-1.png")
    image(root / "Normal" / "images" / "Normal-2.tif", image_format="TIFF")  # not a PNG/JPEG: excluded, not dropped
    image(root / "Viral Pneumonia" / "images" / "Viral Pneumonia-1.png")
    image(root / "Lung_Opacity" / "images" / "Lung_Opacity-1.png")
    (root / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04")  # ignored
    (root / "README.md.txt").write_text("ignored")
    return root


@pytest.mark.parametrize(
    ("task", "expected", "exclusions"),
    [
        ("multiclass", {COVID: 2, NORMAL: 1, PNEUMONIA: 1}, {EXCLUDE_NOT_IMAGE: 1, EXCLUDE_OUT_OF_TASK: 1}),
        ("binary", {COVID: 2, NON_COVID: 3}, {EXCLUDE_NOT_IMAGE: 1}),
    ],
)
def test_covid_radiography(radiography: Path, task: str, expected: dict, exclusions: dict) -> None:
    for root in (radiography, radiography.parent):  # the dataset folder, or the download folder holding it
        frame = source_manifest(root, task, "covid_radiography", name="radiography")
        check_contract(frame, task)
        assert len(frame) == 6
        assert labels(frame) == expected
        assert exclusion_summary(frame) == exclusions
        assert not frame["uri"].str.contains("/masks/").any()
        assert frame["patient_id"].nunique() == 6  # each image its own patient
        assert by_name(frame).loc["Lung_Opacity-1.png", "finding"] == "Lung_Opacity"


def test_covid_radiography_older_layout(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19 Radiography Database v1"
    image(root / "COVID-19" / "COVID-19(1).png")
    image(root / "NORMAL" / "NORMAL (1).png")
    image(root / "Viral Pneumonia" / "Viral Pneumonia (1).png")
    (root / "NORMAL.metadata.xlsx").write_bytes(b"PK\x03\x04")
    frame = source_manifest(root, "multiclass", "covid_radiography")
    assert labels(frame) == {COVID: 1, NORMAL: 1, PNEUMONIA: 1}
    assert exclusion_summary(frame) == {}
    with pytest.raises(ValueError, match="no images in class folders"):
        source_manifest(root / "NORMAL", "multiclass", "covid_radiography")


# ---------------------------------------------------------------- COVIDx


@pytest.fixture
def covidx(tmp_path: Path) -> Path:
    root = tmp_path / "covidx"
    for name in ("a.png", "b.png", "c.png", "d.png", "my image.png", "e.png"):
        image(root / "train" / name)
    for name in ("t1.png", "t2.png"):
        image(root / "test" / name)
    (root / "train.txt").write_text(
        "# patientId filename label source\n"
        "P1 a.png COVID-19 cohen\n"
        "P1 b.png positive ricord\n"
        "P2 c.png negative rsna\n"
        "P3 d.png normal\n"  # no source column (older files)
        "P4 my image.png pneumonia sirm\n"  # a file name with a space
        "P5 e.png kidney_stone src\n"
        "P6 absent.png COVID-19 cohen\n"
        "\n"
        "P7  a.png\tCOVID-19   cohen\n"  # a.png again (and odd whitespace)
    )
    (root / "test.txt").write_text("T1 t1.png negative rsna\nT2 t2.png positive bimcv\n")
    return root


@pytest.mark.parametrize(
    ("task", "expected", "exclusions"),
    [
        (
            "multiclass",
            {COVID: 3, NORMAL: 1, PNEUMONIA: 1},
            {EXCLUDE_DUPLICATE_ROW: 1, EXCLUDE_MISSING_FILE: 1, EXCLUDE_UNKNOWN_FINDING: 1, EXCLUDE_OUT_OF_TASK: 2},
        ),
        (
            "binary",
            {COVID: 3, NON_COVID: 4},
            {EXCLUDE_DUPLICATE_ROW: 1, EXCLUDE_MISSING_FILE: 1, EXCLUDE_UNKNOWN_FINDING: 1},
        ),
    ],
)
def test_covidx(covidx: Path, task: str, expected: dict, exclusions: dict) -> None:
    frame = source_manifest(covidx, task, "covidx")
    check_contract(frame, task)
    assert len(frame) == 10
    assert labels(frame) == expected
    assert exclusion_summary(frame) == exclusions
    rows = by_name(frame)
    assert rows.loc["my image.png", ["patient_id", "finding"]].tolist() == ["covidx:P4", "pneumonia"]
    assert rows.loc["t2.png", "uri"] == str(covidx / "test" / "t2.png")
    assert frame["finding"].tolist()[:3] == ["COVID-19", "positive", "negative"]


def test_covidx_options(covidx: Path) -> None:
    # A source's label_map wins over COVIDx's own positive/negative.
    frame = source_manifest(covidx, "multiclass", "covidx", label_map={"negative": "normal"})
    assert labels(frame) == {COVID: 3, NORMAL: 3, PNEUMONIA: 1}
    # Explicit split files and image folders.
    (covidx / "images").mkdir()
    (covidx / "test" / "t1.png").rename(covidx / "images" / "t1.png")
    (covidx / "labels_test_COVIDx9B.txt").write_text("T1 t1.png negative rsna\n")
    frame = source_manifest(
        covidx,
        "binary",
        "covidx",
        split_files=["labels_test_COVIDx9B.txt"],
        image_folders={"labels_test_COVIDx9B.txt": "images"},
    )
    assert frame["uri"].tolist() == [str(covidx / "images" / "t1.png")]
    assert labels(frame) == {NON_COVID: 1}
    with pytest.raises(ValueError, match="cannot tell the image folder of split file 'labels_test_COVIDx9B.txt'"):
        source_manifest(covidx, "binary", "covidx", split_files=["labels_test_COVIDx9B.txt"])
    with pytest.raises(ValueError, match=r"image_folders names files that are not split files: \['val.txt'\]"):
        source_manifest(covidx, "binary", "covidx", split_files=["train.txt"], image_folders={"val.txt": "val"})
    with pytest.raises(FileNotFoundError, match="val.txt does not exist"):
        source_manifest(covidx, "binary", "covidx", split_files=["val.txt"])


def test_covidx_errors_name_the_line(covidx: Path) -> None:
    with (covidx / "test.txt").open("a") as handle:
        handle.write("T3 t3.png\n")
    with pytest.raises(
        ValueError,
        match=r"covidx/test\.txt:3: expected 'patientId filename label \[source\]', "
        r"got 'T3 t3.png'",
    ):
        source_manifest(covidx, "binary", "covidx")
    for name in ("train.txt", "test.txt"):
        (covidx / name).rename(covidx / f"{name}.bak.txt")
    with pytest.raises(
        ValueError,
        match=r"none of \['train.txt', 'val.txt', 'test.txt'\] found; set split_files "
        r"\(text files here: \['test.txt.bak.txt', 'train.txt.bak.txt'\]\)",
    ):
        source_manifest(covidx, "binary", "covidx")


# ---------------------------------------------------------------- generic manifest


@pytest.fixture
def manifest_root(tmp_path: Path) -> Path:
    root = tmp_path / "manifest_source"
    for name in ("x1.png", "x2.png", "x3.jpg", "x5.png"):
        image(root / "images" / name)
    image(tmp_path / "secret.png")  # exists, but outside the root
    rows = [
        ("images/x1.png", "COVID-19", "pat1", "PA", "50"),
        ("images/x2.png", "normal", "", "", "7"),  # patient: the stem; view: default
        ("../../etc/passwd", "COVID-19", "", "", ""),
        ("/etc/passwd", "normal", "", "", ""),
        (str(root / "images" / "x3.jpg"), "Pneumonia/Viral/SARS", "pat3", "AP", ""),  # absolute, inside root
        ("../secret.png", "normal", "", "", ""),
        ("images/x1.png", "COVID-19", "pat9", "PA", ""),  # listed twice
        ("images/x4.png", "normal", "", "", ""),  # missing
        ("s3://bucket/x.png", "normal", "", "", ""),
        ("", "normal", "", "", ""),
        ("images/x5.png", "Lung cancer", "", "L", ""),  # lateral beats unknown finding
    ]
    pd.DataFrame(rows, columns=["path", "label", "patient_id", "view", "age"]).to_csv(
        root / "manifest.csv", index=False
    )
    return root


MANIFEST_REASONS = [
    "",
    "",
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_OUTSIDE_ROOT,
    "",
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_LATERAL,
]


def test_manifest_csv(manifest_root: Path) -> None:
    frame = source_manifest(manifest_root, "multiclass", "manifest", name="m")
    check_contract(frame, "multiclass")
    assert frame["exclusion_reason"].tolist() == MANIFEST_REASONS
    assert labels(frame) == {COVID: 1, NORMAL: 1, PNEUMONIA: 1}
    assert frame["patient_id"].tolist()[:2] == ["m:pat1", "m:x2"]
    assert frame["view"].tolist()[:2] == ["PA", "unknown"]
    assert frame["age_group"].tolist()[:2] == ["adult", "pediatric"]
    escaped = frame[frame["exclusion_reason"] == EXCLUDE_OUTSIDE_ROOT]
    assert (escaped["sha256"] == "").all()  # never opened
    assert "points outside the source root" in escaped["exclusion_detail"].iloc[0]
    assert "absolute path" in escaped["exclusion_detail"].iloc[1]
    assert frame["uri"].iloc[4] == str(manifest_root / "images" / "x3.jpg")
    assert frame["exclusion_detail"].iloc[9] == "manifest.csv row 10: blank path"
    unknown = source_manifest(manifest_root, "multiclass", "manifest", default_view="PA")
    assert unknown["exclusion_reason"].iloc[-1] == EXCLUDE_LATERAL  # an explicit view wins over the default
    assert unknown["view"].iloc[1] == "PA"


def test_manifest_parquet_with_alternative_columns(manifest_root: Path) -> None:
    table = pd.read_csv(manifest_root / "manifest.csv", dtype=str, keep_default_na=False)
    table = table.rename(columns={"path": "uri", "label": "finding"}).drop(columns=["age"])
    table["age_group"] = ["adult", "Pediatric"] + [""] * (len(table) - 2)
    table.to_parquet(manifest_root / "manifest.parquet")
    frame = source_manifest(manifest_root, "binary", "manifest", manifest_file="manifest.parquet")
    assert frame["exclusion_reason"].tolist() == MANIFEST_REASONS
    assert labels(frame) == {COVID: 1, NON_COVID: 2}
    assert frame["age_group"].tolist()[:3] == ["adult", "pediatric", ""]


def test_manifest_errors(manifest_root: Path) -> None:
    table = pd.read_csv(manifest_root / "manifest.csv", dtype=str, keep_default_na=False)
    table.rename(columns={"path": "file"}).to_csv(manifest_root / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: missing required column\(s\) 'path' or 'uri'; found \['file'"):
        source_manifest(manifest_root, "binary", "manifest", manifest_file="bad.csv")
    table.assign(age_group="child").to_csv(manifest_root / "ages.csv", index=False)
    with pytest.raises(ValueError, match=r"ages\.csv row 1: age_group 'child' is not 'adult', 'pediatric' or blank"):
        source_manifest(manifest_root, "binary", "manifest", manifest_file="ages.csv")
    (manifest_root / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable Parquet file"):
        source_manifest(manifest_root, "binary", "manifest", manifest_file="broken.parquet")
    with pytest.raises(FileNotFoundError, match=r"absent\.csv does not exist"):
        source_manifest(manifest_root, "binary", "manifest", manifest_file="absent.csv")


# ---------------------------------------------------------------- symlinks, several sources, duplicates


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_out_of_the_root_is_excluded_and_never_read(tmp_path: Path) -> None:
    outside = image(tmp_path / "outside" / "secret.png")
    root = tmp_path / "folder"
    image(root / "COVID-19" / "real.png")
    (root / "COVID-19").joinpath("link.png").symlink_to(outside)
    image(root / "normal" / "inside.png")
    (root / "normal" / "link_inside.png").symlink_to(root / "normal" / "inside.png")  # inside: fine
    frame = source_manifest(root, "multiclass", "folder")
    rows = by_name(frame)
    assert rows.loc["link.png", "exclusion_reason"] == EXCLUDE_OUTSIDE_ROOT
    assert rows.loc["link.png", "sha256"] == ""
    assert "outside the source root" in rows.loc["link.png", "exclusion_detail"]
    assert rows.loc["real.png", "exclusion_reason"] == ""
    # A link to a file inside the root is the same bytes: a duplicate image, not a second one.
    assert sorted(rows.loc[["inside.png", "link_inside.png"], "exclusion_reason"]) == ["", EXCLUDE_DUPLICATE]


def test_several_sources_in_one_run(
    actualmed: Path, figure1: Path, kaggle: Path, radiography: Path, covidx: Path, manifest_root: Path
) -> None:
    specs = [
        ActualmedOptions(root=str(actualmed), name="actualmed"),
        Figure1Options(root=str(figure1), name="figure1"),
        KagglePneumoniaOptions(root=str(kaggle), name="kermany"),
        CovidRadiographyOptions(root=str(radiography), name="radiography"),
        CovidxOptions(root=str(covidx), name="covidx"),
        ManifestOptions(root=str(manifest_root), name="mine"),
    ]
    frame = build_manifest(specs, "multiclass")
    check_contract(frame, "multiclass")
    assert frame["source"].value_counts(sort=False).to_dict() == {
        "actualmed": 11,
        "figure1": 7,
        "kermany": 7,
        "radiography": 6,
        "covidx": 10,
        "mine": 11,
    }
    assert labels(frame) == {
        COVID: 3 + 3 + 0 + 2 + 3 + 1,
        NORMAL: 2 + 1 + 3 + 1 + 1 + 1,
        PNEUMONIA: 0 + 1 + 3 + 1 + 1 + 1,
    }
    # Same raw ids in two sources ("P1" / "A1"...) stay apart: ids are prefixed by the source name.
    assert (frame.groupby("patient_id")["source"].nunique() == 1).all()
    assert EXCLUDE_DUPLICATE not in exclusion_summary(frame)


def test_duplicate_bytes_across_sources(actualmed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    (copy / "COVID-19").mkdir(parents=True)
    (copy / "COVID-19" / "same_as_a1.png").write_bytes((actualmed / "images" / "a1.png").read_bytes())
    frame = build_manifest(
        parse_sources(
            [
                {"kind": "actualmed", "root": str(actualmed), "name": "actualmed"},
                {"kind": "folder", "root": str(copy), "name": "copy"},
            ]
        ),
        "binary",
    )
    last = frame.iloc[-1]
    assert (last["source"], last["exclusion_reason"]) == ("copy", EXCLUDE_DUPLICATE)
    assert last["exclusion_detail"] == f"same bytes as {actualmed / 'images' / 'a1.png'}"


# ---------------------------------------------------------------- example configs


def test_example_configs_validate_and_cover_every_public_layout() -> None:
    configs = sorted((PROJECT / "configs").glob("public-*.yaml"))
    kinds: set[str] = set()
    for path in configs:
        config = load_run_config(path)
        kinds |= {source.kind for source in config.data.sources}
        for source in config.data.sources:  # validated by its own kind's options model
            assert type(source) is source_kinds()[source.kind].options, (path.name, source.name)
    assert kinds == set(source_kinds()) - {"folder", "images", "dicom"}  # not public layouts
    combined = load_run_config(PROJECT / "configs" / "public-ieee8023-actualmed.yaml")
    assert [(s.kind, s.root) for s in combined.data.sources] == [
        ("ieee8023", "../shared/datasets/covid-chestxray-dataset"),
        ("actualmed", "../shared/datasets/actualmed-covid-chestxray-dataset"),
    ]


# ---------------------------------------------------------------- every registered kind round-trips a generated tree
#
# A writer lays out a tiny dataset of its kind under `root` and returns what
# build_manifest must find: {path relative to root: (multiclass label, raw patient id)}.

Expected = dict[str, tuple[str, str]]


def _folder_tree(root: Path) -> Expected:
    for relative in ("COVID-19/p1_0.png", "COVID-19/p1_1.png", "normal/p2_0.png", "pneumonia/p3_0.png"):
        image(root / relative)
    return {
        "COVID-19/p1_0.png": (COVID, "p1"),
        "COVID-19/p1_1.png": (COVID, "p1"),
        "normal/p2_0.png": (NORMAL, "p2"),
        "pneumonia/p3_0.png": (PNEUMONIA, "p3"),
    }


def _ieee8023_tree(root: Path) -> Expected:
    rows = [
        {
            "patientid": "1",
            "finding": "COVID-19",
            "view": "PA",
            "modality": "X-ray",
            "folder": "images",
            "filename": "a.png",
        },
        {
            "patientid": "1",
            "finding": "COVID-19",
            "view": "AP",
            "modality": "X-ray",
            "folder": "images",
            "filename": "b.png",
        },
        {
            "patientid": "2",
            "finding": "No Finding",
            "view": "PA",
            "modality": "X-ray",
            "folder": "images",
            "filename": "c.png",
        },
        {
            "patientid": "3",
            "finding": "Pneumonia",
            "view": "PA",
            "modality": "X-ray",
            "folder": "images",
            "filename": "d.png",
        },
    ]
    for row in rows:
        image(root / "images" / row["filename"])
    write_ieee8023(root, rows, encoding="utf-8-sig")
    return {
        "images/a.png": (COVID, "1"),
        "images/b.png": (COVID, "1"),
        "images/c.png": (NORMAL, "2"),
        "images/d.png": (PNEUMONIA, "3"),
    }


def _actualmed_tree(root: Path) -> Expected:
    rows = [
        {"patientid": "A1", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "imagename": "a1.png"},
        {"patientid": "A1", "finding": "COVID-19", "view": "AP", "modality": "X-ray", "imagename": "a1b.png"},
        {"patientid": "A2", "finding": "No finding", "view": "PA", "modality": "X-ray", "imagename": "a2.png"},
    ]
    for row in rows:
        image(root / "images" / row["imagename"])
    write_ieee8023(root, rows, encoding="utf-8-sig")
    return {"images/a1.png": (COVID, "A1"), "images/a1b.png": (COVID, "A1"), "images/a2.png": (NORMAL, "A2")}


def _figure1_tree(root: Path) -> Expected:
    rows = [
        {"patientid": "COVID-00003a", "finding": "COVID-19", "view": "AP", "modality": "X-ray"},
        {"patientid": "COVID-00003b", "finding": "COVID-19", "view": "AP", "modality": "X-ray"},
        {"patientid": "COVID-00005", "finding": "Pneumonia", "view": "PA", "modality": "X-ray"},
        {"patientid": "COVID-00006", "finding": "No finding", "view": "PA", "modality": "X-ray"},
    ]
    for row in rows:
        image(root / "images" / f"{row['patientid']}.png")
    write_ieee8023(root, rows, encoding="utf-8-sig")
    return {
        "images/COVID-00003a.png": (COVID, "COVID-00003"),
        "images/COVID-00003b.png": (COVID, "COVID-00003"),
        "images/COVID-00005.png": (PNEUMONIA, "COVID-00005"),
        "images/COVID-00006.png": (NORMAL, "COVID-00006"),
    }


def _kaggle_pneumonia_tree(root: Path) -> Expected:
    expected = {
        "chest_xray/train/NORMAL/IM-0115-0001.png": (NORMAL, "IM-0115"),
        "chest_xray/test/NORMAL/IM-0115-0002.png": (NORMAL, "IM-0115"),
        "chest_xray/train/PNEUMONIA/person1_bacteria_1.png": (PNEUMONIA, "person1"),
        "chest_xray/val/PNEUMONIA/person2_virus_3.png": (PNEUMONIA, "person2"),
    }
    for relative in expected:
        image(root / relative)
    return expected


def _covid_radiography_tree(root: Path) -> Expected:
    expected = {
        "COVID/images/COVID-1.png": (COVID, "COVID-1"),
        "Normal/images/Normal-1.png": (NORMAL, "Normal-1"),
        "Viral Pneumonia/images/Viral Pneumonia-1.png": (PNEUMONIA, "Viral Pneumonia-1"),
    }
    for relative in expected:
        image(root / relative)
    image(root / "COVID" / "masks" / "COVID-1.png")  # a mask: ignored
    return expected


def _covidx_tree(root: Path) -> Expected:
    for relative in ("train/a.png", "train/b.png", "train/c.png", "test/t1.png"):
        image(root / relative)
    (root / "train.txt").write_text("P1 a.png COVID-19 cohen\nP2 b.png normal rsna\nP3 c.png pneumonia sirm\n")
    (root / "test.txt").write_text("P1 t1.png positive cohen\n")
    return {
        "train/a.png": (COVID, "P1"),
        "train/b.png": (NORMAL, "P2"),
        "train/c.png": (PNEUMONIA, "P3"),
        "test/t1.png": (COVID, "P1"),
    }


def _manifest_tree(root: Path) -> Expected:
    expected = {"x/one.png": (COVID, "m1"), "x/two.png": (NORMAL, "m2"), "y/three.png": (PNEUMONIA, "three")}
    for relative in expected:
        image(root / relative)
    rows = [("x/one.png", "COVID-19", "m1"), ("x/two.png", "normal", "m2"), ("y/three.png", "pneumonia", "")]
    pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(root / "manifest.csv", index=False)
    return expected


def _images_tree(root: Path) -> Expected:
    """An unlabelled drop: files at any depth, no class folders; every row "unlabelled finding"."""
    for relative in ("p1_0.png", "ward/p2_0.png", "ward/2026/p3_0.png"):
        image(root / relative)
    return {"p1_0.png": ("", "p1"), "ward/p2_0.png": ("", "p2"), "ward/2026/p3_0.png": ("", "p3")}


TREES: dict[str, Callable[[Path], Expected]] = {
    "folder": _folder_tree,
    "dicom": dicom_tree,
    "rsna_pneumonia": rsna_tree,
    "images": _images_tree,
    "ieee8023": _ieee8023_tree,
    "actualmed": _actualmed_tree,
    "figure1": _figure1_tree,
    "kaggle_pneumonia": _kaggle_pneumonia_tree,
    "covid_radiography": _covid_radiography_tree,
    "covidx": _covidx_tree,
    "manifest": _manifest_tree,
}


@pytest.mark.parametrize("kind", sorted(source_kinds()))
def test_every_registered_kind_round_trips_a_generated_tree(kind: str, tmp_path: Path) -> None:
    assert kind in TREES, f"no tree writer for source kind {kind!r}: add one to TREES"
    root = tmp_path / kind
    expected = TREES[kind](root)
    frame = source_manifest(root, "multiclass", kind, name="src")
    check_contract(frame, "multiclass")
    # An images source has no labels: batch inference scores its rows, training and evaluation exclude them.
    assert exclusion_summary(frame) == ({"unlabelled finding": len(expected)} if kind == "images" else {})
    found = {
        str(PurePosixPath(uri).relative_to(root.as_posix())): (label, patient)
        for uri, label, patient in zip(frame["uri"], frame["label"], frame["patient_id"], strict=True)
    }
    assert found == {relative: (label, f"src:{patient}") for relative, (label, patient) in expected.items()}
    assert (frame["width"] > 0).all()


# ---------------------------------------------------------------- a kind registered later: one adapter, one options model


class TinyOptions(SourceOptions):
    """Options of the ``tiny`` test layout."""

    kind: Literal["tiny"] = "tiny"
    separator: str = Field("~", description="between the finding and the patient id in a file stem")


def tiny_candidates(root: str, task: str, options: TinyOptions) -> list[dict[str, Any]]:
    """Images ``<finding><separator><patient>.png`` directly in the root."""
    mapping = label_map_for_task(task, options.label_map)
    return [
        candidate(root, relative, *PurePosixPath(relative).stem.split(options.separator, 1), mapping)
        for relative in list_files(root)
    ]


@pytest.fixture
def tiny_kind() -> Iterator[None]:
    register_source("tiny", options=TinyOptions)(tiny_candidates)
    try:
        yield
    finally:
        unregister_source("tiny")


def test_a_kind_registered_later_works_in_a_run_config_and_build_manifest(tiny_kind: None, tmp_path: Path) -> None:
    for stem in ("COVID-19+p1", "COVID-19+p1b", "normal+p2", "pneumonia+p3"):
        image(tmp_path / "tiny" / f"{stem}.png")
    run = yaml.safe_load((PROJECT / "configs" / "quickstart.yaml").read_text())
    run["data"]["sources"] = [{"kind": "tiny", "root": str(tmp_path / "tiny"), "name": "mine", "separator": "+"}]
    config = parse_run_config(run)
    (source,) = config.data.sources
    assert isinstance(source, TinyOptions)
    assert source.separator == "+"
    assert parse_run_config(config.model_dump(mode="json")) == config  # the dump keeps the kind's own options
    frame = build_manifest(config.data.sources, "multiclass")
    assert frame["label"].tolist() == [COVID, COVID, NORMAL, PNEUMONIA]
    assert frame["patient_id"].tolist() == ["mine:p1", "mine:p1b", "mine:p2", "mine:p3"]
    assert "\ntiny: Images `<finding><separator><patient>.png` directly in the root." in describe_sources()
    assert "    separator: str, default '~'\n" in describe_sources()
    run["data"]["sources"][0]["manifest_file"] = "m.csv"  # another kind's option
    with pytest.raises(
        ConfigError, match=r"data\.sources\.0\.manifest_file: option 'manifest_file' does not apply to kind 'tiny'"
    ):
        parse_run_config(run)


def test_an_unregistered_kind_is_refused_listing_the_valid_ones(tmp_path: Path) -> None:
    run = yaml.safe_load((PROJECT / "configs" / "quickstart.yaml").read_text())
    run["data"]["sources"] = [{"kind": "tiny", "root": str(tmp_path), "name": "mine"}]
    with pytest.raises(
        ConfigError, match=r"data\.sources\.0\.kind: unknown source kind 'tiny'; valid kinds: \['actualmed', "
    ):
        parse_run_config(run)
