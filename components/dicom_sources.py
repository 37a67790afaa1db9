"""The DICOM source kinds: ``dicom`` (a folder or S3 prefix of DICOM files) and ``rsna_pneumonia``.

Registered with components.sources.register_source like every other kind
(components/__init__.py imports this module, so the kinds are known wherever
components.sources is). Both list their files through components.storage and
read each file's header, its first HEAD_BYTES (a ranged GET on S3; the whole
file when the header is longer), for the tags of components.dicom.DicomTags:
the patient id (PatientID), the view (ViewPosition; lateral views are
excluded as in every source), the age group (PatientAge) and what says a file
is unusable before it is decoded (non-image SOP class, no pixel data, not
projection radiography, multi-frame: excluded rows with their reasons, never
read again). The pixels are read once more when the manifest describes the
file (components.image_info dispatches DICOM bytes to components.dicom).

- ``dicom``: every file below ``root`` at any depth, detected by content
  (``DICM`` at byte 128), whatever its name (``IM0001``, ``x.dcm``). A file
  that is not DICOM is an excluded row ("not a DICOM file") whose detail says
  what it holds; metadata beside the images (``*.csv``, ``*.txt``, ``*.md``,
  ``*.json``, ``*.xlsx``, ``*.xls``, ``*.pdf``) is not listed. Labels come from
  a CSV (``labels_csv``, relative to root) keyed by ``sop_instance_uid``
  (SOPInstanceUID), ``file_name`` (the path relative to root, the file name,
  or its stem) or ``patient_id`` (PatientID: every image of the patient takes
  the row's label), ``label_column`` holding the finding; or, without a CSV,
  from the first folder below root (``root/<finding>/.../<file>``, as a
  ``folder`` source; a file directly in root is unlabelled). A CSV row that
  matches no file is an excluded row (missing file); a file the CSV does not
  name is unlabelled. Patient id: PatientID; a file without one is its own
  patient (``file:<path>``; not the StudyInstanceUID, which would split the
  studies of one patient).
- ``rsna_pneumonia``: the RSNA Pneumonia Detection Challenge (Kaggle, 2018):
  ``stage_2_train_images/<patientId>.dcm``, ``stage_2_train_labels.csv``
  (``patientId``, a box, ``Target``) and ``stage_2_detailed_class_info.csv``
  (``patientId``, ``class``). One row per patientId (one image each; its box
  rows are merged). Classes: ``Normal`` -> normal, ``Lung Opacity`` ->
  pneumonia (this layout's own finding, components.labels.LAYOUT_LABEL_MAPS),
  ``No Lung Opacity / Not Normal`` excluded ("not normal, no lung opacity":
  abnormal films that are neither class) unless the source's label_map names
  it. ``stage_2_test_images`` (no labels) is not listed; an image of the train
  folder the CSV does not name is unlabelled.

Privacy: no identifying tag is read (components.dicom). File names are kept
as they are: a drop whose file names carry patient names must be renamed
before it is ingested. ``data.pseudonymize_patient_ids`` (components.privacy)
replaces patient ids by keyed hashes after the manifest is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field

from components.candidates import UNKNOWN_VIEW, SourceError, age_group_from_age, candidate, read_metadata_csv
from components.dicom import DicomError, DicomTags, header_tags, is_dicom, usability_problem
from components.labels import EXCLUDE_NOT_DICOM, EXCLUDE_NOT_NORMAL, normalize_finding
from components.sources import DefaultView, SourceOptions, _task_map, register_source
from components.storage import (
    MissingFileError,
    child_uri,
    describe_content,
    is_s3_uri,
    list_files,
    read_bytes,
    read_head,
)

__all__ = [
    "HEAD_BYTES",
    "DicomOptions",
    "RsnaPneumoniaOptions",
    "dicom_candidates",
    "rsna_pneumonia_candidates",
]

# Bytes read for a file's header: the tags before Pixel Data fit in a few KB in radiographs;
# a longer header (an embedded overlay, a large private block) makes the whole file read.
HEAD_BYTES = 64 * 1024
# Header reads in flight: the reads are I/O (S3 round trips), parsing a header takes about 1 ms.
_HEADER_THREADS = 16
# Files beside the images that are metadata, not images: not listed by a dicom source.
METADATA_SUFFIXES = frozenset({".csv", ".txt", ".md", ".json", ".xlsx", ".xls", ".pdf"})
_EXPECTED_DICOM = "expected a DICOM file (DICM at byte 128)"


@dataclass(frozen=True)
class _Header:
    """What a file's header says: its tags, or why it is not a usable DICOM image (reason, detail)."""

    tags: DicomTags | None
    problem: tuple[str, str] | None


