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
    """A patient's images landed in more than one split: a bug in the splitter, not a user error."""


def patient_labels(manifest: pd.DataFrame) -> pd.Series:
    """The label each patient is stratified by: the majority label of their images.

    Args:
        manifest: rows with ``patient_id`` and ``label`` columns.

    Returns:
        Series indexed by patient_id: the most frequent label (ties: alphabetically first).
    """
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
    """The group each row must share a split with: its patient, merged with linked patients.

    The same radiograph re-uploaded under another patient id would otherwise
    leak between train and test, so patients that share a near-duplicate image
    form one group (transitively).

    Args:
        manifest: rows with a ``patient_id`` column.
        linked_rows: (first, second) positional row pairs whose patients must share a split
            (near-duplicate images).

    Returns:
        Series ``split_group`` on the manifest's index: each row's group, named after its
        smallest patient id.
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
    """Assign every row of an all-included manifest to a split, by patient, stratified by label.

    Within each label (the patients' majority label), patients are shuffled with `seed`
    and cut by `fractions`; a class with 3 or more patients gets at least one in each split.

    Args:
        manifest: included rows with ``patient_id`` and ``label`` columns.
        fractions: (train, val, test) fractions of patients, summing to 1.
        seed: shuffling seed.
        groups: per-row groups to split by instead of patients (split_groups).

    Returns:
        Series ``split`` on the manifest's index, values in SPLITS.

    Raises:
        PatientLeakError: a patient ended in two splits (a bug).
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
    """Check that every patient's images lie in one split.

    Args:
        manifest_with_splits: rows with ``patient_id`` and ``split`` columns.

    Raises:
        PatientLeakError: naming (up to 10 of) the patients found in more than one split.
    """
    per_patient = manifest_with_splits.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise PatientLeakError(f"{len(leaking)} patient(s) in several splits: {list(leaking.index[:10])}")


def limit_images(manifest: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Cap the usable rows of a manifest, whole patients at a time, classes in proportion.

    Rows over the cap are not dropped: they stay in the manifest with the
    exclusion reason EXCLUDE_OVER_CAP, so the run records what it left out.

    Args:
        manifest: the manifest (``exclusion_reason`` "" marks usable rows).
        max_images: the cap (about: whole patients only, at least one patient per class);
            None keeps everything.
        seed: seed of the patient shuffle.

    Returns:
        The manifest itself when under the cap, else a copy with the rows over it excluded.
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
    """Count images per label and split, for logs and reports.

    Args:
        manifest_with_splits: rows with ``label`` and ``split`` columns.

    Returns:
        DataFrame indexed by label with one column per split in SPLITS order (0 where empty).
    """
    return pd.crosstab(manifest_with_splits["label"], manifest_with_splits["split"]).reindex(
        columns=list(SPLITS), fill_value=0
    )


def split_dataset(
    manifest: pd.DataFrame, fractions: tuple[float, float, float], seed: int, near_duplicate_max_distance: int
) -> pd.DataFrame:
    """The split manifest: used rows only, with ``split`` and ``split_group`` columns.

    Patient-grouped and label-stratified; patients sharing a near-duplicate
    image (pHash Hamming distance <= `near_duplicate_max_distance` bits) are
    kept in one split group (split_groups).

    Args:
        manifest: the manifest (components.manifest), excluded rows included.
        fractions: (train, val, test) fractions summing to 1.
        seed: shuffling seed.
        near_duplicate_max_distance: pHash bits, 0..64.

    Returns:
        The included rows with ``split`` in SPLITS and ``split_group`` (the grouping key).
    """
    from components.duplicates import near_duplicate_pairs
    from components.manifest import included

    used = included(manifest)
    pairs = near_duplicate_pairs(used["phash"].tolist(), near_duplicate_max_distance)
    groups = split_groups(used, [(first, second) for first, second, _ in pairs])
    return used.assign(split=assign_splits(used, tuple(fractions), seed, groups=groups), split_group=groups)


def patients_merged(split_manifest: pd.DataFrame) -> int:
    """Count the patients merged into another's split group by a shared near-duplicate image.

    Args:
        split_manifest: split_dataset's result (``patient_id`` and ``split_group`` columns).

    Returns:
        Patients minus split groups.
    """
    return int(split_manifest["patient_id"].nunique() - split_manifest["split_group"].nunique())
