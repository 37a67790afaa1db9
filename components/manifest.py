"""Manifest: one row per image found in a source, included or excluded with a reason.

(Owned by the ingest work; see MANIFEST_COLUMNS for the contract other code relies on.)

Source adapters (components.sources, one registered per dataset layout) parse
metadata and file names into *candidates* (components.candidates);
``build_manifest`` runs the adapter of each configured source, reads every
candidate's file once, in parallel, from local disk or S3
(components.storage, components.image_info) and returns the manifest. Paths
named by metadata are untrusted: one that escapes its source root is
excluded, never opened.

When several exclusion reasons apply to a row, the first of
EXCLUSION_PRECEDENCE is recorded. Rows that are not X-rays or not PNG/JPEG
files are not read at all (a CT volume is not "unreadable", it is not ours);
file problems come next because they signal a broken download, which must not
hide behind a metadata reason; then view, then the finding. Duplicates are
marked last, among rows that are otherwise included.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.candidates import SourceError
from components.image_info import NO_FILE, describe_uris
from components.labels import (
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
)
from components.sources import SourceOptions, get_source_kind
from components.storage import is_s3_uri, root_is_dir

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
    "gray_levels",  # distinct values of the 8-bit grayscale the models see (0 when not read)
    "view",  # PA, AP, AP Supine, L, unknown, ...
    "patient_id",  # grouping key for splits, prefixed by source to stay unique across sources
    "age_group",  # adult, pediatric, or "" when unknown
    "sex",  # M, F, or "" when unknown (components.candidates.sex_code)
    "finding",  # the source's own finding text, untouched
    "label",  # task label (components.labels.TASK_LABELS[task]) or "" when excluded
    "exclusion_reason",
    "exclusion_detail",  # free text behind the reason (decoder error, escaped path...)
]
_INT_COLUMNS = ("width", "height", "bit_depth", "gray_levels")

# First applicable reason wins (see module doc for why this order).
EXCLUSION_PRECEDENCE: tuple[str, ...] = (
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


def first_reason(reasons: Iterable[str]) -> str:
    """The reason recorded when several apply: the first of EXCLUSION_PRECEDENCE.

    Args:
        reasons: Exclusion reasons (components.labels constants); "" entries are ignored.

    Returns:
        The non-empty reason that comes first in EXCLUSION_PRECEDENCE, or "" when none applies.
    """
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
        **{
            column: file_info[column]
            for column in ("sha256", "phash", "width", "height", "mode", "bit_depth", "gray_levels")
        },
        "view": found["view"],
        "patient_id": f"{source}:{found['patient_id']}",
        "age_group": found["age_group"],
        "sex": found.get("sex", ""),
        "finding": found["finding"],
        "label": "" if reason else found["label"],
        "exclusion_reason": reason,
        "exclusion_detail": detail if reason else "",
    }


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A manifest DataFrame of rows: exactly MANIFEST_COLUMNS and their dtypes, also for zero rows.

    Args:
        rows: Dicts keyed by MANIFEST_COLUMNS.

    Returns:
        width, height and bit_depth as int64, every other column as str.
    """
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dtypes = {column: "int64" if column in _INT_COLUMNS else "str" for column in MANIFEST_COLUMNS}
    return frame.astype(dtypes)


def _existing_root(root: str | Path, what: str) -> str:
    root = str(root)
    if not root_is_dir(root):
        shown = root if is_s3_uri(root) else os.path.abspath(root)
        raise FileNotFoundError(f"{what} root {shown} is not a directory (or an empty S3 prefix)")
    return root if is_s3_uri(root) else os.path.abspath(root)


# ---------------------------------------------------------------- several sources


def source_candidates(source: SourceOptions, task: str) -> list[dict[str, Any]]:
    """The candidates of one configured source, by its kind's registered adapter, duplicate rows marked.

    Args:
        source: One validated source config (an options model of components.sources).
        task: ``binary`` or ``multiclass``.

    Returns:
        Candidate dicts (components.candidates.candidate), in the adapter's order.

    Raises:
        SourceError: The kind is not registered, `source` is not its kind's options
            model, or the adapter cannot parse the layout.
        FileNotFoundError: The root is not a directory (or an empty S3 prefix).
    """
    if not isinstance(source, SourceOptions):
        raise SourceError(
            "build_manifest takes validated source configs (components.config.DataConfig.sources; "
            f"components.sources.parse_sources turns dicts into them), got {type(source).__name__}"
        )
    kind = get_source_kind(source.kind)
    if not isinstance(source, kind.options):
        raise SourceError(
            f"source {source.name!r}: a {kind.kind!r} source must be a {kind.options.__name__}, "
            f"got {type(source).__name__}"
        )
    root = _existing_root(source.root, f"{kind.kind} source {source.name!r}")
    return mark_duplicate_rows(kind.adapter(root, task, source))


