"""Source adapters: one per dataset layout, each returning manifest candidates.

An adapter is ``adapter(root, task, **options) -> list[candidate]`` (see
components.manifest.candidate). `root` is an absolute local path or an
``s3://`` URI; adapters list and read only through components.storage and
name files relative to `root`. Each adapter's keyword options, with their
defaults, are what a source of that kind accepts in the run config
(components.config.SourceConfig lists every option with the same default).
Every adapter accepts ``label_map`` (overrides of the task's finding -> label
map, components.labels). Nothing found is dropped silently: a file or
metadata row the adapter cannot use becomes an excluded row with its reason,
and a layout that cannot be parsed at all is an error naming the file.

Patient ids are the grouping key of the patient-level splits. build_manifest
prefixes them with the source name, so ids of two sources never merge; the
same person appearing in two public datasets cannot be detected from ids.

- ``folder``: ``root/<finding>/<file>``, one subfolder per class
  (``COVID-19``, ``normal``, ``NORMAL``, ``PNEUMONIA``...). Files directly in
  ``root`` (README, metadata.csv) and hidden files/folders (``.DS_Store``,
  AppleDouble ``._x.png``) are ignored. Other files inside a class folder are
  listed as excluded (not a PNG/JPEG) rather than dropped, so that a folder
  of DICOM or TIFF files shows up in the exclusion summary instead of
  silently yielding an empty dataset. Options: ``patient_id_pattern`` (regex
  with a ``patient_id`` group searched in the file stem; default: the text
  before the first ``_``, else the whole stem), ``default_view``.
- ``ieee8023``: the covid-chestxray-dataset layout, ``metadata.csv`` plus the
  image folder named in its ``folder`` column (``images``). CT rows are
  excluded (not an X-ray), lateral views excluded.
- ``actualmed`` / ``figure1``: agchung's Actualmed and Figure1 COVID-19 chest
  X-ray datasets: ``metadata.csv`` (columns ``patientid``, ``finding``,
  ``view``, ``modality``; optional ``imagename``, ``age``, ``notes``) and
  ``images/``. The image is ``images/<imagename>`` when that column is filled
  (Actualmed), else every PNG/JPEG in ``images/`` named after the patient id
  (Figure1: ``images/COVID-00003a.jpg`` or ``.png``); a row with no such file
  is excluded as a missing file. A blank finding (``Inconclusive`` in the
  notes) is excluded as unlabelled, the notes kept in exclusion_detail.
  Both datasets hold X-rays only: a blank modality counts as X-ray, another
  modality (CT) is excluded. Figure1 names several images of one case
  ``COVID-00003a``, ``COVID-00003b``: they are grouped as patient
  ``COVID-00003`` (grouping too much is safe; too little leaks). Figure1's
  metadata.csv is not UTF-8: metadata is read as Windows-1252 when it is not.
- ``kaggle_pneumonia``: the Kaggle "Chest X-Ray Images (Pneumonia)" set
  (Kermany et al.): ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.
  `root` may be the ``chest_xray`` folder or its parent; the download's
  nested copy ``chest_xray/chest_xray/`` and ``__MACOSX/`` are ignored, as is
  anything outside ``<split>/<class>/``. Findings: ``normal``,
  ``pneumonia/bacterial`` (``person1_bacteria_1.jpeg``), ``pneumonia/viral``
  (``person1_virus_6.jpeg``), else ``pneumonia``. Patient ids:
  ``person1_bacteria_1`` -> ``person1``; NORMAL ``IM-0115-0001`` ->
  ``IM-0115``, ``NORMAL2-IM-1427-0001`` -> ``NORMAL2-IM-1427``. Every row is
  ``pediatric`` (children aged 1-5). The dataset's own train/val/test folders
  are NOT used as the split (its val has 16 images, and the patient-level
  split is ours); the folder is only where the file lives. Option:
  ``default_view``.
- ``covid_radiography``: the COVID-19 Radiography Database (Kaggle,
  Chowdhury/Rahman et al.): ``COVID/images/*.png``, ``Normal/images``,
  ``Viral Pneumonia/images``, ``Lung_Opacity/images`` (versions 4-5), or the
  older layout with files directly in the class folder (``COVID-19``,
  ``NORMAL``...). ``masks/`` folders, files at the top (``*.metadata.xlsx``,
  README) and spreadsheets/text files inside class folders are ignored.
  ``Lung_Opacity`` is a non-COVID diagnosis: outside the 3-class task,
  non-COVID in the binary task. `root` may also be the download folder
  holding one ``COVID-19_Radiography_Dataset`` (any single folder whose name
  contains "radiography"). LEAKAGE CAVEAT: the database has no patient ids,
  so each image is its own patient; several images of one person can land in
  train and test. It also re-publishes images of other public sets
  (ieee8023, Kaggle pediatric pneumonia, ...), resized and re-encoded, which
  the byte-level duplicate check does not catch: combine it with those
  sources only knowingly. Option: ``default_view``.
- ``covidx``: COVIDx CXR split files, one image per line
  ``patientId filename label source`` (whitespace-separated; ``source``
  optional; a file name with spaces is the tokens between the id and the
  label). Labels ``COVID-19`` / ``normal`` / ``pneumonia``, or COVIDx CXR-3/4's
  ``positive`` / ``negative`` (negative: non-COVID in the binary task,
  outside the 3-class task unless label_map maps it). Options
  ``split_files`` (file names relative to root; default: whichever of
  ``train.txt``, ``val.txt``, ``test.txt`` exist) and ``image_folders``
  ({split file: image folder}; default: ``train``, ``val`` or ``test``
  after the split file name's start, so ``train_COVIDx9A.txt`` -> ``train/``).
  The split files' own train/test division is not used as the split. Blank
  lines and ``#`` comments are skipped; any other line that is not at least
  ``patientId filename label`` is an error naming ``file:line``. COVIDx
  re-publishes other public sets: see the leakage caveat above.
- ``manifest``: a generic CSV or Parquet manifest, option ``manifest_file``
  (relative to root, default ``manifest.csv``; ``.parquet``/``.pq`` read as
  Parquet). Columns: ``path`` (or ``uri``), ``label`` (or ``finding``: a
  finding, mapped like any other), optional ``patient_id`` (default: the file
  stem, each image its own patient), ``view`` (blank: ``default_view``),
  ``age_group`` (``adult``/``pediatric``/blank) or ``age`` (years). Paths
  are relative to root; an absolute path or URI is accepted only inside root,
  and anything escaping it (``../../etc/passwd``, ``/etc/passwd``, a symlink
  pointing out) is excluded as "path outside the source root", never opened.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from components.labels import (
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUTSIDE_ROOT,
    LAYOUT_LABEL_MAPS,
    label_map_for_task,
    normalize_finding,
)
from components.manifest import (
    ADULT,
    DEFAULT_PATIENT_ID_PATTERN,
    IEEE8023_DEFAULT_IMAGE_FOLDER,
    IEEE8023_REQUIRED_COLUMNS,
    PEDIATRIC,
    UNKNOWN_VIEW,
    SourceError,
    age_group_from_age,
    candidate,
    is_image_name,
    read_metadata_csv,
    read_metadata_text,
)
from components.storage import MissingFileError, OutsideRootError, child_uri, is_s3_uri, list_files, read_bytes

# ---------------------------------------------------------------- shared helpers


def _task_map(
    task: str, label_map: Mapping[str, str | None] | None, layout: str | None = None
) -> dict[str, str | None]:
    """The task's map for one source: defaults, then the layout's own findings, then the source's overrides."""
    mapping = label_map_for_task(task, label_map)
    overridden = {normalize_finding(key) for key in (label_map or {})}
    for finding, label in LAYOUT_LABEL_MAPS.get(layout or "", {}).get(task, {}).items():
        if finding not in overridden:
            mapping[finding] = label
    return mapping


