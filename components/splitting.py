"""Patient-grouped, label-stratified train/validation/test splits.

All images of one patient land in one split (patient leakage inflates
accuracy by several points in published audits). Patients are stratified by
their majority label, shuffled with the run's seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from components.duplicates import duplicate_clusters

SPLITS = ("train", "val", "test")
EXCLUDE_OVER_CAP = "over max_images cap"


class PatientLeakError(AssertionError):
    pass


def patient_labels(manifest: pd.DataFrame) -> pd.Series:
    """patient_id -> the patient's majority label (ties: alphabetical first)."""
    return manifest.groupby("patient_id")["label"].agg(lambda labels: sorted(labels.mode())[0])


def _split_counts(n_patients: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # Every split gets at least one patient of each class when the class has >= 3.
    if n_patients < 3:
        return n_patients, 0, 0
    n_val = max(1, round(n_patients * fractions[1]))
    n_test = max(1, round(n_patients * fractions[2]))
    n_train = n_patients - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = 1, max(1, n_val - 1), n_test
        n_test = n_patients - n_train - n_val
    return n_train, n_val, n_test


def split_groups(manifest: pd.DataFrame, linked_rows: Iterable[tuple[int, int]] = ()) -> pd.Series:
    """Per row, the group that must stay in one split: its patient, merged with every
    patient it shares a near-duplicate image with (`linked_rows`: positional row pairs).

    The same radiograph re-uploaded under another patient id would otherwise
    leak between train and test. Groups are named after their smallest patient id.
    """
    patients = manifest["patient_id"].to_numpy()
    names = sorted(set(patients))
    position = {patient: index for index, patient in enumerate(names)}
    patient_pairs = [(position[patients[first]], position[patients[second]]) for first, second in linked_rows]
    cluster = duplicate_clusters(len(names), patient_pairs)
    # Clusters are numbered by their first (smallest) member: name each after it.
    first_member = {int(c): names[index] for index, c in reversed(list(enumerate(cluster)))}
    return pd.Series(
        [first_member[int(cluster[position[p]])] for p in patients], index=manifest.index, name="split_group"
    )


def assign_splits(
    manifest: pd.DataFrame, fractions: tuple[float, float, float], seed: int, groups: pd.Series | None = None
) -> pd.Series:
    """Split name ("train"/"val"/"test") for every row of an all-included manifest.

    Rows are split by patient, or by `groups` (see split_groups) when given.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        manifest = manifest.assign(patient_id=groups.to_numpy())
    by_patient = patient_labels(manifest)
    patient_split: dict[str, str] = {}
    for label in sorted(by_patient.unique()):
        patients = sorted(by_patient.index[by_patient == label])
        rng.shuffle(patients)
        n_train, n_val, _ = _split_counts(len(patients), fractions)
        for position, patient in enumerate(patients):
            patient_split[patient] = "train" if position < n_train else "val" if position < n_train + n_val else "test"
    splits = manifest["patient_id"].map(patient_split)
    assert_no_patient_leak(manifest.assign(split=splits))
    return splits.rename("split")


def assert_no_patient_leak(manifest_with_splits: pd.DataFrame) -> None:
    """Raise PatientLeakError listing patients found in more than one split."""
    per_patient = manifest_with_splits.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise PatientLeakError(f"{len(leaking)} patient(s) in several splits: {list(leaking.index[:10])}")


def limit_images(manifest: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Keep at most `max_images` usable rows, whole patients, classes in proportion.

    Rows over the cap are not dropped: they stay in the manifest with the
    exclusion reason EXCLUDE_OVER_CAP, so the run records what it left out.
    """
    usable = manifest["exclusion_reason"] == ""
    if max_images is None or usable.sum() <= max_images:
        return manifest
    rng = np.random.default_rng(seed)
    kept: set[str] = set()
    included = manifest[usable]
    share = max_images / len(included)
    for _label, rows in included.groupby("label"):
        patients = sorted(rows["patient_id"].unique())
        rng.shuffle(patients)
        counts = rows.groupby("patient_id").size()
        budget, used = round(len(rows) * share), 0
        for patient in patients:
            # Whole patients only: skip one that would overshoot, but keep at least one per class.
            if used + int(counts[patient]) > budget and used > 0:
                continue
            kept.add(patient)
            used += int(counts[patient])
    over_cap = usable & ~manifest["patient_id"].isin(kept)
    result = manifest.copy()
    result.loc[over_cap, "exclusion_reason"] = EXCLUDE_OVER_CAP
    return result


def split_counts_table(manifest_with_splits: pd.DataFrame) -> pd.DataFrame:
    """label x split image counts, for logs and reports."""
    return pd.crosstab(manifest_with_splits["label"], manifest_with_splits["split"]).reindex(
        columns=list(SPLITS), fill_value=0
    )
