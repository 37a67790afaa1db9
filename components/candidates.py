"""Candidate rows: what a source adapter returns, and the helpers every adapter shares.

An adapter (components.sources) parses its layout's metadata and file names
into *candidates*: one dict per image named, with the keys of ``candidate``.
components.manifest then reads every candidate's file once and turns the
candidates into manifest rows. This module sits below both, so that neither
imports the other's internals.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from components.errors import CxrError
from components.labels import (
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NAME_NOT_UTF8,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_OUTSIDE_ROOT,
    resolve_label,
)
from components.storage import (
    MissingFileError,
    OutsideRootError,
    StorageError,
    child_uri,
    describe_content,
    escaped_name,
    has_undecodable_bytes,
    is_s3_uri,
    read_head,
    read_text,
)

__all__ = [
    "ADULT",
    "IMAGE_EXTENSIONS",
    "sex_code",
    "LATERAL_VIEWS",
    "PEDIATRIC",
    "UNKNOWN_VIEW",
    "SourceError",
    "age_group_from_age",
    "candidate",
    "is_image_name",
    "not_image_detail",
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
    any_name: bool = False,
    sex: str = "",
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
        any_name: The adapter knows the file by its content (a DICOM file, components.dicom_sources):
            no PNG/JPEG extension is asked for.
        sex: The patient's sex as metadata writes it (sex_code makes it M, F or "").

    Returns:
        The candidate: keys ``uri``, ``finding``, ``label``, ``patient_id``, ``view``,
        ``age_group``, ``reasons`` (list of str), ``detail`` (str) and ``read`` (bool).
    """
    # A name that is not valid UTF-8 (and what the adapter took from it) is kept in its escaped
    # form: UTF-8 writers (Parquet, JSON, MLflow, GX) refuse the lone surrogates it holds.
    relative = str(relative).strip()
    bad_name = has_undecodable_bytes(relative)
    finding, patient_id, view = (escaped_name(str(value)) for value in (finding, patient_id, view))
    label, label_reason = resolve_label(finding, mapping)
    reasons = [*reasons, label_reason]
    detail = ""
    try:
        uri = escaped_name(child_uri(root, relative)) if relative else ""
    except OutsideRootError as error:
        uri, read, detail = escaped_name(f"{str(root).rstrip('/')}/{relative}"), False, escaped_name(str(error))
        reasons.append(EXCLUDE_OUTSIDE_ROOT)
    if not relative:
        read, detail = False, "metadata names no file"
        reasons.append(EXCLUDE_MISSING_FILE)
    elif bad_name:
        read = False
        detail = detail or (
            f"the name {escaped_name(relative)} holds bytes that are not UTF-8 (shown as \\xNN), as archives made "
            "on another system leave them; rename the file in UTF-8 (e.g. convmv -f cp1252 -t utf-8) to use it"
        )
        reasons.append(EXCLUDE_NAME_NOT_UTF8)
    elif not any_name and not is_image_name(relative):
        read = False
        if uri and not detail:
            detail = not_image_detail(uri, relative)
        reasons.append(EXCLUDE_NOT_IMAGE)
    if view.lower() in LATERAL_VIEWS:
        reasons.append(EXCLUDE_LATERAL)
        detail = detail or f"view {view!r}: a lateral projection; the models read frontal (PA/AP) radiographs"
    return {
        "uri": uri,
        "finding": finding,
        "label": label,
        "patient_id": patient_id,
        "view": view,
        "age_group": age_group,
        "sex": sex_code(sex),
        "reasons": reasons,
        "detail": detail,
        "read": read,
    }


_EXPECTED_IMAGE = "expected a PNG or JPEG file (.png, .jpg, .jpeg)"


@lru_cache(maxsize=64)
def _folder_entries(folder: str, stamp: int) -> dict[str, tuple[str, ...]]:
    """{stem: names} of a local folder's files; `stamp` (its mtime) makes a changed folder a new key."""
    by_stem: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix:
            by_stem.setdefault(stem, []).append(name)
    return {stem: tuple(names) for stem, names in by_stem.items()}


