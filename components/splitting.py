"""Patient-grouped, label-stratified train/validation/test splits, and held-out external data.

All images of one patient land in one split (patient leakage inflates
accuracy by several points in published audits). Patients are stratified by
their majority label, shuffled with the run's seed.

Split names (the ``split`` column of a split manifest):

* ``train``, ``val``, ``test`` (SPLITS): the training sources, cut by the
  configured fractions. Only ``train`` trains (and is augmented); ``val``
  drives early stopping, model selection and the operating threshold;
  ``test`` is the internal test split.
* ``external`` (EXTERNAL): rows never used for training, augmentation, early
  stopping or model selection; only evaluated. With purpose ``training`` these
  are the rows of ``evaluation.external_sources``; with purpose ``evaluation``
  (an evaluation-only data drop: ``cxr validate --purpose evaluation``, the
  data steps of ``cxr evaluate``) every used row is ``external`` and nothing
  is cut by fractions.

Data held for evaluation must be labelled: a source in that role without a
labelled, usable image is an UnlabelledSourceError naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Literal

import numpy as np
import pandas as pd

from components.duplicates import duplicate_clusters
from components.errors import CxrError

SPLITS = ("train", "val", "test")  # the training sources' splits, in report order
EXTERNAL: Final = "external"  # held-out rows: evaluated only (module doc)
ALL_SPLITS = (*SPLITS, EXTERNAL)
EXCLUDE_OVER_CAP = "over max_images cap"

# What a data drop is for: "training" splits it (external sources aside), "evaluation" holds all of it out.
DataPurpose = Literal["training", "evaluation"]
TRAINING: Final = "training"
EVALUATION: Final = "evaluation"
PURPOSES: tuple[DataPurpose, ...] = (TRAINING, EVALUATION)
# Exclusion reasons quoted first when a source has no usable image (most frequent first otherwise).
_REASONS_QUOTED = 3


class PatientLeakError(AssertionError):
    """A patient's images landed in more than one split: a bug in the splitter, not a user error."""


class UnlabelledSourceError(CxrError, ValueError):
    """A source held for evaluation has no labelled, usable image; the message names it and says why."""


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


def limit_images(
    manifest: pd.DataFrame, max_images: int | None, seed: int, held_out_sources: Sequence[str] = ()
) -> pd.DataFrame:
    """Cap the usable rows of a manifest, whole patients at a time, classes in proportion.

    Rows over the cap are not dropped: they stay in the manifest with the
    exclusion reason EXCLUDE_OVER_CAP, so the run records what it left out.
    The rows of each held-out (external) source are capped on their own, in the
    same proportion, so that a small external source keeps its share (at least
    one patient per class) instead of being drowned by the training sources.

    Args:
        manifest: the manifest (``exclusion_reason`` "" marks usable rows).
        max_images: the cap (about: whole patients only, at least one patient per class
            and pool); None keeps everything.
        seed: seed of the patient shuffle.
        held_out_sources: sources held out for evaluation (evaluated_sources); each is its own pool.

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
    held_out = list(dict.fromkeys(held_out_sources))
    pools = [included[~included["source"].isin(held_out)]] + [included[included["source"] == s] for s in held_out]
    for pool in pools:
        for _label, rows in pool.groupby("label"):
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
        DataFrame indexed by label with one column per split in SPLITS order (0 where empty) when
        any row is in SPLITS, then an ``external`` column when any row is external.
    """
    present = set(manifest_with_splits["split"])
    columns = [*(SPLITS if present & set(SPLITS) else ()), *((EXTERNAL,) if EXTERNAL in present else ())]
    return pd.crosstab(manifest_with_splits["label"], manifest_with_splits["split"]).reindex(
        columns=columns or list(SPLITS), fill_value=0
    )


def external_counts_table(split_manifest: pd.DataFrame) -> pd.DataFrame:
    """Count the external images per label and source, for logs and reports.

    Args:
        split_manifest: rows with ``label``, ``source`` and ``split`` columns.

    Returns:
        DataFrame indexed by label with one column per external source (sorted), 0 where empty;
        no rows and no columns when nothing is external.
    """
    external = split_manifest[split_manifest["split"] == EXTERNAL]
    return pd.crosstab(external["label"], external["source"])


def evaluated_sources(
    source_names: Sequence[str], external_sources: Sequence[str], purpose: DataPurpose = TRAINING
) -> list[str]:
    """The sources whose rows are external: the configured external ones, or all for an evaluation drop.

    Args:
        source_names: every configured source (``data.sources[].name``), in config order.
        external_sources: ``evaluation.external_sources``.
        purpose: "training" or "evaluation" (module doc).

    Returns:
        Source names in config order.
    """
    held_out = set(source_names) if purpose == EVALUATION else set(external_sources)
    return [name for name in source_names if name in held_out]


