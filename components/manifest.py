"""Manifest: one row per image found in a source, included or excluded with a reason.

(Owned by the ingest work; see MANIFEST_COLUMNS for the contract other code relies on.)

Source adapters turn one dataset layout into manifest rows:

- ``folder_manifest``: ``root/<finding>/<file>``, one subfolder per class
  (``COVID-19``, ``normal``, ``NORMAL``, ``PNEUMONIA``...). Files directly in
  ``root`` (README, metadata.csv) and hidden files/folders (``.DS_Store``,
  AppleDouble ``._x.png``) are ignored. Other files inside a class folder are
  listed as excluded (EXCLUDE_NOT_IMAGE) rather than dropped, so that a folder
  of DICOM or TIFF files shows up in the exclusion summary instead of
  silently yielding an empty dataset.
- ``ieee8023_manifest``: the covid-chestxray-dataset layout, ``metadata.csv``
  plus the image folder named in its ``folder`` column (``images``).

When several exclusion reasons apply to a row, the first of
EXCLUSION_PRECEDENCE is recorded. Rows that are not X-rays or not PNG/JPEG
files are not read at all (a CT volume is not "unreadable", it is not ours);
file problems come next because they signal a broken download, which must not
hide behind a metadata reason; then view, then the finding. Duplicates are
marked last, among rows that are otherwise included.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from components import imaging  # noqa: F401  (sets PIL's decompression-bomb limit used here too)
from components.labels import (
    EXCLUDE_DUPLICATE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_UNLABELLED,
    EXCLUDE_UNREADABLE,
    finding_to_label,
    label_map_for_task,
    resolve_label,
)

__all__ = [
    "EXCLUSION_PRECEDENCE",
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "build_manifest",
    "describe_image_file",
    "exclusion_summary",
    "finding_to_label",
    "folder_manifest",
    "ieee8023_manifest",
    "included",
    "mark_duplicates",
]

# Column order of every manifest DataFrame. `exclusion_reason` is "" for rows
# that are used; excluded rows stay in the manifest with their reason.
MANIFEST_COLUMNS = [
    "path",         # absolute path of the image file
    "sha256",       # hex digest of the file bytes ("" when unreadable/missing)
    "width",        # pixels (0 when unreadable)
    "height",
    "mode",         # PIL mode: L, RGB, RGBA, P, I;16, ...
    "label",        # task label (components.labels.TASK_LABELS[task]) or "" when excluded
    "finding",      # the source's own finding text, untouched
    "patient_id",   # grouping key for splits, prefixed by source to stay unique across sources
    "source",       # source name from the run config
    "view",         # PA, AP, AP Supine, L, unknown, ...
    "exclusion_reason",
]

# First applicable reason wins (see module doc for why this order).
EXCLUSION_PRECEDENCE: tuple[str, ...] = (
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_UNREADABLE,
    EXCLUDE_LATERAL,
    EXCLUDE_UNLABELLED,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_DUPLICATE,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
UNKNOWN_VIEW = "unknown"
LATERAL_VIEWS = frozenset({"l", "lateral"})
DEFAULT_PATIENT_ID_PATTERN = r"^(?P<patient_id>[^_]+)_"
IEEE8023_REQUIRED_COLUMNS = ("filename", "patientid", "finding", "view", "modality")
IEEE8023_DEFAULT_IMAGE_FOLDER = "images"


# ---------------------------------------------------------------- files


# File columns of a row whose file was not read or could not be.
_NO_FILE: dict[str, Any] = {"sha256": "", "width": 0, "height": 0, "mode": "", "exclusion_reason": ""}


def describe_image_file(path: str | Path) -> dict[str, Any]:
    """sha256, width, height, mode and exclusion_reason ("" when the file decodes).

    The whole image is decoded, not just its header: PIL's verify() does not
    catch a truncated JPEG, and training would fail on it much later.
    """
    path = Path(path)
    if not path.is_file():
        return {**_NO_FILE, "exclusion_reason": EXCLUDE_MISSING_FILE}
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height, mode = image.width, image.height, image.mode
    # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error,
    # DecompressionBombError...); any of them means the file is unusable.
    except Exception:  # noqa: BLE001
        return {**_NO_FILE, "exclusion_reason": EXCLUDE_UNREADABLE}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
        "mode": mode,
        "exclusion_reason": "",
    }


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def first_reason(reasons: Iterable[str]) -> str:
    """The applicable reason (non-empty) that comes first in EXCLUSION_PRECEDENCE."""
    present = [reason for reason in reasons if reason]
    if not present:
        return ""
    return min(present, key=lambda reason: EXCLUSION_PRECEDENCE.index(reason))


def _row(
    path: Path,
    file_info: Mapping[str, Any] | None,
    reasons: Iterable[str],
    label: str,
    finding: str,
    patient_id: str,
    source: str,
    view: str,
) -> dict[str, Any]:
    """One manifest row; `file_info` is None for files that are deliberately not read."""
    file_info = file_info or _NO_FILE
    reason = first_reason([file_info["exclusion_reason"], *reasons])
    return {
        "path": os.path.abspath(path),
        "sha256": file_info["sha256"],
        "width": int(file_info["width"]),
        "height": int(file_info["height"]),
        "mode": file_info["mode"],
        "label": "" if reason else label,
        "finding": finding,
        "patient_id": f"{source}:{patient_id}",
        "source": source,
        "view": view,
        "exclusion_reason": reason,
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dtypes = {column: "int64" if column in ("width", "height") else "str" for column in MANIFEST_COLUMNS}
    return frame.astype(dtypes)


def _existing_dir(root: str | Path, what: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} root {os.path.abspath(path)} is not a directory")
    return path


# ---------------------------------------------------------------- folder layout


def _visible(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("."))


def _files_below(folder: Path) -> Iterator[Path]:
    """Visible files under `folder`, recursively, in a stable order."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = _visible(dirs)
        for name in _visible(files):
            yield Path(current) / name


