"""DICOM inputs (issue 13, "DICOM"): pixels as viewers show them, tags, exclusions, sources, serving, privacy.

Every DICOM file is generated with pydicom (tests/dicom_factory.py): MONOCHROME1 and 2, 12 and 16
bits with rescale, a window, a VOI LUT, RLE Lossless and JPEG 2000 transfer syntaxes, a structured
report, a presentation state, missing tags. Nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components import dicom, serving
from components.config import ConfigError, parse_run_config
from components.dicom_sources import HEAD_BYTES
from components.image_info import describe_image_bytes, perceptual_hash
from components.imaging import ImageDecodeError, decode_image_bytes, encode_png
from components.labels import (
    EXCLUDE_DICOM_NOT_IMAGE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_MULTI_FRAME,
    EXCLUDE_NO_PIXEL_DATA,
    EXCLUDE_NOT_DICOM,
    EXCLUDE_NOT_NORMAL,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNLABELLED,
)
from components.manifest import exclusion_summary, included
from components.privacy import KEY_VARIABLE, pseudonym, pseudonymization_key, pseudonymize_manifest, with_privacy
from tests import dicom_factory as factory
from tests.factories import source_manifest
from tests.test_sources import check_contract

KEY = "a-test-key-of-32-characters-long"


def windowed(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The expected 8-bit image: `values` mapped linearly from [low, high] onto 0..255, clipped."""
    return np.clip(np.round((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- detection and pixels


@pytest.mark.parametrize("name", ["x.dcm", "IM0001", "scan.png"])
def test_dicom_is_detected_by_content_whatever_its_name(tmp_path: Path, name: str) -> None:
    path = factory.write(tmp_path / name, factory.dicom_bytes())
    data = path.read_bytes()
    assert dicom.is_dicom(data)
    assert describe_image_bytes(data)["exclusion_reason"] == ""
    assert decode_image_bytes(data, name).shape == (64, 64)


def test_png_and_text_are_not_dicom() -> None:
    assert not dicom.is_dicom(encode_png(np.zeros((8, 8), np.uint8)))
    assert not dicom.is_dicom(b"x" * 200)


def test_without_a_window_the_robust_window_keeps_12_bit_anatomy_despite_a_burned_in_label() -> None:
    pixels = factory.anatomy(rows=128, columns=128, bits=12)
    pixels[:4, :16] = 4095  # a burned-in label at full scale, 0.4 % of the pixels
    gray = dicom.decode_dicom(factory.dicom_bytes(pixels))
    assert len(np.unique(gray[8:, :])) >= 200


def test_16_bit_with_rescale_and_a_label_at_65535_keeps_the_anatomy() -> None:
    pixels = factory.anatomy(rows=128, columns=128, bits=12).astype(np.uint16) * 4  # 12-bit anatomy in 16 bits
    pixels[:4, :16] = 65535  # 0.4 % of the pixels
    gray = dicom.decode_dicom(factory.dicom_bytes(pixels, bits_stored=16, rescale=(0.5, -100.0)))
    assert len(np.unique(gray[8:, :])) >= 200


def test_monochrome1_is_inverted_to_monochrome2() -> None:
    pixels = factory.anatomy()
    bright_bone = dicom.decode_dicom(factory.dicom_bytes(pixels, photometric="MONOCHROME2"))
    inverted = dicom.decode_dicom(factory.dicom_bytes(pixels, photometric="MONOCHROME1"))
    assert np.array_equal(inverted, 255 - bright_bone)


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    values = factory.anatomy().astype(np.float64)  # modality values 409..3685
    slope, intercept = 2.0, -1000.0
    stored = np.round((values - intercept) / slope).astype(np.uint16)
    gray = dicom.decode_dicom(factory.dicom_bytes(stored, rescale=(slope, intercept), window=(2000.0, 2000.0)))
    # DICOM LINEAR window on modality values, c = 2000, w = 2000: [c - 0.5 - (w - 1) / 2, ...] -> 0..255.
    low, high = 2000 - 0.5 - 999.5, 2000 - 0.5 + 999.5
    assert np.abs(gray.astype(int) - windowed(values, low, high).astype(int)).max() <= 1


def test_window_center_and_width_are_applied() -> None:
    values = factory.anatomy()
    gray = dicom.decode_dicom(factory.dicom_bytes(values, window=(2048.0, 1024.0)))
    low, high = 2048 - 0.5 - 511.5, 2048 - 0.5 + 511.5
    assert np.abs(gray.astype(int) - windowed(values, low, high).astype(int)).max() <= 1
    assert (gray[values <= low] == 0).all()
    assert (gray[values > high] == 255).all()


def test_a_voi_lut_sequence_wins_over_the_window() -> None:
    values = factory.anatomy()
    lut = (np.arange(4096) ** 2 // 256).astype(int)  # a non-linear LUT, outputs 0..65520 (16 bits)
    gray = dicom.decode_dicom(factory.dicom_bytes(values, voi_lut=lut, window=(100.0, 10.0)))
    expected = windowed(lut[values], 0, 65535)
    assert np.abs(gray.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("compression", ["rle", "j2k"])
def test_compressed_transfer_syntaxes_decode_to_the_same_image(compression: str) -> None:
    pixels = factory.anatomy(seed=7)
    plain = dicom.decode_dicom(factory.dicom_bytes(pixels))
    data = factory.dicom_bytes(pixels, compression=compression)
    assert np.array_equal(dicom.decode_dicom(data), plain)


def test_describe_gives_the_file_columns_of_the_windowed_image() -> None:
    data = factory.dicom_bytes(factory.anatomy(rows=80, columns=96), bits_stored=12)
    described = describe_image_bytes(data)
    gray = dicom.decode_dicom(data)
    from PIL import Image

    assert (described["width"], described["height"]) == (96, 80)
    assert described["mode"] == "L"
    assert described["bit_depth"] == 12
    assert described["phash"] == perceptual_hash(Image.fromarray(gray))
    assert described["gray_levels"] == len(np.unique(gray))
    assert described["sha256"] != ""


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (factory.structured_report(), EXCLUDE_DICOM_NOT_IMAGE, "Basic Text SR Storage"),
        (factory.presentation_state(), EXCLUDE_DICOM_NOT_IMAGE, "a presentation state"),
        (factory.to_bytes(factory.dataset(None)), EXCLUDE_NO_PIXEL_DATA, "without Pixel Data"),
        (
            factory.dicom_bytes(np.stack([factory.anatomy(), factory.anatomy(seed=1)]), frames=2),
            EXCLUDE_MULTI_FRAME,
            "2 frames",
        ),
        (factory.dicom_bytes(modality="CT"), EXCLUDE_NOT_XRAY, "Modality CT"),
        (factory.dicom_bytes()[:-2000], EXCLUDE_TRUNCATED, "less than expected"),
    ],
    ids=["structured-report", "presentation-state", "no-pixel-data", "multi-frame", "ct", "truncated"],
)
def test_unusable_dicom_files_are_described_with_their_reason(data: bytes, reason: str, detail: str) -> None:
    described = describe_image_bytes(data)
    assert described["exclusion_reason"] == reason
    assert detail in described["exclusion_detail"]
    assert described["sha256"] == ""
    with pytest.raises(ImageDecodeError, match=r"^row 2: cannot decode DICOM"):
        decode_image_bytes(data, "row 2")


def test_tags_are_read_and_missing_ones_are_blank() -> None:
    full = dicom.dicom_tags(dicom.read_dataset(factory.dicom_bytes(age="006M", sex="M", view="AP")))
    assert (full.patient_id, full.view, full.age_years, full.sex, full.modality) == ("PAT001", "AP", 0.5, "M", "DX")
    bare = factory.dicom_bytes(patient_id=None, view=None, age=None, sex=None, modality=None)
    tags = dicom.dicom_tags(dicom.read_dataset(bare))
    assert (tags.patient_id, tags.view, tags.age_years, tags.sex, tags.modality) == ("", "", None, "", "")
    assert dicom.decode_dicom(bare).shape == (64, 64)  # a blank modality is accepted


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("365D", 365 / 365.25), ("51", 51.0), ("", None)],
)
def test_dicom_ages_are_read_in_years(text: str, years: float | None) -> None:
    assert dicom.age_in_years(text) == years


def test_the_header_is_read_from_the_head_or_the_whole_file_when_longer() -> None:
    small = factory.dicom_bytes()
    assert dicom.header_tags(small[:4096], whole=False).has_pixels
    ds = factory.dataset(factory.anatomy())
    ds.add_new(0x00091010, "OB", b"\0" * (2 * HEAD_BYTES))  # a large private element before the pixels
    big = factory.to_bytes(ds)
    assert dicom.header_tags(big[:HEAD_BYTES], whole=False) is None
    assert dicom.header_tags(big, whole=True).patient_id == "PAT001"


# ---------------------------------------------------------------- source kinds


def dicom_drop(root: Path) -> None:
    """A PACS-style export: class folders, odd names, and the things such exports hold besides images."""
    factory.write(root / "COVID-19" / "IM0001", factory.dicom_bytes(factory.anatomy(seed=1), patient_id="P1"))
    factory.write(root / "COVID-19" / "IM0002", factory.dicom_bytes(factory.anatomy(seed=2), patient_id="P1"))
    factory.write(
        root / "normal" / "a.dcm",
        factory.dicom_bytes(factory.anatomy(seed=3), patient_id="P2", photometric="MONOCHROME1", compression="rle"),
    )
    factory.write(
        root / "pneumonia" / "b.dcm",
        factory.dicom_bytes(factory.anatomy(seed=4), patient_id="P3", age="007Y", sex="O", compression="j2k"),
    )
    factory.write(root / "normal" / "lat.dcm", factory.dicom_bytes(factory.anatomy(seed=5), patient_id="P2", view="LL"))
    factory.write(root / "normal" / "sr.dcm", factory.structured_report(patient_id="P2"))
    factory.write(root / "normal" / "ct.dcm", factory.dicom_bytes(factory.anatomy(seed=6), modality="CT"))
    factory.write(root / "normal" / "notes.bin", b"not a dicom file at all\n")
    factory.write(root / "README.md", b"# export\n")  # metadata: an excluded row, not read


def test_dicom_source_labelled_by_folder_counts_exactly(tmp_path: Path) -> None:
    dicom_drop(tmp_path / "drop")
    frame = source_manifest(tmp_path / "drop", "multiclass", "dicom", name="pacs")
    check_contract(frame, "multiclass")
    assert len(frame) == 9
    assert included(frame)["label"].value_counts().to_dict() == {"COVID-19": 2, "normal": 1, "pneumonia": 1}
    assert exclusion_summary(frame) == {
        EXCLUDE_NOT_DICOM: 2,  # notes.bin (read: text) and README.md (metadata, listed, not read)
        EXCLUDE_DICOM_NOT_IMAGE: 1,
        EXCLUDE_NOT_XRAY: 1,
        EXCLUDE_LATERAL: 1,
    }
    rows = frame.set_index(frame["uri"].str.rsplit("/", n=1).str[-1])
    assert rows.loc["IM0001", "patient_id"] == "pacs:P1"
    assert rows.loc["IM0002", "patient_id"] == "pacs:P1"
    assert rows.loc["b.dcm", "age_group"] == "pediatric"
    assert rows.loc["a.dcm", "age_group"] == "adult"
    assert rows.loc["a.dcm", "view"] == "PA"
    assert rows.loc["a.dcm", "bit_depth"] == 12
    assert rows.loc["a.dcm", "sex"] == "F"  # PatientSex
    assert rows.loc["b.dcm", "sex"] == ""  # "O" (other) is not recorded as either
    assert rows.loc["notes.bin", "exclusion_detail"] == "expected a DICOM file (DICM at byte 128); found text"
    assert rows.loc["README.md", "exclusion_detail"] == "a .md file beside the images (metadata, not read)"
    assert rows.loc["lat.dcm", "exclusion_detail"] == (
        "view 'LL': a lateral projection; the models read frontal (PA/AP) radiographs"
    )


@pytest.mark.parametrize(
    ("key", "column", "keys", "counts"),
    [
        # (normal images used, CSV rows matching no file, files the CSV does not name and nothing else excludes)
        ("file_name", "file_name", ["COVID-19/IM0001", "IM0002", "a"], (1, 0, 1)),  # path, name or stem
        ("patient_id", "PatientID", ["P1", "P1", "P2", "P9"], (1, 1, 1)),  # P2: a.dcm (lat lateral, sr no image)
        ("sop_instance_uid", "SOPInstanceUID", None, (0, 1, 2)),
    ],
)
def test_dicom_source_labelled_by_a_csv(
    tmp_path: Path, key: str, column: str, keys: list[str] | None, counts: tuple[int, int, int]
) -> None:
    root = tmp_path / "drop"
    dicom_drop(root)
    if keys is None:  # SOP Instance UIDs of two files, and one that matches none
        keys = [
            dicom.dicom_tags(dicom.read_dataset((root / "COVID-19" / name).read_bytes())).sop_instance_uid
            for name in ("IM0001", "IM0002")
        ] + ["1.2.3.4"]
    # The last two keys are normal (the last matches no file under patient_id and sop_instance_uid);
    # patient_id's repeated P1 row gives the same label again: one label.
    diagnoses = ["COVID-19"] * (len(keys) - 2) + ["normal", "normal"] if key == "patient_id" else []
    diagnoses = diagnoses or ["COVID-19", "COVID-19", "normal"]
    labels = pd.DataFrame({column: keys, "diagnosis": diagnoses})
    labels.to_csv(root / "labels.csv", index=False)
    frame = source_manifest(root, "multiclass", "dicom", labels_csv="labels.csv", key=key, label_column="diagnosis")
    check_contract(frame, "multiclass")
    normal, missing, unlabelled = counts
    used = included(frame)["label"].value_counts()
    assert used.get("COVID-19", 0) == 2
    assert used.get("normal", 0) == normal
    assert "labels.csv" not in " ".join(frame["uri"])  # the CSV itself is not a row
    assert (frame["exclusion_reason"] == EXCLUDE_MISSING_FILE).sum() == missing
    assert (frame["exclusion_reason"] == EXCLUDE_UNLABELLED).sum() == unlabelled
    missing_details = frame.loc[frame["exclusion_reason"] == EXCLUDE_MISSING_FILE, "exclusion_detail"].tolist()
    assert missing_details == [f"labels.csv row {len(keys)}: its {key} matches no DICOM file"] * missing


def rsna_drop(root: Path) -> None:
    """RSNA layout: 2 normal, 1 opacity (two boxes), 1 not normal, 1 listed without image, 1 image not listed."""
    patients = {"n1": "Normal", "n2": "Normal", "o1": "Lung Opacity", "x1": "No Lung Opacity / Not Normal"}
    for seed, patient in enumerate([*patients, "extra"]):
        factory.write(
            root / "stage_2_train_images" / f"{patient}.dcm",
            factory.dicom_bytes(factory.anatomy(seed=seed), patient_id=patient, age="58", view="AP"),
        )
    factory.write(root / "stage_2_test_images" / "t1.dcm", factory.dicom_bytes(patient_id="t1"))
    targets = {"n1": 0, "n2": 0, "o1": 1, "x1": 0, "gone": 0}
    lines = ["patientId,x,y,width,height,Target"]
    for patient, target in targets.items():
        lines.append(f"{patient},{'10,10,5,5' if target else ',,,'},{target}")
    lines.append("o1,30,30,5,5,1")
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    classes = {**patients, "gone": "Normal"}
    (root / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n" + "".join(f"{p},{c}\n" for p, c in classes.items()) + "o1,Lung Opacity\n"
    )


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_rsna_pneumonia_source_counts_exactly(tmp_path: Path, task: str) -> None:
    rsna_drop(tmp_path / "rsna")
    frame = source_manifest(tmp_path / "rsna", task, "rsna_pneumonia", name="rsna")
    check_contract(frame, task)
    assert len(frame) == 6  # five patientIds of the CSV, one image it does not name; test images not listed
    used = included(frame)["label"].value_counts().to_dict()
    assert used == ({"normal": 2, "pneumonia": 1} if task == "multiclass" else {"non-COVID": 3})
    assert exclusion_summary(frame) == {EXCLUDE_MISSING_FILE: 1, EXCLUDE_NOT_NORMAL: 1, EXCLUDE_UNLABELLED: 1}
    assert set(included(frame)["view"]) == {"AP"}
    assert set(included(frame)["age_group"]) == {"adult"}


def test_rsna_not_normal_can_be_mapped_by_the_label_map(tmp_path: Path) -> None:
    rsna_drop(tmp_path / "rsna")
    frame = source_manifest(
        tmp_path / "rsna", "binary", "rsna_pneumonia", label_map={"No Lung Opacity / Not Normal": "non-COVID"}
    )
    assert EXCLUDE_NOT_NORMAL not in exclusion_summary(frame)
    assert len(included(frame)) == 4


@pytest.mark.slow
def test_dicom_and_rsna_sources_from_s3_count_the_same(s3_env, tmp_path: Path) -> None:
    bucket = Path(s3_env["dir"]) / "dicom-drops"
    dicom_drop(bucket / "pacs")
    rsna_drop(bucket / "rsna")
    time.sleep(s3_env["settle_s"])
    for kind, folder in (("dicom", "pacs"), ("rsna_pneumonia", "rsna")):
        local = source_manifest(bucket / folder, "multiclass", kind, name="src")
        remote = source_manifest(f"s3://dicom-drops/{folder}", "multiclass", kind, name="src")
        assert exclusion_summary(remote) == exclusion_summary(local)
        assert remote["label"].tolist() == local["label"].tolist()
        assert remote["sha256"].tolist() == local["sha256"].tolist()
        assert remote["patient_id"].tolist() == local["patient_id"].tolist()


# ---------------------------------------------------------------- serving


def test_serving_decodes_base64_dicom_as_the_windowed_png() -> None:
    data = factory.dicom_bytes(factory.anatomy(rows=70, columns=90), photometric="MONOCHROME1", compression="rle")
    png = encode_png(dicom.decode_dicom(data))
    column = pd.Series([serving.encode_image_bytes(data), serving.encode_image_bytes(png)])
    batch = serving.decode_batch(column, 32)
    assert np.array_equal(batch[0], batch[1])
    assert serving.declared_size(data, "row 0") == (90, 70)


def test_serving_names_a_dicom_row_that_is_not_an_image() -> None:
    column = pd.Series([serving.encode_image_bytes(factory.structured_report())])
    with pytest.raises(serving.InvalidRowsError, match="row 0: cannot decode DICOM .*structured report"):
        serving.decode_batch(column, 32)


def test_serving_refuses_a_lateral_dicom_as_ingest_excludes_it() -> None:
    lateral = factory.dicom_bytes(factory.anatomy(seed=5), view="LL")
    column = pd.Series(
        [serving.encode_image_bytes(factory.dicom_bytes(factory.anatomy(seed=6))), serving.encode_image_bytes(lateral)]
    )
    with pytest.raises(serving.InvalidRowsError, match=r"row 1: a lateral view \(ViewPosition LL\)"):
        serving.decode_batch(column, 32)


def test_the_logged_model_requires_pydicom_and_its_decoders() -> None:
    names = {requirement.split("==")[0] for requirement in serving.pinned_requirements()}
    assert {"pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"} <= names


@pytest.mark.slow
def test_the_served_model_gives_a_dicom_the_probabilities_of_its_windowed_png(tmp_path: Path) -> None:
    import mlflow

    from tests.servers import sqlite_mlflow
    from tests.test_serving import IMAGE_SIZE, brightness_model

    with sqlite_mlflow(tmp_path / "mlflow", "dicom-serving") as store:
        path = tmp_path / "multiclass.keras"
        brightness_model(3).save(path)
        with mlflow.start_run(experiment_id=store["experiment_id"]):
            info = serving.log_pyfunc_model(str(path), serving.build_contract("multiclass", "brightness", IMAGE_SIZE))
        model = mlflow.pyfunc.load_model(info.model_uri)
        images = [
            factory.dicom_bytes(factory.anatomy(seed=seed, rows=64, columns=80), photometric=photometric, **extra)
            for seed, photometric, extra in (
                (1, "MONOCHROME2", {}),
                (2, "MONOCHROME1", {"compression": "j2k"}),
                (3, "MONOCHROME2", {"window": (1500.0, 800.0), "rescale": (1.0, -200.0)}),
            )
        ]
        pngs = [encode_png(dicom.decode_dicom(data)) for data in images]
        as_dicom = model.predict(pd.DataFrame({"image": [serving.encode_image_bytes(data) for data in images]}))
        as_png = model.predict(pd.DataFrame({"image": [serving.encode_image_bytes(data) for data in pngs]}))
    probabilities = [column for column in as_png.columns if column.startswith("prob_")]
    assert len(probabilities) == 3
    assert np.array_equal(as_dicom[probabilities].to_numpy(), as_png[probabilities].to_numpy())
    assert as_dicom["label"].tolist() == as_png["label"].tolist()


# ---------------------------------------------------------------- privacy


def test_pseudonyms_are_keyed_stable_and_keep_one_patient_together() -> None:
    key = pseudonymization_key({KEY_VARIABLE: KEY})
    assert pseudonym("P1", key) == pseudonym("P1", key)
    assert pseudonym("P1", key) != pseudonym("P2", key)
    assert pseudonym("P1", key) != pseudonym("P1", b"another-key-of-enough-length")
    assert len(pseudonym("P1", key)) == 17
    frame = pd.DataFrame({"source": ["a", "a", "b"], "patient_id": ["a:P1", "a:P1", "b:P1"]})
    hidden = pseudonymize_manifest(frame, key)
    assert hidden["patient_id"].tolist() == [f"a:{pseudonym('P1', key)}"] * 2 + [f"b:{pseudonym('P1', key)}"]
    assert frame["patient_id"].tolist() == ["a:P1", "a:P1", "b:P1"]  # not changed in place


@pytest.mark.parametrize(("value", "message"), [(None, "is not set"), ("short", "at least 16")])
def test_pseudonymizing_without_a_usable_key_is_a_config_error(value: str | None, message: str) -> None:
    environ = {} if value is None else {KEY_VARIABLE: value}
    with pytest.raises(ConfigError, match=message):
        pseudonymization_key(environ)


def test_with_privacy_follows_the_run_config(monkeypatch, tmp_path: Path) -> None:
    run = {
        "name": "privacy",
        "task": "multiclass",
        "data": {"sources": [{"kind": "dicom", "root": str(tmp_path), "name": "pacs"}]},
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
    }
    frame = pd.DataFrame({"source": ["pacs"], "patient_id": ["pacs:P1"]})
    assert with_privacy(frame, parse_run_config(run).data)["patient_id"].tolist() == ["pacs:P1"]
    run["data"]["pseudonymize_patient_ids"] = True
    data = parse_run_config(run).data
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match=KEY_VARIABLE):
        with_privacy(frame, data)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    assert with_privacy(frame, data)["patient_id"].tolist() == [f"pacs:{pseudonym('P1', KEY.encode())}"]