def require_labelled_sources(manifest: pd.DataFrame, sources: Sequence[str], purpose: DataPurpose = TRAINING) -> None:
    """Check that every source held for evaluation has at least one labelled, usable image.

    Metrics need the truth: a folder of images without class folders (every folder name an
    unknown finding), or metadata whose findings are all blank or "todo", cannot be evaluated on.

    Args:
        manifest: the manifest (components.manifest), excluded rows included.
        sources: the names of the sources held for evaluation (evaluated_sources).
        purpose: "training" (the sources are evaluation.external_sources) or "evaluation"; for the message.

    Raises:
        UnlabelledSourceError: naming each such source, its row count and the most frequent
            exclusion reasons (with an example finding).
    """
    problems = []
    for source in sources:
        rows = manifest[manifest["source"] == source]
        reasons = rows["exclusion_reason"].fillna("").astype(str)
        if (reasons == "").any():
            continue
        if rows.empty:
            problems.append(f"source {source!r} has no rows")
            continue
        quoted = []
        for reason, count in reasons.value_counts().head(_REASONS_QUOTED).items():
            example = rows.loc[reasons == reason, "finding"].fillna("").astype(str).iloc[0]
            quoted.append(f"{reason} {count} (e.g. finding {example!r})")
        problems.append(
            f"source {source!r}: none of its {len(rows)} row(s) is labelled and usable: {'; '.join(quoted)}"
        )
    if problems:
        role = "evaluation data" if purpose == EVALUATION else "an external source (evaluation.external_sources)"
        raise UnlabelledSourceError(
            f"{role} needs labelled images: {'. '.join(problems)}. Give each image its finding "
            "(a class folder, or the finding/label column of its metadata) or map it with label_map."
        )


def _grouped(used: pd.DataFrame, near_duplicate_max_distance: int) -> pd.Series:
    from components.duplicates import near_duplicate_pairs

    pairs = near_duplicate_pairs(used["phash"].tolist(), near_duplicate_max_distance)
    return split_groups(used, [(first, second) for first, second, _ in pairs])


def split_dataset(
    manifest: pd.DataFrame,
    fractions: tuple[float, float, float],
    seed: int,
    near_duplicate_max_distance: int,
    external_sources: Sequence[str] = (),
    purpose: DataPurpose = TRAINING,
) -> pd.DataFrame:
    """The split manifest: used rows only, with ``split`` and ``split_group`` columns.

    Rows of `external_sources` (every row when `purpose` is "evaluation") are EXTERNAL; the
    other rows are split patient-grouped and label-stratified by `fractions`. Patients sharing
    a near-duplicate image (pHash Hamming distance <= `near_duplicate_max_distance` bits) are
    kept in one split group (split_groups), among the split rows and among the external rows
    separately: an external image that near-duplicates a split one stays external, and the
    split validation reports the pair as a leak across splits. Without external sources the
    split is the same as before they existed (same seed, same split).

    Args:
        manifest: the manifest (components.manifest), excluded rows included.
        fractions: (train, val, test) fractions summing to 1; unused when every row is external.
        seed: shuffling seed.
        near_duplicate_max_distance: pHash bits, 0..64.
        external_sources: names of sources held out for evaluation (evaluated_sources).
        purpose: "training" or "evaluation" (module doc).

    Returns:
        The included rows, in manifest order, with ``split`` in ALL_SPLITS and ``split_group``
        (the grouping key).

    Raises:
        UnlabelledSourceError: an external source (or, for an evaluation drop, any source in the
            manifest or in `external_sources`) has no labelled, usable image.
    """
    from components.manifest import included

    held_out = list(external_sources)
    if purpose == EVALUATION:
        held_out += [name for name in dict.fromkeys(manifest["source"].astype(str)) if name not in held_out]
    require_labelled_sources(manifest, held_out, purpose)
    used = included(manifest)
    is_external = used["source"].isin(held_out) if purpose == TRAINING else pd.Series(True, index=used.index)
    parts = []
    internal = used[~is_external]
    if len(internal):
        groups = _grouped(internal, near_duplicate_max_distance)
        split = assign_splits(internal, tuple(fractions), seed, groups=groups)
        parts.append(internal.assign(split=split, split_group=groups))
    external = used[is_external]
    if len(external):
        parts.append(external.assign(split=EXTERNAL, split_group=_grouped(external, near_duplicate_max_distance)))
    if not parts:
        return used.assign(split=pd.Series(dtype=object), split_group=pd.Series(dtype=object))
    return pd.concat(parts).loc[used.index]


def patients_merged(split_manifest: pd.DataFrame) -> int:
    """Count the patients merged into another's split group by a shared near-duplicate image.

    Args:
        split_manifest: split_dataset's result (``patient_id`` and ``split_group`` columns).

    Returns:
        Patients minus split groups.
    """
    return int(split_manifest["patient_id"].nunique() - split_manifest["split_group"].nunique())
