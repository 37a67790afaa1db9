"""The small pandas tables the validation checks, computed from the manifest and the split manifest.

Where Great Expectations has no expectation for a property, a table is
computed here first and GX checks that table:

* ``rows_table`` (every manifest row): uri and exclusion reason.
* ``images_table`` (used rows): required columns (blank text as null), size,
  mode, bit depth, gray levels, view.
* ``class_table`` (one row per task label): counts, fractions, sources, age
  groups and the pediatric-share gap.
* ``near_duplicate_table`` (one row per pair of near-duplicate images).
* split: ``split_images_table``, ``split_patients_table``,
  ``split_class_table``, ``external_class_table``.

``exact_duplicate_listing`` and ``records`` give the rows a report lists for
stewards. Nothing here imports GX.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from components.candidates import ADULT, PEDIATRIC
from components.duplicates import exact_duplicate_groups, near_duplicate_pairs
from components.labels import EXCLUDE_DUPLICATE
from components.manifest import MANIFEST_COLUMNS
from components.splitting import EXTERNAL, SPLITS
from components.validation.report import Record, json_scalar
from components.validation.severities import REQUIRED_COLUMNS

# Rows kept per listing in a report (the check's details give the full count).
MAX_LISTED = 10_000
# Columns of a split manifest (used rows plus `split`) that the split validation reads.
SPLIT_COLUMNS: tuple[str, ...] = ("uri", "source", "sha256", "phash", "patient_id", "label", "split")


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Fail unless `frame` has every one of `columns`.

    Args:
        frame: The table to check.
        columns: Column names it must have.
        what: What the table is, for the message (e.g. "split manifest").

    Raises:
        ValueError: A column is missing; the message names the missing and the expected ones.
    """
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; expected {columns}")


def _text(series: pd.Series) -> np.ndarray:
    """Object array of stripped text with None where the value is missing or blank."""
    values = series.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            out[index] = None
        else:
            text = str(value).strip()
            out[index] = text if text else None
    return out


def used_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows of `manifest` that are used (no exclusion reason).

    Args:
        manifest: A manifest with every column of components.manifest.MANIFEST_COLUMNS.

    Returns:
        The used rows, with their original index.

    Raises:
        ValueError: A manifest column is missing.
    """
    require_columns(manifest, MANIFEST_COLUMNS, "manifest")
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    return manifest[reason == ""]


def rows_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every manifest row: uri and exclusion reason (for `files_readable`).

    Args:
        manifest: The manifest (every row, used or excluded).

    Returns:
        One row per manifest row: columns uri, exclusion_reason ("" when used), object dtype.
    """
    return pd.DataFrame(
        {
            "uri": manifest["uri"].to_numpy(dtype=object),
            "exclusion_reason": manifest["exclusion_reason"].fillna("").astype(str).to_numpy(dtype=object),
        }
    )


def images_table(used: pd.DataFrame) -> pd.DataFrame:
    """The used rows GX validates: required text columns with blanks as nulls, a normalised view.

    Args:
        used: The used rows of a manifest (see `used_rows`).

    Returns:
        One row per used row: row (the manifest index, as text), the REQUIRED_COLUMNS (None where
        blank), width and height (px), mode, bit_depth, gray_levels, view and view_normalised (stripped,
        lower case).
    """
    views = used["view"].fillna("").astype(str).str.strip().str.lower()
    table = {"row": [str(i) for i in used.index]}  # manifest index, to find rows without a uri
    table.update({column: _text(used[column]) for column in REQUIRED_COLUMNS})
    for column in ("width", "height", "mode", "bit_depth", "gray_levels"):
        table[column] = used[column].to_numpy(dtype=object)
    table["view"] = used["view"].to_numpy(dtype=object)
    table["view_normalised"] = views.to_numpy(dtype=object)
    return pd.DataFrame(table)