def _files_holding(folder: Path, needles: list[str]) -> dict[str, list[str]]:
    """{needle: files under folder whose bytes hold it (UTF-8 or UTF-16-LE, any case)}."""
    found: dict[str, list[str]] = {needle: [] for needle in needles}
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes().lower()
        for needle in needles:
            lowered = needle.lower()
            if lowered.encode() in data or lowered.encode("utf-16-le") in data:
                found[needle].append(str(path))
    return {needle: paths for needle, paths in found.items() if paths}


@pytest.mark.slow
def test_no_identifying_tag_reaches_any_output_of_a_run(local_stack, monkeypatch, tmp_path: Path, capsys) -> None:
    from tests.test_training_pipeline import run_cxr, tiny_config

    drop = tmp_path / "hospital"
    patients = [f"MRN{number:06d}" for number in (101, 202, 303)]
    for index, patient in enumerate(patients):
        for label, photometric in (
            ("normal", "MONOCHROME2"),
            ("pneumonia", "MONOCHROME1"),
            ("COVID-19", "MONOCHROME2"),
        ):
            factory.write(
                drop / label / f"img{index}.dcm",
                factory.dicom_bytes(
                    factory.anatomy(rows=96, columns=96, seed=index * 3 + len(label)),
                    photometric=photometric,
                    patient_id=patient,
                ),
            )
    config = tiny_config(tmp_path / "synthetic", name="privacy-test")
    config["data"]["sources"].append({"kind": "dicom", "root": str(drop), "name": "hospital"})
    config["data"]["pseudonymize_patient_ids"] = True
    config["evaluation"] = {"external_sources": ["hospital"]}
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    before = time.time()
    code = run_cxr(local_stack, "validate", config, tmp_path, "--summary-json", str(tmp_path / "summary.json"))
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["class_by_external_source"]["totals"] == {"hospital": 9}

    needles = [*factory.IDENTIFYING.values(), "Testperson", "Wilhelmina", "1941-12-31", *patients, KEY]
    assert _files_holding(Path(local_stack.workdir), needles) == {}
    assert _files_holding(tmp_path / "summary.json", needles) == {}
    for needle in needles:
        assert needle not in out.out
        assert needle not in out.err
    written = [
        path for path in Path(local_stack.workdir).rglob("*") if path.is_file() and path.stat().st_mtime >= before
    ]
    assert written  # the search covered what this run wrote (manifest, reports, MLflow store, ZenML artifacts)
    # ... and can see inside them: the pseudonyms that replaced the ids are found where the ids would be.
    hidden = f"hospital:{pseudonym(patients[0], KEY.encode())}"
    holding = _files_holding(Path(local_stack.workdir), [hidden]).get(hidden, [])
    assert any("/ingest_data/manifest/" in path for path in holding), holding  # the manifest artifact (Parquet)
    encoded = base64.b64encode(factory.NAME.encode()).decode()
    assert _files_holding(Path(local_stack.workdir), [encoded]) == {}


def test_a_missing_pseudonymization_key_stops_before_the_pipeline(tmp_path: Path, monkeypatch, capsys) -> None:
    from cxr.cli import main

    dicom_drop(tmp_path / "drop")
    config = {
        "name": "no-key",
        "task": "multiclass",
        "data": {
            "sources": [{"kind": "dicom", "root": str(tmp_path / "drop"), "name": "pacs"}],
            "pseudonymize_patient_ids": True,
        },
        "backbones": [{"name": "MobileNet", "alpha": 0.25, "image_size": 64, "weights": "none"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert main(["--workdir", str(tmp_path / "work"), "validate", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith(f"error: data.pseudonymize_patient_ids is true but {KEY_VARIABLE} is not set")
    )
    assert "ingest_data" not in captured.out + captured.err  # no step started
