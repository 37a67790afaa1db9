"""Candidate rows: what a source adapter returns, and the helpers every adapter shares.

An adapter (components.sources) parses its layout's metadata and file names
into *candidates*: one dict per image named, with the keys of ``candidate``.
components.manifest then reads every candidate's file once and turns the
candidates into manifest rows. This module sits below both, so that neither
imports the other's internals.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.errors import CxrError
from components.labels import (
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_OUTSIDE_ROOT,
    resolve_label,
)
from components.storage import MissingFileError, OutsideRootError, child_uri, read_text

__all__ = [
    "ADULT",
    "IMAGE_EXTENSIONS",
    "LATERAL_VIEWS",
    "PEDIATRIC",
    "UNKNOWN_VIEW",
    "SourceError",
    "age_group_from_age",
    "candidate",
    "is_image_name",
    "read_metadata_csv",
    "read_metadata_text",
]


class SourceError(CxrError, ValueError):
    """A source's configuration or metadata cannot be used; the message names the source or file."""


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
UNKNOWN_VIEW = "unknown"
LATERAL_VIEWS = frozenset({"l", "lateral", "ll", "rl"})
ADULT, PEDIATRIC = "adult", "pediatric"


def candidate(
    root: str,
    relative: str,
    finding: str,
    patient_id: str,
    mapping: Mapping[str, str | None],
    view: str = UNKNOWN_VIEW,
    age_group: str = "",
    reasons: Iterable[str] = (),
    read: bool = True,
) -> dict[str, Any]:
    """One image named by metadata: a file `relative` to the source root, its label resolved from `finding`.

    Args:
        root: The source root, an absolute local path or an ``s3://`` URI.
        relative: The file's path relative to `root` ("" when the metadata names no file).
        finding: The source's own finding text, kept as is.
        patient_id: The raw patient id (build_manifest prefixes it with the source name).
        mapping: The task's finding -> label map (components.labels.label_map_for_task).
        view: The radiographic view (PA, AP, L...); a lateral view excludes the row.
        age_group: ``adult``, ``pediatric`` or "" when unknown.
        reasons: Exclusion reasons the adapter already knows ("" entries are ignored).
        read: False marks a file that is deliberately not opened: a CT row is "not an
            X-ray", not "unreadable". A path escaping the root is never opened either.

    Returns:
        The candidate: keys ``uri``, ``finding``, ``label``, ``patient_id``, ``view``,
        ``age_group``, ``reasons`` (list of str), ``detail`` (str) and ``read`` (bool).
    """
    label, label_reason = resolve_label(finding, mapping)
    reasons = [*reasons, label_reason]
    detail = ""
    relative = str(relative).strip()
    try:
        uri = child_uri(root, relative) if relative else ""
    except OutsideRootError as error:
        uri, read, detail = f"{str(root).rstrip('/')}/{relative}", False, str(error)
        reasons.append(EXCLUDE_OUTSIDE_ROOT)
    if not relative:
        read, detail = False, "metadata names no file"
        reasons.append(EXCLUDE_MISSING_FILE)
    elif not is_image_name(relative):
        read = False
        reasons.append(EXCLUDE_NOT_IMAGE)
    if view.lower() in LATERAL_VIEWS:
        reasons.append(EXCLUDE_LATERAL)
    return {
        "uri": uri,
        "finding": finding,
        "label": label,
        "patient_id": patient_id,
        "view": view,
        "age_group": age_group,
        "reasons": reasons,
        "detail": detail,
        "read": read,
    }


def is_image_name(name: str) -> bool:
    """Whether a file name has a PNG or JPEG extension (any case).

    Args:
        name: A file name or path.

    Returns:
        True for ``.png``, ``.jpg`` and ``.jpeg``.
    """
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def read_metadata_text(uri: str, what: str) -> str:
    """A metadata file's text, UTF-8 (a byte-order mark removed), else Windows-1252, then Latin-1.

    Spreadsheet exports are often not UTF-8 (Figure1's metadata.csv).

    Args:
        uri: The file, a local path or an ``s3://`` URI.
        what: What the file is, for the error message (``covidx split file``...).

    Returns:
        The decoded text.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
    """
    try:
        # latin-1 decodes any bytes, so this never fails on encoding.
        return read_text(uri, fallback_encodings=("cp1252", "latin-1"))
    except MissingFileError:
        raise FileNotFoundError(f"{what} metadata {uri} does not exist") from None


def read_metadata_csv(uri: str, required: Iterable[str], what: str) -> pd.DataFrame:
    """A metadata CSV with every column as text.

    Blank stays "" (not NaN) and "NA" stays "NA"; a byte-order mark is removed and
    header names are stripped.

    Args:
        uri: The CSV file, a local path or an ``s3://`` URI.
        required: Columns that must be present.
        what: What the file is, for the error message.

    Returns:
        The table, one str column per CSV column.

    Raises:
        FileNotFoundError: The file does not exist.
        SourceError: The file is not a readable CSV, or a required column is missing
            (the message names the file and the columns).
    """
    text = read_metadata_text(uri, what)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SourceError(f"{uri}: not a readable CSV ({error})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise SourceError(f"{uri}: missing required column(s) {missing}; found {list(table.columns)}")
    return table


def age_group_from_age(age: object) -> str:
    """The age group of an age in years.

    Args:
        age: Years, as a number or text.

    Returns:
        ``adult`` (>= 18), ``pediatric`` (< 18), or "" when the age is blank, negative
        or not a number.
    """
    try:
        years = float(str(age).strip())
    except ValueError:
        return ""
    if years != years or years < 0:
        return ""
    return ADULT if years >= 18 else PEDIATRIC