def _patient_id_from_stem(stem: str, pattern: re.Pattern[str]) -> str:
    match = pattern.search(stem)
    return (match.group("patient_id") if match else "") or stem


def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    compiled = re.compile(pattern)
    if "patient_id" not in compiled.groupindex:
        raise ValueError(f"patient_id_pattern {pattern!r} needs a named group (?P<patient_id>...)")
    return compiled


def folder_manifest(
    root: str | Path,
    task: str,
    source: str = "folder",
    label_map: Mapping[str, str | None] | None = None,
    patient_id_pattern: str = DEFAULT_PATIENT_ID_PATTERN,
    default_view: str = UNKNOWN_VIEW,
) -> pd.DataFrame:
    """Manifest of ``root/<finding>/<files>``; the class folder name is the finding.

    The patient id is the pattern's ``patient_id`` group searched in the file
    stem, or the whole stem when it does not match (each image its own patient).
    """
    root_path = _existing_dir(root, f"folder source {source!r}")
    mapping = label_map_for_task(task, label_map)
    pattern = _compile_patient_pattern(patient_id_pattern)
    class_dirs = [root_path / name for name in _visible(os.listdir(root_path)) if (root_path / name).is_dir()]
    if not class_dirs:
        raise ValueError(f"folder source {source!r}: no class subfolders in {os.path.abspath(root_path)}")
    rows = []
    for class_dir in class_dirs:
        finding = class_dir.name
        label, label_reason = resolve_label(finding, mapping)
        for path in _files_below(class_dir):
            image_file = is_image_name(path.name)
            rows.append(
                _row(
                    path,
                    describe_image_file(path) if image_file else None,
                    ["" if image_file else EXCLUDE_NOT_IMAGE, label_reason],
                    label,
                    finding,
                    _patient_id_from_stem(path.stem, pattern),
                    source,
                    default_view,
                )
            )
    return _frame(rows)


# ---------------------------------------------------------------- ieee8023 layout


def _read_ieee8023_metadata(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise FileNotFoundError(f"ieee8023 metadata {os.path.abspath(csv_path)} does not exist")
    # Everything as text; blank stays "" (not NaN, and "NA" stays "NA").
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in IEEE8023_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"{os.path.abspath(csv_path)}: missing required column(s) {missing}; "
            f"found {list(table.columns)}"
        )
    return table


def _ieee8023_view(view: str) -> str:
    view = " ".join(view.split())
    return UNKNOWN_VIEW if view in ("", "?") else view


def _is_xray(modality: str) -> bool:
    # "X-ray", "X-Ray", "xray"; a blank modality cannot be confirmed as an X-ray.
    return re.sub(r"[\s_-]", "", modality).lower() == "xray"


def _ieee8023_row(
    record: Mapping[str, str], root: Path, mapping: Mapping[str, str | None], source: str
) -> dict[str, Any]:
    filename = record["filename"].strip()
    folder = record.get("folder", "").strip() or IEEE8023_DEFAULT_IMAGE_FOLDER
    path = root / folder / filename
    xray = _is_xray(record["modality"])
    view = _ieee8023_view(record["view"])
    label, label_reason = resolve_label(record["finding"], mapping)
    if not xray:
        file_info = None  # not read: a CT volume is "not an X-ray", not "unreadable"
    elif not filename:
        file_info = {**_NO_FILE, "exclusion_reason": EXCLUDE_MISSING_FILE}
    else:
        file_info = describe_image_file(path)
    reasons = [
        "" if xray else EXCLUDE_NOT_XRAY,
        EXCLUDE_LATERAL if view.lower() in LATERAL_VIEWS else "",
        label_reason,
    ]
    # A blank patient id cannot group anything: the image becomes its own patient.
    patient_id = record["patientid"].strip() or f"file:{filename}"
    return _row(path, file_info, reasons, label, record["finding"], patient_id, source, view)


