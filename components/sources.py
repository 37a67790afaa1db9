"""Source adapters: one per dataset layout, each returning manifest candidates.

An adapter is ``adapter(root, task, **options) -> list[candidate]`` (see
components.manifest.candidate). `root` is an absolute local path or an
``s3://`` URI; adapters list and read only through components.storage and
name files relative to `root`. Each adapter's keyword options, with their
defaults, are what a source of that kind accepts in the run config.

- ``folder``: ``root/<finding>/<file>``, one subfolder per class
  (``COVID-19``, ``normal``, ``NORMAL``, ``PNEUMONIA``...). Files directly in
  ``root`` (README, metadata.csv) and hidden files/folders (``.DS_Store``,
  AppleDouble ``._x.png``) are ignored. Other files inside a class folder are
  listed as excluded (not a PNG/JPEG) rather than dropped, so that a folder
  of DICOM or TIFF files shows up in the exclusion summary instead of
  silently yielding an empty dataset.
- ``ieee8023``: the covid-chestxray-dataset layout, ``metadata.csv`` plus the
  image folder named in its ``folder`` column (``images``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from components.labels import EXCLUDE_NOT_XRAY, label_map_for_task
from components.manifest import (
    DEFAULT_PATIENT_ID_PATTERN,
    IEEE8023_DEFAULT_IMAGE_FOLDER,
    IEEE8023_REQUIRED_COLUMNS,
    UNKNOWN_VIEW,
    age_group_from_age,
    candidate,
    read_metadata_csv,
)
from components.storage import child_uri, list_files


# ---------------------------------------------------------------- folder layout


def _patient_id_from_stem(stem: str, pattern: re.Pattern[str]) -> str:
    match = pattern.search(stem)
    return (match.group("patient_id") if match else "") or stem


def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    compiled = re.compile(pattern)
    if "patient_id" not in compiled.groupindex:
        raise ValueError(f"patient_id_pattern {pattern!r} needs a named group (?P<patient_id>...)")
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
        raise ValueError(f"folder source root {root}: no files in class subfolders")
    return [
        candidate(root, relative, relative.split("/")[0], _patient_id_from_stem(PurePosixPath(relative).stem, pattern),
                  mapping, view=default_view)
        for relative in in_classes
    ]


# ---------------------------------------------------------------- ieee8023 layout


def _ieee8023_view(view: str) -> str:
    view = " ".join(view.split())
    return UNKNOWN_VIEW if view in ("", "?") else view


def _is_xray(modality: str) -> bool:
    # "X-ray", "X-Ray", "xray"; a blank modality cannot be confirmed as an X-ray.
    return re.sub(r"[\s_-]", "", modality).lower() == "xray"


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
                root, f"{folder}/{filename}" if filename else "", record["finding"],
                record["patientid"].strip() or f"file:{filename}", mapping,
                view=_ieee8023_view(record["view"]), age_group=age_group_from_age(record.get("age", "")),
                reasons=["" if xray else EXCLUDE_NOT_XRAY], read=xray,
            )
        )
    return found


# kind -> adapter. The config schema (components.config.SourceConfig) lists the same kinds.
ADAPTERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "folder": folder_candidates,
    "ieee8023": ieee8023_candidates,
}