def _clean_view(view: str) -> str:
    view = " ".join(str(view).split())
    return UNKNOWN_VIEW if view in ("", "?") else view


def _is_xray(modality: str) -> bool:
    # "X-ray", "X-Ray", "xray"; a blank modality cannot be confirmed as an X-ray.
    return re.sub(r"[\s_-]", "", modality).lower() == "xray"


def _missing_file(found: dict[str, Any], root: str, relative: str, detail: str) -> dict[str, Any]:
    """A candidate built with no file name, given the expected location (for the report) and why."""
    try:
        found["uri"] = child_uri(root, relative)
    except OutsideRootError:
        pass  # keep "" rather than a location outside the root
    found["detail"] = detail
    return found


# ---------------------------------------------------------------- folder layout


def _patient_id_from_stem(stem: str, pattern: re.Pattern[str]) -> str:
    match = pattern.search(stem)
    return (match.group("patient_id") if match else "") or stem


def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    compiled = re.compile(pattern)
    if "patient_id" not in compiled.groupindex:
        raise SourceError(f"patient_id_pattern {pattern!r} needs a named group (?P<patient_id>...)")
    return compiled


def folder_candidates(
    root: str,
    task: str,
    label_map: Mapping[str, str | None] | None = None,
    patient_id_pattern: str = DEFAULT_PATIENT_ID_PATTERN,
    default_view: str = UNKNOWN_VIEW,
) -> list[dict[str, Any]]:
    """Candidates of ``root/<finding>/<files>``; the class folder name is the finding.

    Files directly in `root` (README, metadata.csv) and hidden files are
    ignored; other files inside a class folder are excluded (not a PNG/JPEG),
    so that a folder of DICOMs shows up in the report instead of silently
    yielding nothing. The patient id is the pattern's ``patient_id`` group
    searched in the file stem, or the whole stem (each image its own patient).
    """
    mapping = label_map_for_task(task, label_map)
    pattern = _compile_patient_pattern(patient_id_pattern)
    in_classes = [relative for relative in list_files(root) if "/" in relative]
    if not in_classes:
        raise SourceError(f"folder source root {root}: no files in class subfolders")
    return [
        candidate(
            root,
            relative,
            relative.split("/")[0],
            _patient_id_from_stem(PurePosixPath(relative).stem, pattern),
            mapping,
            view=default_view,
        )
        for relative in in_classes
    ]