def ieee8023_manifest(
    root: str | Path,
    task: str,
    source: str = "ieee8023",
    label_map: Mapping[str, str | None] | None = None,
) -> pd.DataFrame:
    """Manifest of an ieee8023 covid-chestxray-dataset folder (metadata.csv + images/).

    Every metadata row becomes a manifest row: CT rows are kept as excluded
    (EXCLUDE_NOT_XRAY, file not read), lateral views as EXCLUDE_LATERAL, and
    a blank or "?" view becomes "unknown".
    """
    root_path = _existing_dir(root, f"ieee8023 source {source!r}")
    table = _read_ieee8023_metadata(root_path / "metadata.csv")
    mapping = label_map_for_task(task, label_map)
    return _frame([_ieee8023_row(record, root_path, mapping, source) for record in table.to_dict("records")])


# ---------------------------------------------------------------- several sources


ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "folder": folder_manifest,
    "ieee8023": ieee8023_manifest,
}


def _adapter_options(adapter: Callable[..., pd.DataFrame]) -> dict[str, Any]:
    """{option: default} an adapter accepts besides root/task/source."""
    parameters = inspect.signature(adapter).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("root", "task", "source")}


def _source_options(spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Options for this kind's adapter. The config schema gives every source
    every option, so another kind's option is dropped when it holds its
    default and refused when set (it would be silently ignored)."""
    accepted = _adapter_options(ADAPTERS[kind])
    others = {
        name: default
        for other, adapter in ADAPTERS.items()
        if other != kind
        for name, default in _adapter_options(adapter).items()
        if name not in accepted
    }
    name = spec.get("name") or kind
    options = {}
    for key, value in spec.items():
        if key in ("kind", "root", "name") or value is None:
            continue
        if key in accepted:
            options[key] = value
        elif key not in others:
            raise ValueError(f"source {name!r} ({kind}): unknown option {key!r}; valid: {sorted(accepted)}")
        elif value != others[key]:
            raise ValueError(f"source {name!r}: option {key!r} does not apply to kind {kind!r}")
    return options


def _source_manifest(spec: Mapping[str, Any], task: str) -> pd.DataFrame:
    kind = spec.get("kind")
    if kind not in ADAPTERS:
        raise ValueError(f"unknown source kind {kind!r}; valid kinds: {sorted(ADAPTERS)}")
    if not spec.get("root"):
        raise ValueError(f"source {spec.get('name') or kind!r} has no root")
    options = _source_options(spec, kind)
    return ADAPTERS[kind](spec["root"], task, source=spec.get("name") or kind, **options)


def build_manifest(sources: list[dict[str, Any]], task: str, deduplicate: bool = True) -> pd.DataFrame:
    """Concatenated manifests of all sources (dicts from the run config).

    With `deduplicate`, an included image whose bytes equal an earlier
    included image is excluded (EXCLUDE_DUPLICATE): the same file listed under
    two patient ids would otherwise defeat patient-grouped splits.
    """
    if not sources:
        raise ValueError("build_manifest needs at least one source")
    names = [spec.get("name") or spec.get("kind") for spec in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"source names must be unique (they prefix patient ids), repeated: {repeated}")
    manifest = pd.concat([_source_manifest(spec, task) for spec in sources], ignore_index=True)
    return mark_duplicates(manifest) if deduplicate else manifest


def mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Exclude included rows whose sha256 repeats an earlier included row's."""
    result = manifest.copy()
    usable = (result["exclusion_reason"] == "") & (result["sha256"] != "")
    repeats = result.index[usable][result.loc[usable, "sha256"].duplicated(keep="first").to_numpy()]
    result.loc[repeats, "exclusion_reason"] = EXCLUDE_DUPLICATE
    result.loc[repeats, "label"] = ""
    return result


def included(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows that are used (no exclusion reason), re-indexed from 0."""
    return manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)


def exclusion_summary(manifest: pd.DataFrame) -> dict[str, int]:
    """{reason: rows} for excluded rows, in precedence order (other reasons last, by name)."""
    counts = manifest.loc[manifest["exclusion_reason"] != "", "exclusion_reason"].value_counts()
    order = {reason: index for index, reason in enumerate(EXCLUSION_PRECEDENCE)}
    reasons = sorted(counts.index, key=lambda reason: (order.get(reason, len(order)), reason))
    return {reason: int(counts[reason]) for reason in reasons}