def class_table(used: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per task label: count, fraction, sources, age groups and the pediatric-share gap.

    `pediatric_share` is the pediatric fraction among the class's images of
    known age group (None when none is known); `age_gap` is the largest
    difference between this class's share and another class's (None when
    either is unknown). Labels outside the task are `label_in_task`'s job.

    Args:
        used: The used rows of a manifest.
        labels: The task's labels, in output order.

    Returns:
        One row per label: label, count, fraction (of all used rows, 4 decimals), n_sources,
        sources (comma-separated), adult, pediatric, unknown_age, pediatric_share, age_gap.
    """
    total = len(used)
    rows = []
    in_task = used[used["label"].isin(list(labels))]
    for label in labels:
        images = in_task[in_task["label"] == label]
        sources = sorted(images["source"].fillna("").astype(str).unique())
        ages = images["age_group"].fillna("").astype(str)
        adult, pediatric = int((ages == ADULT).sum()), int((ages == PEDIATRIC).sum())
        known = adult + pediatric
        rows.append(
            {
                "label": label,
                "count": len(images),
                "fraction": round(len(images) / total, 4) if total else 0.0,
                "n_sources": len(sources) if len(images) else None,
                "sources": ", ".join(sources),
                "adult": adult,
                "pediatric": pediatric,
                "unknown_age": len(images) - known,
                "pediatric_share": round(pediatric / known, 4) if known else None,
            }
        )
    shares = [row["pediatric_share"] for row in rows]
    for row in rows:
        own = row["pediatric_share"]
        others = [share for other, share in zip(rows, shares, strict=False) if other is not row and share is not None]
        row["age_gap"] = round(max(abs(own - share) for share in others), 4) if own is not None and others else None
    columns = [
        "label",
        "count",
        "fraction",
        "n_sources",
        "sources",
        "adult",
        "pediatric",
        "unknown_age",
        "pediatric_share",
        "age_gap",
    ]
    nullable = ("n_sources", "pediatric_share", "age_gap")  # None stays None (GX skips nulls), not NaN
    return pd.DataFrame(
        {
            column: pd.Series([row[column] for row in rows], dtype=object if column in nullable else None)
            for column in columns
        }
    )


_PAIR_COLUMNS = [
    "uri_a",
    "uri_b",
    "distance",
    "source_a",
    "source_b",
    "patient_a",
    "patient_b",
    "label_a",
    "label_b",
    "same_patient",
    "same_source",
    "same_bytes",
]


def near_duplicate_table(frame: pd.DataFrame, max_distance: int, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per pair of rows of `frame` whose pHashes differ in at most `max_distance` bits.

    Args:
        frame: Rows with uri, source, patient_id, label, sha256 and phash (16 hex digits, "" if none).
        max_distance: Largest Hamming distance between two 64-bit pHashes, in bits.
        extra: Further columns of `frame` to give for both images (`<name>_a`, `<name>_b`).

    Returns:
        One row per pair (a before b in `frame` order): uri_a, uri_b, distance (bits), source_a/b,
        patient_a/b, label_a/b, same_patient, same_source, same_bytes, then the `extra` columns.
    """
    pairs = near_duplicate_pairs(frame["phash"].fillna("").astype(str).tolist(), max_distance)
    columns = _PAIR_COLUMNS + [f"{name}_{side}" for name in extra for side in ("a", "b")]
    if not pairs:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    first = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
    second = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))

    def side(column: str, positions: np.ndarray) -> np.ndarray:
        return frame[column].fillna("").astype(str).to_numpy(dtype=object)[positions]

    table = {
        "uri_a": side("uri", first),
        "uri_b": side("uri", second),
        "distance": np.fromiter((p[2] for p in pairs), dtype=np.int64, count=len(pairs)),
        "source_a": side("source", first),
        "source_b": side("source", second),
        "patient_a": side("patient_id", first),
        "patient_b": side("patient_id", second),
        "label_a": side("label", first),
        "label_b": side("label", second),
    }
    table["same_patient"] = table["patient_a"] == table["patient_b"]
    table["same_source"] = table["source_a"] == table["source_b"]
    sha = frame["sha256"].fillna("").astype(str).to_numpy(dtype=object)
    table["same_bytes"] = (sha[first] == sha[second]) & (sha[first] != "")
    for name in extra:
        table[f"{name}_a"] = side(name, first)
        table[f"{name}_b"] = side(name, second)
    return pd.DataFrame(table, columns=columns)


def exact_duplicate_listing(manifest: pd.DataFrame) -> list[Record]:
    """Pairs of images with the same bytes, among used rows and rows excluded as "duplicate image".

    Each pair names the kept image (`uri_a`: the first used row of the group)
    and a copy (`uri_b`), and whether the copy is already excluded. An
    excluded duplicate whose digest matches no kept row is paired with the
    uri its exclusion_detail names ("same bytes as <uri>").

    Args:
        manifest: The manifest (every row).

    Returns:
        One record per pair: uri_a, uri_b, sha256, distance (0), source_a/b, patient_a/b,
        same_patient, same_source, excluded.
    """
    reason = manifest["exclusion_reason"].fillna("").astype(str)
    relevant = manifest[(reason == "") | (reason == EXCLUDE_DUPLICATE)]
    reasons = relevant["exclusion_reason"].fillna("").astype(str).to_numpy()
    uris = relevant["uri"].fillna("").astype(str).to_numpy()
    patients = relevant["patient_id"].fillna("").astype(str).to_numpy()
    sources = relevant["source"].fillna("").astype(str).to_numpy()
    digests = relevant["sha256"].fillna("").astype(str).to_numpy()
    listing = []
    paired: set[int] = set()
    for group in exact_duplicate_groups(list(digests)):
        kept = next((i for i in group if reasons[i] == ""), group[0])
        for other in group:
            if other == kept:
                continue
            paired.add(other)
            listing.append(
                _exact_pair(
                    uris[kept],
                    uris[other],
                    digests[other],
                    sources[kept],
                    sources[other],
                    patients[kept],
                    patients[other],
                    reasons[other] != "",
                )
            )
    prefix = "same bytes as "
    details = relevant["exclusion_detail"].fillna("").astype(str).to_numpy()
    by_uri = {uri: i for i, uri in enumerate(uris)}
    for i in np.flatnonzero(reasons == EXCLUDE_DUPLICATE):
        if i in paired or not details[i].startswith(prefix):
            continue
        original = details[i][len(prefix) :]
        j = by_uri.get(original)
        listing.append(
            _exact_pair(
                original,
                uris[i],
                digests[i],
                sources[j] if j is not None else "",
                sources[i],
                patients[j] if j is not None else "",
                patients[i],
                True,
            )
        )
    return listing