def _read_header(uri: str) -> _Header:
    try:
        head = read_head(uri, HEAD_BYTES)
    except MissingFileError as error:
        return _Header(None, ("", str(error)))  # gone since the listing: the describe pass says so
    if not is_dicom(head):
        return _Header(None, (EXCLUDE_NOT_DICOM, f"{_EXPECTED_DICOM}; found {describe_content(head)}"))
    try:
        tags = header_tags(head, whole=len(head) < HEAD_BYTES)
        if tags is None:
            tags = header_tags(read_bytes(uri), whole=True)
    except DicomError as error:
        return _Header(None, (error.reason, f"DICOM: {error.detail}"))
    assert tags is not None  # whole=True always gives tags or raises
    problem = usability_problem(tags)
    return _Header(tags, None if problem is None else (problem[0], f"DICOM: {problem[1]}"))


def read_headers(root: str, relatives: Sequence[str]) -> list[_Header]:
    """The headers of files named relative to a source root, read in parallel threads.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        relatives: Paths relative to `root`.

    Returns:
        One header per path, in order.

    Raises:
        StorageError: A file exists but cannot be read (access denied...).
    """
    uris = [child_uri(root, relative) for relative in relatives]
    if len(uris) <= 1 or not is_s3_uri(root) and len(uris) < 64:
        return [_read_header(uri) for uri in uris]
    with ThreadPoolExecutor(max_workers=_HEADER_THREADS, thread_name_prefix="dicom_header") as pool:
        return list(pool.map(_read_header, uris))


def _age_group(tags: DicomTags | None) -> str:
    return "" if tags is None or tags.age_years is None else age_group_from_age(tags.age_years)


def _dicom_candidate(
    root: str,
    relative: str,
    finding: str,
    patient_id: str,
    mapping: Mapping[str, str | None],
    header: _Header,
    default_view: str,
    detail: str = "",
    reasons: Sequence[str] = (),
) -> dict[str, Any]:
    """A candidate of a file known by its content: view and age from its tags, exclusions from its header."""
    tags = header.tags
    reason, problem_detail = header.problem or ("", "")
    row = candidate(
        root,
        relative,
        finding,
        patient_id,
        mapping,
        view=(tags.view if tags is not None and tags.view else default_view),
        age_group=_age_group(tags),
        sex=tags.sex if tags is not None else "",
        reasons=[*reasons, reason],
        read=not reason,
        any_name=True,
    )
    row["detail"] = row["detail"] or problem_detail or detail
    return row


def _file_patient(tags: DicomTags | None, relative: str) -> str:
    return tags.patient_id if tags is not None and tags.patient_id else f"file:{relative}"


# ---------------------------------------------------------------- dicom

_KEY_COLUMNS = {
    "sop_instance_uid": ("sop_instance_uid", "SOPInstanceUID"),
    "file_name": ("file_name", "filename", "file", "path"),
    "patient_id": ("patient_id", "PatientID", "patientId", "patientid"),
}


class DicomOptions(SourceOptions):
    """Options of a ``dicom`` source."""

    kind: Literal["dicom"] = "dicom"
    labels_csv: str | None = Field(
        None,
        description="CSV of labels relative to root, one row per key (null: the first folder below root is "
        "the finding, as in a folder source)",
    )
    key: Literal["sop_instance_uid", "file_name", "patient_id"] = Field(
        "file_name",
        description="what a labels_csv row names: sop_instance_uid (SOPInstanceUID), file_name (path relative "
        "to root, file name or stem) or patient_id (PatientID: every image of the patient)",
    )
    key_column: str | None = Field(
        None,
        description="the labels_csv column holding the key (null: the key's name, or SOPInstanceUID, "
        "filename / file / path, PatientID / patientId)",
    )
    label_column: str = Field("label", description="the labels_csv column holding the finding")
    default_view: DefaultView = UNKNOWN_VIEW