def _files_with_extensions(uri: str) -> tuple[str, ...]:
    """Local files named like `uri` plus an extension (``img001.png`` for ``img001``); () on S3 or none."""
    if is_s3_uri(uri):
        return ()
    folder, name = os.path.split(uri)
    try:
        entries = _folder_entries(folder, os.stat(folder).st_mtime_ns)
    except OSError:
        return ()
    return entries.get(name, ())


def not_image_detail(uri: str, relative: str) -> str:
    """Why a file named without a PNG/JPEG extension is not used: what was expected and what was found.

    Reads the file's first bytes to say what it holds (a local file always; on S3 only when the
    name has no extension, one small ranged read). A name listed without its extension is
    compared with the files beside it: ``img001`` listed while ``img001.png`` exists says so.

    Args:
        uri: The file's absolute path or ``s3://`` URI.
        relative: Its path relative to the source root, as the metadata or listing names it.

    Returns:
        E.g. "listed as 'images/img001' without an extension; expected a PNG or JPEG file (.png,
        .jpg, .jpeg); no file of that name, but images/img001.png exists: list it with its extension",
        or "...; found a DICOM file at scans/x.dcm".
    """
    suffix = PurePosixPath(relative).suffix
    listed = f"listed as {relative!r} " + (f"with the extension {suffix!r}" if suffix else "without an extension")
    parent = PurePosixPath(relative).parent.as_posix()
    if suffix and is_s3_uri(uri):
        return f"{listed}; {_EXPECTED_IMAGE}; content not opened"
    try:
        found = f"found {describe_content(read_head(uri))} at {relative}"
    except MissingFileError:
        siblings = [name if parent == "." else f"{parent}/{name}" for name in _files_with_extensions(uri)]
        found = "no file of that name" + (
            f", but {', '.join(siblings)} exists: list it with its extension" if siblings else ""
        )
    except StorageError as error:
        found = f"its content could not be read ({error})"
    return f"{listed}; {_EXPECTED_IMAGE}; {found}"


def is_image_name(name: str) -> bool:
    """Whether a file name has a PNG or JPEG extension (any case).

    Args:
        name: A file name or path.

    Returns:
        True for ``.png``, ``.jpg`` and ``.jpeg``.
    """
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


METADATA_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


def read_metadata_text(uri: str, what: str) -> str:
    """A metadata file's text: by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8, Windows-1252, Latin-1.

    Spreadsheet exports are often not UTF-8: Figure1's metadata.csv is Windows-1252, and
    "Unicode" exports are UTF-16 with a byte-order mark (components.storage.decode_text).

    Args:
        uri: The file, a local path or an ``s3://`` URI.
        what: What the file is, for the error message (``covidx split file``...).

    Returns:
        The decoded text, without the byte-order mark.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        SourceError: The bytes are not text in any encoding tried (a binary file, say); the
            message names the file and the encodings tried.
    """
    try:
        return read_text(uri, fallback_encodings=METADATA_FALLBACK_ENCODINGS)
    except MissingFileError:
        raise FileNotFoundError(f"{what} metadata {uri} does not exist") from None
    except StorageError as error:
        raise SourceError(f"{what} metadata: {error}") from None


