"""Manifest: one row per image found in a source, included or excluded with a reason.

(Owned by the ingest work; see MANIFEST_COLUMNS for the contract other code relies on.)

Source adapters (ADAPTERS, one per dataset layout) parse metadata and file
names into *candidates*; ``build_manifest`` reads every candidate's file once,
in parallel, from local disk or S3 (components.storage, components.image_info)
and returns the manifest. Paths named by metadata are untrusted: one that
escapes its source root is excluded, never opened.

The adapters live in components.sources.

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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.image_info import NO_FILE, describe_uris
from components.labels import (
    EXCLUDE_DUPLICATE,
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_UNLABELLED,
    EXCLUDE_UNREADABLE,
    finding_to_label,
    resolve_label,
)
from components.storage import (
    MissingFileError,
    OutsideRootError,
    child_uri,
    is_s3_uri,
    read_text,
    root_is_dir,
)

__all__ = [
    "EXCLUSION_PRECEDENCE",
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "build_manifest",
    "SourceError",
    "candidate",
    "dataset_version",
    "exclusion_summary",
    "finding_to_label",
    "included",
    "manifest_frame",
    "mark_duplicates",
]


class SourceError(ValueError):
    """A source's configuration or metadata cannot be used; the message names the source or file."""


# Column order of every manifest DataFrame. `exclusion_reason` is "" for rows
# that are used; excluded rows stay in the manifest with their reason.
MANIFEST_COLUMNS = [
    "uri",  # absolute local path or s3://bucket/key of the image file
    "source",  # source name from the run config
    "sha256",  # hex digest of the file bytes ("" when not read / unreadable)
    "phash",  # 64-bit perceptual hash, 16 hex digits ("" when not read / unreadable)
    "width",  # pixels (0 when not read / unreadable)
    "height",
    "mode",  # PIL mode: L, RGB, RGBA, P, I;16, ...
    "bit_depth",  # bits per channel (8, 16; 0 when not read)
    "view",  # PA, AP, AP Supine, L, unknown, ...
    "patient_id",  # grouping key for splits, prefixed by source to stay unique across sources
    "age_group",  # adult, pediatric, or "" when unknown
    "finding",  # the source's own finding text, untouched
    "label",  # task label (components.labels.TASK_LABELS[task]) or "" when excluded
    "exclusion_reason",
    "exclusion_detail",  # free text behind the reason (decoder error, escaped path...)
]
_INT_COLUMNS = ("width", "height", "bit_depth")