def _labels(root: str, options: DicomOptions) -> tuple[dict[str, tuple[str, int]], str]:
    """{key value: (finding, CSV row)} of the labels CSV, and the CSV's name for details."""
    assert options.labels_csv is not None
    uri = child_uri(root, options.labels_csv)
    table = read_metadata_csv(uri, (), "dicom labels")
    candidates = (options.key_column,) if options.key_column else _KEY_COLUMNS[options.key]
    key_column = next((column for column in candidates if column in table.columns), None)
    if key_column is None or options.label_column not in table.columns:
        missing = [] if key_column else [" or ".join(repr(c) for c in candidates)]
        missing += [] if options.label_column in table.columns else [repr(options.label_column)]
        raise SourceError(
            f"{uri}: missing column(s) {', '.join(missing)} (key {options.key}); found {list(table.columns)}"
        )
    labels: dict[str, tuple[str, int]] = {}
    for number, (key, finding) in enumerate(zip(table[key_column], table[options.label_column], strict=True), 1):
        key = key.strip()
        if not key:
            continue
        if key in labels and normalize_finding(labels[key][0]) != normalize_finding(finding):
            raise SourceError(
                f"{uri}: rows {labels[key][1]} and {number} give the same {key_column} two labels "
                f"({labels[key][0]!r}, {finding!r})"
            )
        labels.setdefault(key, (finding, number))
    return labels, options.labels_csv


def _file_keys(relative: str, tags: DicomTags | None, key: str) -> tuple[str, ...]:
    if key == "file_name":
        path = PurePosixPath(relative)
        return (relative, path.name, path.stem)
    if tags is None:
        return ()
    return (tags.sop_instance_uid,) if key == "sop_instance_uid" else (tags.patient_id,)


def _metadata_row(root: str, relative: str, mapping: Mapping[str, str | None]) -> dict[str, Any]:
    """The excluded row of a metadata file beside the images (by its suffix; never read)."""
    row = candidate(
        root, relative, "", f"file:{relative}", mapping, reasons=[EXCLUDE_NOT_DICOM], read=False, any_name=True
    )
    row["detail"] = f"a {PurePosixPath(relative).suffix.lower()} file beside the images (metadata, not read)"
    return row


@register_source("dicom", options=DicomOptions)
def dicom_candidates(root: str, task: str, options: DicomOptions) -> list[dict[str, Any]]:
    """A folder or S3 prefix of DICOM files (detected by content), labelled by a CSV or by their folder.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per file (metadata files, by suffix, are excluded rows not read; the labels CSV
        is not a row), then one excluded row per labels_csv row that matches no file.

    Raises:
        SourceError: The root holds no file, or the labels CSV lacks its columns or gives one key
            two labels.
        FileNotFoundError: The labels CSV does not exist.
    """
    mapping = _task_map(task, options.label_map)
    labels, csv_name = _labels(root, options) if options.labels_csv else ({}, "")
    skipped = {options.labels_csv.strip("/")} if options.labels_csv else set()
    listed = [relative for relative in list_files(root) if relative not in skipped]
    files = [relative for relative in listed if PurePosixPath(relative).suffix.lower() not in METADATA_SUFFIXES]
    if not files:
        raise SourceError(f"dicom source root {root}: no files (other than metadata)")
    # Metadata beside the images (a README, a CSV) is not read, but listed like any other file that
    # is not a radiograph: nothing under the root leaves the manifest unaccounted for.
    found = [_metadata_row(root, relative, mapping) for relative in listed if relative not in set(files)]
    headers = read_headers(root, files)
    used: set[str] = set()
    for relative, header in zip(files, headers, strict=True):
        tags = header.tags
        detail = ""
        if options.labels_csv:
            key = next((key for key in _file_keys(relative, tags, options.key) if key in labels), None)
            finding = labels[key][0] if key is not None else ""
            if key is None:
                detail = f"not named in {csv_name} (key {options.key})"
            else:
                used.add(key)
        else:
            finding = relative.split("/")[0] if "/" in relative else ""
            detail = "" if finding else "directly in the source root: no class folder and no labels_csv"
        found.append(
            _dicom_candidate(
                root, relative, finding, _file_patient(tags, relative), mapping, header, options.default_view, detail
            )
        )
    for key, (finding, number) in labels.items():
        if key in used:
            continue
        patient = key if options.key == "patient_id" else f"row:{number}"
        row = candidate(root, "", finding, patient, mapping, view=options.default_view)
        # The key is not repeated in the detail: it may be a patient id, pseudonymised later.
        row["detail"] = f"{csv_name} row {number}: its {options.key} matches no DICOM file"
        found.append(row)
    return found


# ---------------------------------------------------------------- RSNA Pneumonia Detection Challenge

RSNA_IMAGE_FOLDER = "stage_2_train_images"
RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_CLASSES = "stage_2_detailed_class_info.csv"
RSNA_NOT_NORMAL = "No Lung Opacity / Not Normal"


class RsnaPneumoniaOptions(SourceOptions):
    """Options of an ``rsna_pneumonia`` source."""

    kind: Literal["rsna_pneumonia"] = "rsna_pneumonia"
    default_view: DefaultView = UNKNOWN_VIEW