def _delimiter(text: str) -> str:
    """The CSV delimiter: "," unless the header has none and has tabs (a spreadsheet's "Unicode text") or ";"."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return "\t" if "\t" in header else ";" if ";" in header else ","


def read_metadata_csv(uri: str, required: Iterable[str], what: str) -> pd.DataFrame:
    """A metadata CSV with every column as text.

    Blank stays "" (not NaN) and "NA" stays "NA"; a byte-order mark is removed and
    header names are stripped. The encoding is read_metadata_text's; the delimiter is a
    comma, or a tab or semicolon when the header holds no comma (spreadsheet exports).

    Args:
        uri: The CSV file, a local path or an ``s3://`` URI.
        required: Columns that must be present.
        what: What the file is, for the error message.

    Returns:
        The table, one str column per CSV column.

    Raises:
        FileNotFoundError: The file does not exist.
        SourceError: The file is not text in any encoding tried, not a readable CSV, or a
            required column is missing (the message names the file and the columns).
    """
    text = read_metadata_text(uri, what)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=_delimiter(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SourceError(f"{uri}: not a readable CSV ({error})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise SourceError(f"{uri}: missing required column(s) {missing}; found {list(table.columns)}")
    return table


# An age as metadata writes it: "50", "50.5", "50 years", "045Y" (DICOM: Y/M/W/D), "6 months";
# open-ended "50+", ">60", ">= 18", "<18", "under 5", "90 or older"; a range "40-49", "40 to 49".
ADULT_FROM_YEARS = 18
_UNITS = r"y|yr|yrs|year|years|years old|m|mo|mos|month|months|w|wk|wks|week|weeks|d|day|days"
_N = r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>" + _UNITS + r")?"
_N2 = r"(?P<n2>\d+(?:\.\d+)?)\s*(?P<u2>" + _UNITS + r")?"
_AGE_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (bound, re.compile(pattern))
    for bound, pattern in (
        ("exact", rf"^{_N}$"),
        ("from", rf"^(?:>=|=>|at least)\s*{_N}$"),
        ("from", rf"^{_N}\s*(?:\+|and older|and over|or older|or over|or more)(?:\s*(?:{_UNITS}))?$"),
        ("above", rf"^(?:>|over|above|older than|more than)\s*{_N}$"),
        ("to", rf"^(?:<=|=<|at most)\s*{_N}$"),
        ("to", rf"^{_N}\s*(?:or younger|or under|or less|and younger|and under)$"),
        ("below", rf"^(?:<|under|below|younger than|less than)\s*{_N}$"),
        ("range", rf"^{_N}\s*(?:-|–|to)\s*{_N2}$"),
    )
)


def _years(number: str, unit: str | None) -> float:
    """Years of a number in a unit (years when none; DICOM's M, W, D are months, weeks, days)."""
    unit = unit or "y"
    per_year = 12 if unit.startswith("m") else 52.1775 if unit.startswith("w") else 365.25 if unit[0] == "d" else 1
    return float(number) / per_year


# How sources write the patient's sex (DICOM PatientSex: M, F, O; ieee8023: M, F); other values are unknown.
_SEX_CODES = {"m": "M", "male": "M", "f": "F", "female": "F"}


def sex_code(sex: object) -> str:
    """The patient's sex as the manifest records it.

    Args:
        sex: As the source writes it: ``M``/``F`` (DICOM PatientSex, ieee8023), ``male``/``female``; any case.

    Returns:
        ``M``, ``F``, or "" when blank or anything else (DICOM's ``O``, "unknown", NaN).
    """
    return _SEX_CODES.get(str(sex).strip().lower(), "")


def age_group_from_age(age: object) -> str:
    """The age group of an age as metadata writes it: a number of years, a DICOM age, or an open-ended age.

    Understood (case-insensitive): ``50``, ``50.5``, ``50 years``, ``045Y`` / ``006M`` /
    ``010W`` / ``003D`` (DICOM PatientAge), ``6 months``; open-ended ``50+``, ``>60``,
    ``>= 18``, ``over 65``, ``90 or older``, ``<18``, ``under 5``, ``<= 12``; ranges ``40-49``,
    ``40 to 49``. An open-ended age or a range gives a group only when every age it allows
    falls in one group (``17+`` and ``10-20`` give "").

    Args:
        age: The age, as a number or text.

    Returns:
        ``adult`` (18 years or more), ``pediatric`` (under 18), or "" when the age is blank,
        negative, not understood, or spans both groups.
    """
    text = " ".join(str(age).strip().lower().replace("≥", ">=").replace("≤", "<=").split())
    found = next(((bound, match) for bound, pattern in _AGE_FORMS if (match := pattern.match(text))), None)
    if found is None:
        return ""
    bound, match = found
    years = _years(match["n"], match["u"] or (match["u2"] if bound == "range" else None))
    if bound == "exact":
        return ADULT if years >= ADULT_FROM_YEARS else PEDIATRIC
    if bound in ("from", "above"):  # every age above `years` (or from it)
        return ADULT if years >= ADULT_FROM_YEARS else ""
    if bound == "range":
        high = _years(match["n2"], match["u2"] or match["u"])
        if high < years:
            return ""
        return ADULT if years >= ADULT_FROM_YEARS else PEDIATRIC if high < ADULT_FROM_YEARS else ""
    # "to": at most `years`; "below": under `years`
    return PEDIATRIC if years < ADULT_FROM_YEARS or (bound == "below" and years == ADULT_FROM_YEARS) else ""