# ---------------------------------------------------------------- ieee8023 layout


def ieee8023_candidates(
    root: str, task: str, label_map: Mapping[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Candidates of an ieee8023 covid-chestxray-dataset folder (metadata.csv + images/).

    Every metadata row becomes a candidate: CT rows are kept as excluded
    (not an X-ray, file not read), lateral views as excluded, and a blank or
    "?" view becomes "unknown". A blank patient id makes the image its own patient.
    """
    table = read_metadata_csv(child_uri(root, "metadata.csv"), IEEE8023_REQUIRED_COLUMNS, "ieee8023")
    mapping = label_map_for_task(task, label_map)
    found = []
    for record in table.to_dict("records"):
        filename = record["filename"].strip()
        folder = record.get("folder", "").strip() or IEEE8023_DEFAULT_IMAGE_FOLDER
        xray = _is_xray(record["modality"])
        found.append(
            candidate(
                root,
                f"{folder}/{filename}" if filename else "",
                record["finding"],
                record["patientid"].strip() or f"file:{filename}",
                mapping,
                view=_clean_view(record["view"]),
                age_group=age_group_from_age(record.get("age", "")),
                reasons=["" if xray else EXCLUDE_NOT_XRAY],
                read=xray,
            )
        )
    return found


# ---------------------------------------------------------------- actualmed / figure1 (agchung)

AGCHUNG_REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality")
AGCHUNG_IMAGE_FOLDER = "images"
_IMAGE_NAME_COLUMNS = ("imagename", "filename")
# Figure1 names several images of one case COVID-00003a, COVID-00003b.
_FIGURE1_CASE = re.compile(r"^(?P<case>COVID-\d+)[a-z]$", re.IGNORECASE)


def _agchung_candidates(
    root: str,
    task: str,
    label_map: Mapping[str, str | None] | None,
    what: str,
    patient_group: Callable[[str], str] = lambda patient: patient,
) -> list[dict[str, Any]]:
    table = read_metadata_csv(child_uri(root, "metadata.csv"), AGCHUNG_REQUIRED_COLUMNS, what)
    mapping = _task_map(task, label_map)
    name_column = next((column for column in _IMAGE_NAME_COLUMNS if column in table.columns), None)
    by_stem: dict[str, list[str]] | None = None  # images/<stem>.<ext>, listed only when a row needs it

    found = []
    for number, record in enumerate(table.to_dict("records"), start=1):  # data rows, 1-based
        patient = record["patientid"].strip()
        image_name = record[name_column].strip() if name_column else ""
        modality = record["modality"].strip()
        xray = not modality or _is_xray(modality)
        finding = record["finding"]
        options = {
            "view": _clean_view(record["view"]),
            "age_group": age_group_from_age(record.get("age", "")),
            "reasons": ["" if xray else EXCLUDE_NOT_XRAY],
            "read": xray,
        }
        group = patient_group(patient) if patient else ""
        if image_name:
            rows = [
                candidate(
                    root,
                    f"{AGCHUNG_IMAGE_FOLDER}/{image_name}",
                    finding,
                    group or f"file:{image_name}",
                    mapping,
                    **options,
                )
            ]
        else:
            if by_stem is None:
                by_stem = {}
                for relative in list_files(root):
                    path = PurePosixPath(relative)
                    if path.parent.as_posix() == AGCHUNG_IMAGE_FOLDER and is_image_name(relative):
                        by_stem.setdefault(path.stem, []).append(relative)
            matches = by_stem.get(patient, []) if patient else []
            rows = [candidate(root, relative, finding, group, mapping, **options) for relative in matches]
            if not rows:
                expected = f"{AGCHUNG_IMAGE_FOLDER}/{patient}" if patient else AGCHUNG_IMAGE_FOLDER
                detail = (
                    f"metadata.csv row {number}: no {name_column or 'imagename'} and no PNG/JPEG named {expected}.*"
                    if patient
                    else f"metadata.csv row {number}: names neither an image nor a patient"
                )
                rows = [
                    _missing_file(
                        candidate(root, "", finding, group or f"row:{number}", mapping, **options),
                        root,
                        expected,
                        detail,
                    )
                ]
        notes = " ".join(str(record.get("notes", "")).split())
        if not normalize_finding(finding) and notes:
            for row in rows:
                row["detail"] = row["detail"] or f"blank finding; notes: {notes[:200]}"
        found.extend(rows)
    return found


def actualmed_candidates(
    root: str, task: str, label_map: Mapping[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Candidates of an Actualmed COVID-19 chest X-ray dataset folder (metadata.csv + images/<imagename>)."""
    return _agchung_candidates(root, task, label_map, "actualmed")


def _figure1_case(patient: str) -> str:
    match = _FIGURE1_CASE.match(patient)
    return match.group("case") if match else patient


def figure1_candidates(root: str, task: str, label_map: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Candidates of a Figure1 COVID-19 chest X-ray dataset folder (metadata.csv + images/<patientid>.<ext>)."""
    return _agchung_candidates(root, task, label_map, "figure1", patient_group=_figure1_case)


# ---------------------------------------------------------------- Kaggle pediatric pneumonia

KAGGLE_SPLIT_FOLDERS = ("train", "val", "test")
KAGGLE_CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")
_KAGGLE_PREFIXES = ("", "chest_xray/")
_KAGGLE_PERSON = re.compile(r"^(?P<patient_id>person\d+)_", re.IGNORECASE)
_KAGGLE_NORMAL = re.compile(r"^(?P<patient_id>.+)-\d+$")


def _kaggle_class(relative: str) -> str:
    """NORMAL / PNEUMONIA for ``<split>/<class>/<file>`` (deeper nesting allowed), else ""."""
    parts = relative.split("/")
    if len(parts) < 3 or parts[0].lower() not in KAGGLE_SPLIT_FOLDERS:
        return ""
    return parts[1].upper() if parts[1].upper() in KAGGLE_CLASS_FOLDERS else ""


def _kaggle_finding(class_folder: str, stem: str) -> str:
    if class_folder == "NORMAL":
        return "normal"
    lowered = stem.lower()
    if "bacteria" in lowered:
        return "pneumonia/bacterial"
    if "virus" in lowered:
        return "pneumonia/viral"
    return "pneumonia"


def _kaggle_patient(stem: str) -> str:
    for pattern in (_KAGGLE_PERSON, _KAGGLE_NORMAL):
        match = pattern.match(stem)
        if match:
            return match.group("patient_id")
    return stem


def kaggle_pneumonia_candidates(
    root: str, task: str, label_map: Mapping[str, str | None] | None = None, default_view: str = UNKNOWN_VIEW
) -> list[dict[str, Any]]:
    """Candidates of the Kaggle pediatric pneumonia set: ``[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}/*``."""
    mapping = _task_map(task, label_map)
    files = list_files(root)
    for prefix in _KAGGLE_PREFIXES:
        chosen = [
            relative for relative in files if relative.startswith(prefix) and _kaggle_class(relative[len(prefix) :])
        ]
        if chosen:
            break
    else:
        raise SourceError(
            f"kaggle_pneumonia source root {root}: no files in {{train,val,test}}/{{NORMAL,PNEUMONIA}}/ "
            f"(also looked under chest_xray/)"
        )
    found = []
    for relative in chosen:
        class_folder = _kaggle_class(relative[len(prefix) :])
        stem = PurePosixPath(relative).stem
        found.append(
            candidate(
                root,
                relative,
                _kaggle_finding(class_folder, stem),
                _kaggle_patient(stem),
                mapping,
                view=default_view,
                age_group=PEDIATRIC,
            )
        )
    return found


# ---------------------------------------------------------------- COVID-19 Radiography Database

_RADIOGRAPHY_IGNORED_FOLDERS = frozenset({"masks"})
_RADIOGRAPHY_IGNORED_SUFFIXES = frozenset({".xlsx", ".xls", ".csv", ".txt", ".md"})


def covid_radiography_candidates(
    root: str, task: str, label_map: Mapping[str, str | None] | None = None, default_view: str = UNKNOWN_VIEW
) -> list[dict[str, Any]]:
    """Candidates of the COVID-19 Radiography Database: ``<class>/images/*.png`` or ``<class>/*.png``."""
    mapping = _task_map(task, label_map)
    files = [relative for relative in list_files(root) if "/" in relative]
    tops = {relative.split("/")[0] for relative in files}
    prefix = ""
    if len(tops) == 1 and "radiography" in next(iter(tops)).lower():  # root is the download folder
        prefix = next(iter(tops)) + "/"
        files = [relative for relative in files if "/" in relative[len(prefix) :]]
    found = []
    for relative in files:
        parts = relative[len(prefix) :].split("/")
        if len(parts) > 2 and parts[1].lower() in _RADIOGRAPHY_IGNORED_FOLDERS:
            continue
        if PurePosixPath(relative).suffix.lower() in _RADIOGRAPHY_IGNORED_SUFFIXES:
            continue
        # No patient ids in this dataset: each image is its own patient (see the module doc).
        found.append(candidate(root, relative, parts[0], PurePosixPath(relative).stem, mapping, view=default_view))
    if not found:
        raise SourceError(f"covid_radiography source root {root}: no images in class folders (COVID/images/...)")
    return found


# ---------------------------------------------------------------- COVIDx split files

COVIDX_DEFAULT_SPLIT_FILES = ("train.txt", "val.txt", "test.txt")


def _covidx_image_folder(split_file: str, image_folders: Mapping[str, str] | None) -> str:
    if image_folders and split_file in image_folders:
        return str(image_folders[split_file]).strip("/")
    stem = PurePosixPath(split_file).stem.lower()
    for folder in ("train", "val", "test"):
        if stem.startswith(folder):
            return folder
    raise SourceError(
        f"covidx: cannot tell the image folder of split file {split_file!r} (its name does not start with "
        f"train, val or test); set image_folders: {{{split_file!r}: <folder>}}"
    )


def _covidx_split_files(root: str, split_files: list[str] | None) -> list[tuple[str, str]]:
    """[(split file, its text)]; explicit files must exist, defaults are those present."""
    if split_files is not None:
        if not split_files:
            raise SourceError("covidx: split_files is empty")
        return [(name, read_metadata_text(child_uri(root, name), "covidx split file")) for name in split_files]
    present = []
    for name in COVIDX_DEFAULT_SPLIT_FILES:
        try:
            present.append((name, read_metadata_text(child_uri(root, name), "covidx split file")))
        except FileNotFoundError:
            continue
    if not present:
        texts = [relative for relative in list_files(root) if "/" not in relative and relative.endswith(".txt")]
        raise SourceError(
            f"covidx source root {root}: none of {list(COVIDX_DEFAULT_SPLIT_FILES)} found; "
            f"set split_files (text files here: {texts})"
        )
    return present


def covidx_candidates(
    root: str,
    task: str,
    label_map: Mapping[str, str | None] | None = None,
    split_files: list[str] | None = None,
    image_folders: dict[str, str] | None = None,
    default_view: str = UNKNOWN_VIEW,
) -> list[dict[str, Any]]:
    """Candidates of a COVIDx CXR folder: split files ``patientId filename label [source]`` + image folders."""
    mapping = _task_map(task, label_map, layout="covidx")
    if isinstance(split_files, str):  # one file given without a list
        split_files = [split_files]
    unknown = sorted(set(image_folders or {}) - set(split_files or COVIDX_DEFAULT_SPLIT_FILES))
    if unknown:
        raise SourceError(f"covidx: image_folders names files that are not split files: {unknown}")
    found = []
    for split_file, text in _covidx_split_files(root, split_files):
        folder = _covidx_image_folder(split_file, image_folders)
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            tokens = stripped.split()
            if len(tokens) < 3:
                raise SourceError(
                    f"{child_uri(root, split_file)}:{number}: expected 'patientId filename label [source]', "
                    f"got {line!r}"
                )
            if len(tokens) == 3:
                patient, filename, label = tokens
            else:
                patient, filename, label = tokens[0], " ".join(tokens[1:-2]), tokens[-2]
            found.append(
                candidate(
                    root, f"{folder}/{filename}" if folder else filename, label, patient, mapping, view=default_view
                )
            )
    return found


# ---------------------------------------------------------------- generic CSV / Parquet manifest

_MANIFEST_PATH_COLUMNS = ("path", "uri")
_MANIFEST_FINDING_COLUMNS = ("label", "finding")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_manifest_table(uri: str) -> pd.DataFrame:
    if not uri.lower().endswith(_PARQUET_SUFFIXES):
        return read_metadata_csv(uri, (), "manifest")
    try:
        data = read_bytes(uri)
    except MissingFileError:
        raise FileNotFoundError(f"manifest {uri} does not exist") from None
    try:
        table = pd.read_parquet(io.BytesIO(data))
    except ImportError as error:
        raise SourceError(f"{uri}: reading Parquet needs pyarrow ({error})") from None
    except Exception as error:  # noqa: BLE001  (pyarrow raises its own types on a corrupt file)
        raise SourceError(f"{uri}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table.astype(object).where(table.notna(), "").astype(str)


def _inside_root(value: str, root: str) -> str | None:
    """`value` relative to root when it is an absolute path/URI under root; None when it is absolute elsewhere."""
    if "://" in value:
        base = root.rstrip("/") + "/"
        return value[len(base) :] if is_s3_uri(root) and value.startswith(base) else None
    if value.startswith("/") and not is_s3_uri(root):
        normalised = os.path.normpath(value)
        return os.path.relpath(normalised, root) if normalised.startswith(root.rstrip("/") + "/") else value
    return value


def manifest_candidates(
    root: str,
    task: str,
    label_map: Mapping[str, str | None] | None = None,
    manifest_file: str = "manifest.csv",
    default_view: str = UNKNOWN_VIEW,
) -> list[dict[str, Any]]:
    """Candidates of a CSV/Parquet manifest: ``path``/``uri``, ``label``/``finding``, optional patient_id, view, age."""
    uri = child_uri(root, manifest_file)
    table = _read_manifest_table(uri)
    path_column = next((column for column in _MANIFEST_PATH_COLUMNS if column in table.columns), None)
    finding_column = next((column for column in _MANIFEST_FINDING_COLUMNS if column in table.columns), None)
    missing = [
        " or ".join(repr(c) for c in group)
        for group, column in ((_MANIFEST_PATH_COLUMNS, path_column), (_MANIFEST_FINDING_COLUMNS, finding_column))
        if column is None
    ]
    if missing:
        raise SourceError(f"{uri}: missing required column(s) {', '.join(missing)}; found {list(table.columns)}")
    mapping = _task_map(task, label_map)
    found = []
    for number, record in enumerate(table.to_dict("records"), start=1):  # data rows, 1-based
        value = str(record[path_column]).strip()
        age_group = _manifest_age_group(record, uri, number)
        view = _clean_view(record.get("view", "")) if str(record.get("view", "")).strip() else default_view
        relative = _inside_root(value, root)
        stem = PurePosixPath(value.replace("\\", "/")).stem
        patient = str(record.get("patient_id", "")).strip() or stem
        if relative is None:  # an absolute URI elsewhere: never opened
            row = candidate(
                root,
                "",
                record[finding_column],
                patient,
                mapping,
                view=view,
                age_group=age_group,
                reasons=[EXCLUDE_OUTSIDE_ROOT],
            )
            row.update(uri=value, detail=f"{value!r} is not inside the source root {root}")
        else:
            row = candidate(root, relative, record[finding_column], patient, mapping, view=view, age_group=age_group)
            if not value:
                row["detail"] = f"{manifest_file} row {number}: blank {path_column}"
        found.append(row)
    return found


def _manifest_age_group(record: Mapping[str, Any], uri: str, number: int) -> str:
    if "age_group" in record:
        value = str(record["age_group"]).strip().lower()
        if value not in ("", ADULT, PEDIATRIC):
            raise SourceError(
                f"{uri} row {number}: age_group {record['age_group']!r} is not {ADULT!r}, {PEDIATRIC!r} or blank"
            )
        if value:
            return value
    return age_group_from_age(record.get("age", ""))


# kind -> adapter. The config schema (components.config.SourceConfig) lists the same kinds.
ADAPTERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "folder": folder_candidates,
    "ieee8023": ieee8023_candidates,
    "actualmed": actualmed_candidates,
    "figure1": figure1_candidates,
    "kaggle_pneumonia": kaggle_pneumonia_candidates,
    "covid_radiography": covid_radiography_candidates,
    "covidx": covidx_candidates,
    "manifest": manifest_candidates,
}