def _rsna_findings(root: str) -> dict[str, tuple[str, str]]:
    """{patientId: (finding, detail)} in the order of the labels CSV; the class file gives the finding."""
    labels = read_metadata_csv(child_uri(root, RSNA_LABELS), ("patientId", "Target"), "rsna_pneumonia")
    classes = read_metadata_csv(child_uri(root, RSNA_CLASSES), ("patientId", "class"), "rsna_pneumonia")
    class_of: dict[str, str] = {}
    for number, (patient, finding) in enumerate(zip(classes["patientId"], classes["class"], strict=True), 1):
        patient, finding = patient.strip(), " ".join(finding.split())
        if patient in class_of and class_of[patient] != finding:
            raise SourceError(
                f"{child_uri(root, RSNA_CLASSES)} row {number}: patientId {patient} has two classes "
                f"({class_of[patient]!r}, {finding!r})"
            )
        class_of.setdefault(patient, finding)
    findings: dict[str, tuple[str, str]] = {}
    for patient, target in zip(labels["patientId"], labels["Target"], strict=True):
        patient = patient.strip()
        if not patient or patient in findings:
            continue
        if patient in class_of:
            findings[patient] = (class_of[patient], "")
        elif target.strip() == "1":
            findings[patient] = ("Lung Opacity", f"Target 1 in {RSNA_LABELS}; not in {RSNA_CLASSES}")
        else:
            findings[patient] = ("", f"Target {target.strip() or 'blank'} and no class in {RSNA_CLASSES}")
    return findings


@register_source("rsna_pneumonia", options=RsnaPneumoniaOptions)
def rsna_pneumonia_candidates(root: str, task: str, options: RsnaPneumoniaOptions) -> list[dict[str, Any]]:
    """RSNA Pneumonia Detection Challenge: ``stage_2_train_images/*.dcm`` with its two label CSVs.

    Args:
        root: The source root (absolute local path or ``s3://`` URI): the folder holding
            ``stage_2_train_images`` and the CSVs.
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per patientId of the labels CSV (a missing-file row when its image is not
        there), then one unlabelled row per train image the CSV does not name.

    Raises:
        FileNotFoundError: A label CSV does not exist.
        SourceError: A CSV lacks its columns, or a patientId has two classes.
    """
    mapping = _task_map(task, options.label_map, layout="rsna_pneumonia")
    keeps_not_normal = normalize_finding(RSNA_NOT_NORMAL) in {normalize_finding(key) for key in options.label_map or {}}
    findings = _rsna_findings(root)
    images = {
        PurePosixPath(relative).stem: relative
        for relative in list_files(root)
        if relative.startswith(f"{RSNA_IMAGE_FOLDER}/") and relative.lower().endswith(".dcm")
    }
    listed = [patient for patient in findings if patient in images]
    headers = dict(zip(listed, read_headers(root, [images[patient] for patient in listed]), strict=True))
    found = []
    for patient, (finding, detail) in findings.items():
        reasons = []
        if normalize_finding(finding) == normalize_finding(RSNA_NOT_NORMAL) and not keeps_not_normal:
            reasons.append(EXCLUDE_NOT_NORMAL)
            detail = f"{RSNA_CLASSES}: class {finding!r}: abnormal without lung opacity, neither normal nor pneumonia"
        if patient not in images:
            row = candidate(root, "", finding, patient, mapping, view=options.default_view, reasons=reasons)
            try:
                row["uri"] = child_uri(root, f"{RSNA_IMAGE_FOLDER}/{patient}.dcm")
            except Exception:  # noqa: BLE001  (a patientId that would leave the root: no location shown)
                pass
            row["detail"] = f"{RSNA_LABELS} names this patientId; its image is not in {RSNA_IMAGE_FOLDER}/"
        else:
            row = _dicom_candidate(
                root,
                images[patient],
                finding,
                patient,
                mapping,
                headers[patient],
                options.default_view,
                detail,
                reasons,
            )
        found.append(row)
    unnamed = sorted(set(images) - set(findings))
    for patient, header in zip(unnamed, read_headers(root, [images[patient] for patient in unnamed]), strict=True):
        found.append(
            _dicom_candidate(
                root, images[patient], "", patient, mapping, header, options.default_view, f"not named in {RSNA_LABELS}"
            )
        )
    if not found:
        raise SourceError(f"rsna_pneumonia source root {root}: {RSNA_LABELS} names no patientId")
    return found