def mark_duplicate_rows(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exclude every later candidate that names a file an earlier one already named.

    The first row of a file listed twice by the metadata is kept; later ones are
    excluded (EXCLUDE_DUPLICATE_ROW) and not read, never dropped.

    Args:
        candidates: Candidate dicts of one source, changed in place.

    Returns:
        The same list.
    """
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
    sources: Sequence[SourceOptions],
    task: str,
    deduplicate: bool = True,
    workers: int = 1,
    progress: bool = False,
    describe: Callable[..., list[dict[str, Any]]] = describe_uris,
) -> pd.DataFrame:
    """The manifest of all sources, every file read once by `workers` in parallel.

    With `deduplicate`, an included image whose bytes equal an earlier included
    image is excluded (EXCLUDE_DUPLICATE): the same file listed under two patient
    ids would otherwise defeat patient-grouped splits.

    Args:
        sources: Validated source configs (components.config.DataConfig.sources, or
            components.sources.parse_sources of dicts); names must be unique.
        task: ``binary`` or ``multiclass``.
        deduplicate: Exclude byte-identical repeats of included images.
        workers: Parallel file reads (processes for local files, threads for S3).
        progress: Show a progress bar while reading.
        describe: Reads the files: called as ``describe(uris, workers=, progress=)`` and returns
            components.image_info.describe_uris's dicts, one per URI in order (a cache that reads
            only new or changed files, components.retraining, passes its own).

    Returns:
        One row per candidate with exactly MANIFEST_COLUMNS, sources in the given order.

    Raises:
        SourceError: No source, repeated names, or a source that cannot be parsed.
        FileNotFoundError: A source root or a metadata file does not exist.
    """
    if not sources:
        raise SourceError("build_manifest needs at least one source")
    names = [getattr(source, "name", "") for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SourceError(f"source names must be unique (they prefix patient ids), repeated: {repeated}")
    per_source = [(name, source_candidates(source, task)) for name, source in zip(names, sources, strict=True)]
    # One parallel pass over every file of every source.
    everything = [found for _, found in per_source for found in found]
    to_read = sorted({found["uri"] for found in everything if found["read"]})
    described = dict(zip(to_read, describe(to_read, workers=workers, progress=progress), strict=True))
    rows = [
        _row(found, described[found["uri"]] if found["read"] else None, name)
        for name, candidates in per_source
        for found in candidates
    ]
    manifest = manifest_frame(rows)
    return mark_duplicates(manifest) if deduplicate else manifest


def mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Exclude included rows whose file bytes repeat an earlier included row's (EXCLUDE_DUPLICATE).

    Args:
        manifest: A manifest (MANIFEST_COLUMNS); not changed.

    Returns:
        A copy in which every included row whose sha256 repeats an earlier included
        row's is excluded, its detail naming the first file.
    """
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
    """The rows that are used.

    Args:
        manifest: A manifest (MANIFEST_COLUMNS).

    Returns:
        The rows without an exclusion reason, re-indexed from 0.
    """
    return manifest[manifest["exclusion_reason"] == ""].reset_index(drop=True)


def exclusion_summary(manifest: pd.DataFrame) -> dict[str, int]:
    """How many rows each exclusion reason removed.

    Args:
        manifest: A manifest (MANIFEST_COLUMNS).

    Returns:
        {reason: rows} for excluded rows, in EXCLUSION_PRECEDENCE order (other reasons last, by name).
    """
    counts = manifest.loc[manifest["exclusion_reason"] != "", "exclusion_reason"].value_counts()
    order = {reason: index for index, reason in enumerate(EXCLUSION_PRECEDENCE)}
    reasons = sorted(counts.index, key=lambda reason: (order.get(reason, len(order)), reason))
    return {reason: int(counts[reason]) for reason in reasons}


def source_roots(manifest: pd.DataFrame) -> dict[str, str]:
    """The folder (or S3 prefix) that all files of each source share: the root paths are shown against.

    Args:
        manifest: A manifest (MANIFEST_COLUMNS); rows without a uri are ignored.

    Returns:
        {source: the deepest folder common to its rows' uris, ending in "/"}, sorted by source.
    """
    roots: dict[str, str] = {}
    uris = manifest["uri"].fillna("").astype(str)
    for source, group in uris[uris != ""].groupby(manifest["source"].astype(str), sort=True):
        common = os.path.commonprefix(group.tolist())
        roots[str(source)] = common[: common.rfind("/") + 1]
    return roots


def relative_path(uri: str, source: str, roots: Mapping[str, str]) -> str:
    """A file's path relative to its source's root (source_roots); the uri itself outside it.

    Args:
        uri: The file's uri (absolute path or ``s3://`` URI).
        source: Its source.
        roots: source_roots of the manifest.

    Returns:
        E.g. ``COVID-19/p1.png`` for ``/data/drop/COVID-19/p1.png`` under root ``/data/drop/``.
    """
    root = roots.get(source, "")
    return uri[len(root) :] if root and uri.startswith(root) and len(uri) > len(root) else uri


def dataset_version(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest: 16 hex digits that change when any file, label or exclusion does.

    Rows are sorted first, so the order adapters list files in does not matter;
    file bytes enter through the sha256 column. Paths enter relative to the folder their
    source's files share (source_roots; also in exclusion details, which may quote them): the same files
    moved, copied, regenerated elsewhere or uploaded to S3 keep their version, so
    `cxr train --if-data-changed` does not retrain on them.

    Args:
        manifest: A manifest (MANIFEST_COLUMNS).

    Returns:
        The first 16 hex digits of a SHA-256 over the sorted rows.
    """
    frame = manifest.reindex(columns=MANIFEST_COLUMNS).astype(str)
    if len(frame):
        roots = source_roots(frame)
        rows = zip(frame["uri"], frame["source"], frame["exclusion_detail"], strict=True)
        relative, details = [], []
        for uri, source, detail in rows:
            relative.append(relative_path(uri, source, roots))
            details.append(detail.replace(roots[source], "") if roots.get(source) else detail)
        frame = frame.assign(uri=relative, exclusion_detail=details)
    frame = frame.sort_values(MANIFEST_COLUMNS, kind="stable")
    digest = hashlib.sha256()
    digest.update("\x1f".join(MANIFEST_COLUMNS).encode())
    for row in frame.itertuples(index=False):
        digest.update(("\x1e" + "\x1f".join(row)).encode())
    return digest.hexdigest()[:16]