# First applicable reason wins (see module doc for why this order).
EXCLUSION_PRECEDENCE: tuple[str, ...] = (
    EXCLUDE_OUTSIDE_ROOT,
    EXCLUDE_DUPLICATE_ROW,
    EXCLUDE_NOT_IMAGE,
    EXCLUDE_NOT_XRAY,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_UNREADABLE,
    EXCLUDE_LATERAL,
    EXCLUDE_UNLABELLED,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_DUPLICATE,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
UNKNOWN_VIEW = "unknown"
LATERAL_VIEWS = frozenset({"l", "lateral", "ll", "rl"})
ADULT, PEDIATRIC = "adult", "pediatric"
DEFAULT_PATIENT_ID_PATTERN = r"^(?P<patient_id>[^_]+)_"
IEEE8023_REQUIRED_COLUMNS = ("filename", "patientid", "finding", "view", "modality")
IEEE8023_DEFAULT_IMAGE_FOLDER = "images"


# ---------------------------------------------------------------- candidate rows
#
# Adapters only parse their layout's metadata and file names: they return
# *candidates* (dicts with the keys of `candidate`). build_manifest then reads
# every candidate's file once, in parallel (components.image_info), and turns
# candidates into manifest rows.


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
    """One image named by metadata: `relative` to the source root, label resolved from `finding`.

    `read=False` marks a file that is deliberately not opened (a CT row is "not
    an X-ray", not "unreadable"). A path escaping the root is never opened.
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
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def first_reason(reasons: Iterable[str]) -> str:
    """The applicable reason (non-empty) that comes first in EXCLUSION_PRECEDENCE."""
    present = [reason for reason in reasons if reason]
    if not present:
        return ""
    return min(present, key=lambda reason: EXCLUSION_PRECEDENCE.index(reason))


def _row(found: Mapping[str, Any], file_info: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    """A manifest row from a candidate and what reading its file gave (None: not read)."""
    file_info = file_info or NO_FILE
    reason = first_reason([file_info["exclusion_reason"], *found["reasons"]])
    detail = file_info["exclusion_detail"] if reason == file_info["exclusion_reason"] else found["detail"]
    return {
        "uri": found["uri"],
        "source": source,
        **{column: file_info[column] for column in ("sha256", "phash", "width", "height", "mode", "bit_depth")},
        "view": found["view"],
        "patient_id": f"{source}:{found['patient_id']}",
        "age_group": found["age_group"],
        "finding": found["finding"],
        "label": "" if reason else found["label"],
        "exclusion_reason": reason,
        "exclusion_detail": detail if reason else "",
    }


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A DataFrame with exactly MANIFEST_COLUMNS and their dtypes (also for zero rows)."""
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dtypes = {column: "int64" if column in _INT_COLUMNS else "str" for column in MANIFEST_COLUMNS}
    return frame.astype(dtypes)


def _existing_root(root: str | Path, what: str) -> str:
    root = str(root)
    if not root_is_dir(root):
        shown = root if is_s3_uri(root) else os.path.abspath(root)
        raise FileNotFoundError(f"{what} root {shown} is not a directory (or an empty S3 prefix)")
    return root if is_s3_uri(root) else os.path.abspath(root)


def read_metadata_text(uri: str, what: str) -> str:
    """A metadata file's text; FileNotFoundError naming it when it does not exist.

    UTF-8 (a byte-order mark removed); a file that is not UTF-8 is read as
    Windows-1252, then Latin-1 (spreadsheet exports: Figure1's metadata.csv).
    """
    try:
        # latin-1 decodes any bytes, so this never fails on encoding.
        return read_text(uri, fallback_encodings=("cp1252", "latin-1"))
    except MissingFileError:
        raise FileNotFoundError(f"{what} metadata {uri} does not exist") from None


def read_metadata_csv(uri: str, required: Iterable[str], what: str) -> pd.DataFrame:
    """A metadata CSV as text columns; a clear error naming the file for a missing file or column.

    Everything is read as text: blank stays "" (not NaN) and "NA" stays "NA".
    A byte-order mark (spreadsheet exports) is removed; header names are stripped.
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
    """adult (>= 18), pediatric (< 18) or "" when the age is blank or not a number."""
    try:
        years = float(str(age).strip())
    except ValueError:
        return ""
    if years != years or years < 0:
        return ""
    return ADULT if years >= 18 else PEDIATRIC


# ---------------------------------------------------------------- several sources


def _adapters() -> dict[str, Callable[..., list[dict[str, Any]]]]:
    from components.sources import ADAPTERS  # the adapters import this module's helpers

    return ADAPTERS


def _adapter_options(adapter: Callable[..., Any]) -> dict[str, Any]:
    """{option: default} an adapter accepts besides root/task."""
    parameters = inspect.signature(adapter).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("root", "task")}


def _source_options(spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Options for this kind's adapter. The config schema gives every source
    every option, so another kind's option is dropped when it holds its
    default and refused when set (it would be silently ignored)."""
    adapters = _adapters()
    accepted = _adapter_options(adapters[kind])
    others = {
        name: default
        for other, adapter in adapters.items()
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
            raise SourceError(f"source {name!r} ({kind}): unknown option {key!r}; valid: {sorted(accepted)}")
        elif value != others[key]:
            raise SourceError(f"source {name!r}: option {key!r} does not apply to kind {kind!r}")
    return options


def source_candidates(spec: Mapping[str, Any], task: str) -> list[dict[str, Any]]:
    """Candidates of one configured source, duplicate metadata rows marked."""
    kind = spec.get("kind")
    adapters = _adapters()
    if kind not in adapters:
        raise SourceError(f"unknown source kind {kind!r}; valid kinds: {sorted(adapters)}")
    name = spec.get("name") or kind
    if not spec.get("root"):
        raise SourceError(f"source {name!r} has no root")
    options = _source_options(spec, kind)
    root = _existing_root(spec["root"], f"{kind} source {name!r}")
    return mark_duplicate_rows(adapters[kind](root, task, **options))


def mark_duplicate_rows(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A file listed twice by the metadata keeps its first row; later ones are excluded, not dropped."""
    seen: dict[str, int] = {}
    for index, found in enumerate(candidates):
        uri = found["uri"]
        if not uri:
            continue
        if uri in seen:
            found["reasons"].append(EXCLUDE_DUPLICATE_ROW)
            found["read"] = False
            found["detail"] = f"same file as metadata row {seen[uri] + 1}"
        else:
            seen[uri] = index
    return candidates


def build_manifest(
    sources: list[dict[str, Any]], task: str, deduplicate: bool = True, workers: int = 1, progress: bool = False
) -> pd.DataFrame:
    """Manifest of all sources (dicts from the run config), files read by `workers` in parallel.

    With `deduplicate`, an included image whose bytes equal an earlier
    included image is excluded (EXCLUDE_DUPLICATE): the same file listed under
    two patient ids would otherwise defeat patient-grouped splits.
    """
    if not sources:
        raise SourceError("build_manifest needs at least one source")
    names = [spec.get("name") or spec.get("kind") for spec in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SourceError(f"source names must be unique (they prefix patient ids), repeated: {repeated}")
    per_source = [(name, source_candidates(spec, task)) for name, spec in zip(names, sources, strict=False)]
    # One parallel pass over every file of every source.
    everything = [found for _, found in per_source for found in found]
    to_read = sorted({found["uri"] for found in everything if found["read"]})
    described = dict(zip(to_read, describe_uris(to_read, workers=workers, progress=progress), strict=False))
    rows = [
        _row(found, described[found["uri"]] if found["read"] else None, name)
        for name, candidates in per_source
        for found in candidates
    ]
    manifest = manifest_frame(rows)
    return mark_duplicates(manifest) if deduplicate else manifest


def mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Exclude included rows whose sha256 repeats an earlier included row's."""
    result = manifest.copy()
    usable = (result["exclusion_reason"] == "") & (result["sha256"] != "")
    repeats = result.index[usable][result.loc[usable, "sha256"].duplicated(keep="first").to_numpy()]
    first_uri = result.loc[usable].drop_duplicates("sha256").set_index("sha256")["uri"]
    result.loc[repeats, "exclusion_reason"] = EXCLUDE_DUPLICATE
    result.loc[repeats, "exclusion_detail"] = [
        f"same bytes as {first_uri[sha]}" for sha in result.loc[repeats, "sha256"]
    ]
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


def dataset_version(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest: 16 hex digits that change when any file, label or exclusion does.

    Rows are sorted first, so the order adapters list files in does not matter;
    file bytes enter through the sha256 column.
    """
    frame = manifest.reindex(columns=MANIFEST_COLUMNS).astype(str).sort_values(MANIFEST_COLUMNS, kind="stable")
    digest = hashlib.sha256()
    digest.update("\x1f".join(MANIFEST_COLUMNS).encode())
    for row in frame.itertuples(index=False):
        digest.update(("\x1e" + "\x1f".join(row)).encode())
    return digest.hexdigest()[:16]