def _exact_pair(uri_a, uri_b, digest, source_a, source_b, patient_a, patient_b, excluded) -> Record:
    return {
        "uri_a": str(uri_a),
        "uri_b": str(uri_b),
        "sha256": str(digest),
        "distance": 0,
        "source_a": str(source_a),
        "source_b": str(source_b),
        "patient_a": str(patient_a),
        "patient_b": str(patient_b),
        "same_patient": bool(patient_a and patient_a == patient_b),
        "same_source": bool(source_a == source_b),
        "excluded": bool(excluded),
    }


def split_patients_table(split_manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: how many splits and which (sorted), and how many images.

    Args:
        split_manifest: Used rows with patient_id and split.

    Returns:
        One row per patient, sorted by id: patient_id, n_splits, n_images (int64), splits
        (comma-separated, sorted).
    """
    frame = pd.DataFrame(
        {
            "patient_id": split_manifest["patient_id"].fillna("").astype(str).to_numpy(dtype=object),
            "split": split_manifest["split"].fillna("").astype(str).to_numpy(dtype=object),
        }
    )
    grouped = frame.groupby("patient_id", sort=True)["split"]
    n_splits = grouped.nunique()
    images = grouped.size()
    splits = grouped.agg(lambda values: ", ".join(sorted(set(values)))) if (n_splits > 1).any() else None
    table = pd.DataFrame(
        {
            "patient_id": n_splits.index.to_numpy(dtype=object),
            "n_splits": n_splits.to_numpy(dtype=np.int64),
            "n_images": images.to_numpy(dtype=np.int64),
        }
    )
    if splits is None:  # the common case: no leak, skip the slow per-group join
        table["splits"] = frame.groupby("patient_id", sort=True)["split"].first().to_numpy(dtype=object)
    else:
        table["splits"] = splits.to_numpy(dtype=object)
    return table


def split_class_table(
    split_manifest: pd.DataFrame, labels: Sequence[str], splits: Sequence[str] = SPLITS
) -> pd.DataFrame:
    """One row per (split, task label), 0 when absent.

    Args:
        split_manifest: Used rows with label and split.
        labels: The task's labels.
        splits: The splits to count (default the training splits: EXTERNAL rows are not held
            to a per-split minimum; see `external_class_table`).

    Returns:
        Columns split, label, count; splits in `splits` order, then labels in `labels` order.
    """
    counts = split_manifest.groupby(["split", "label"]).size()
    rows = [
        {"split": split, "label": label, "count": int(counts.get((split, label), 0))}
        for split in splits
        for label in labels
    ]
    return pd.DataFrame(rows, columns=["split", "label", "count"])


def external_class_table(split_manifest: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per (external source, task label) among the EXTERNAL rows, 0 when absent.

    Args:
        split_manifest: Used rows with source, label and split.
        labels: The task's labels.

    Returns:
        Columns source, label, count; sources sorted, then labels in `labels` order; no rows
        when nothing is external.
    """
    external = split_manifest[split_manifest["split"] == EXTERNAL]
    counts = external.groupby(["source", "label"]).size()
    rows = [
        {"source": source, "label": label, "count": int(counts.get((source, label), 0))}
        for source in sorted(external["source"].fillna("").astype(str).unique())
        for label in labels
    ]
    return pd.DataFrame(rows, columns=["source", "label", "count"])


def split_images_table(split_manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per image of the split manifest: uri and split (None where blank), for `split_values_known`.

    Args:
        split_manifest: Used rows with uri and split.

    Returns:
        Columns uri and split, object dtype, in `split_manifest` order.
    """
    return pd.DataFrame(
        {
            "uri": split_manifest["uri"].fillna("").astype(str).to_numpy(dtype=object),
            "split": _text(split_manifest["split"]),
        }
    )


def records(frame: pd.DataFrame, limit: int = MAX_LISTED) -> list[Record]:
    """The first `limit` rows of `frame` as JSON records (what a report lists).

    Args:
        frame: Any table.
        limit: Most rows to keep.

    Returns:
        One {column: JSON scalar} per row; numpy scalars unwrapped, NaN as None.
    """
    return [{k: json_scalar(v) for k, v in row.items()} for row in frame.head(limit).to_dict("records")]
